"""The engine's shortcuts keep torch's semantics: gradients that AccumulateGrad keeps without a
copy never alias anything else, and `p -= lr * g` updates p in place like torch's kernel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import refimpl
import refimpl.functional as F


def _independent(*arrays: np.ndarray) -> bool:
    return not any(np.shares_memory(a, b) for i, a in enumerate(arrays) for b in arrays[i + 1 :])


def test_the_same_gradient_sent_to_two_leaves_is_copied_for_each() -> None:
    p = refimpl.tensor([1.0, 2.0], requires_grad=True)
    q = refimpl.tensor([3.0, 4.0], requires_grad=True)
    (p + q).sum().backward()
    assert _independent(p.grad.data, q.grad.data)
    p.grad.data[0] = 99.0
    assert q.grad.tolist() == [1.0, 1.0]


def test_the_callers_gradient_is_never_kept_by_a_leaf() -> None:
    p = refimpl.tensor([1.0, 2.0], requires_grad=True)
    seed = refimpl.tensor([0.5, -0.5])
    (p + 0.0).backward(seed)
    assert _independent(p.grad.data, seed.data)
    p.backward(seed)  # a leaf root: its seed is accumulated as well
    assert _independent(p.grad.data, seed.data)
    assert p.grad.tolist() == [1.0, -1.0] and seed.tolist() == [0.5, -0.5]


def test_a_retained_gradient_and_a_leaf_gradient_do_not_alias() -> None:
    p = refimpl.tensor([1.0, 2.0], requires_grad=True)
    y = p * 1.0
    y.retain_grad()
    (y + 0.0).sum().backward()
    assert _independent(p.grad.data, y.grad.data)


def test_broadcast_gradients_become_writable_arrays_of_their_own() -> None:
    w = refimpl.tensor(np.ones((3, 2)), requires_grad=True)
    w.sum().backward()  # sum's derivative is a read-only broadcast view
    assert w.grad.data.flags.writeable and w.grad.data.base is None
    w.sum().backward()
    assert w.grad.tolist() == [[2.0, 2.0]] * 3


def test_kept_gradients_accumulate_like_torch_over_several_backwards() -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((4, 3)), rng.standard_normal(4), rng.standard_normal((5, 3))]
    grads = []
    for lib, functional in ((torch, torch.nn.functional), (refimpl, F)):
        w, b = (lib.tensor(a, requires_grad=True) for a in arrays[:2])
        x = lib.tensor(arrays[2])
        for _ in range(3):
            functional.cross_entropy(
                functional.linear(x, w, b), lib.tensor([0, 1, 2, 3, 0])
            ).backward()
        grads.append(
            [np.asarray(t.grad.detach().numpy() if lib is torch else t.grad.data) for t in (w, b)]
        )
    for expected, actual in zip(*grads, strict=True):
        np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("operand", ["same dtype", "float64 tensor", "0-dim", "python float"])
@pytest.mark.parametrize("name", ["__iadd__", "__isub__", "__imul__", "__itruediv__"])
def test_inplace_update_under_no_grad_matches_torch(dtype: str, operand: str, name: str) -> None:
    rng = np.random.default_rng(1)
    start, other = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    results = []
    for lib in (torch, refimpl):
        p = lib.tensor(start, dtype=getattr(lib, dtype), requires_grad=True)
        o = {
            "same dtype": lib.tensor(other, dtype=getattr(lib, dtype)),
            "float64 tensor": lib.tensor(other, dtype=lib.float64),
            "0-dim": lib.tensor(0.25, dtype=lib.float64),
            "python float": 0.1,
        }[operand]
        before = p
        with lib.no_grad():
            p = getattr(p, name)(o)
        assert p is before and p.requires_grad
        results.append(np.asarray(p.detach().numpy() if lib is torch else p.data))
    assert results[0].dtype == results[1].dtype
    assert results[0].tobytes() == results[1].tobytes()


def test_inplace_update_of_a_leaf_that_requires_grad_raises_under_grad_mode() -> None:
    p = refimpl.tensor([1.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        p -= 1.0
