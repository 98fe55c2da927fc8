"""refimpl's SGD against torch.optim.SGD, bit for bit.

Hypothesis draws group layouts, dtypes, hyperparameters over their whole ranges (0 and the
boundaries included, tensor lr, nesterov only where valid) and several steps of gradients
(some None); both optimizers receive the same gradients, and after every step the parameters
and momentum buffers must have identical bits. This runs against torch's for-loop, foreach
and fused implementations in this process (at the CPU capability that
`conformance.bridge.torch_capability` reports), and, in a subprocess, against torch with
ATEN_CPU_CAPABILITY=default.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refimpl
from conformance.bridge import state_dict_to_refimpl, state_dict_to_torch, torch_capability
from refimpl.optim import BATCH_BELOW, SGD
from tests.ulp import bitwise_equal, first_difference


@dataclass
class Program:
    dtype: np.dtype
    params: list[np.ndarray]
    groups: list[tuple[list[int], dict[str, Any]]]  # parameter indices, hyperparameters
    grads: list[list[np.ndarray | None]]  # per step, per parameter


LR = st.one_of(st.sampled_from([0.0, 1e-3, 0.1, 1.0, 10.0]), st.floats(0.0, 10.0))
FRACTION = st.one_of(st.sampled_from([0.0, 1.0, 0.5, 0.9]), st.floats(0.0, 1.0))


@st.composite
def hyperparameters(draw: st.DrawFn) -> dict[str, Any]:
    momentum = draw(st.one_of(FRACTION, st.floats(0.0, 3.0)))
    dampening = draw(FRACTION)
    nesterov = momentum > 0 and dampening == 0 and draw(st.booleans())
    return {
        "lr": draw(LR),
        "momentum": momentum,
        "dampening": dampening,
        "weight_decay": draw(st.one_of(st.just(0.0), FRACTION, st.floats(0.0, 5.0))),
        "nesterov": nesterov,
        "maximize": draw(st.booleans()),
    }


@st.composite
def programs(draw: st.DrawFn) -> Program:
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    width = 32 if dtype == np.float32 else 64
    values = st.floats(-1e3, 1e3, width=width) | st.sampled_from([0.0, -0.0, 1.0, -1.0])
    shapes = hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=5)
    params = draw(
        st.lists(
            shapes.flatmap(lambda s: hnp.arrays(dtype, s, elements=values)), min_size=1, max_size=5
        )
    )
    order = draw(st.permutations(range(len(params))))
    cuts = (
        sorted(draw(st.sets(st.integers(1, len(params) - 1), max_size=3)))
        if len(params) > 1
        else []
    )
    bounds = [0, *cuts, len(params)]
    groups = [(list(order[a:b]), draw(hyperparameters())) for a, b in pairwise(bounds)]
    steps = draw(st.integers(1, 4))
    grads = [
        [
            None
            if draw(st.integers(0, 5)) == 0
            else draw(hnp.arrays(dtype, p.shape, elements=values))
            for p in params
        ]
        for _ in range(steps)
    ]
    return Program(dtype, params, groups, grads)


def _torch_groups(
    program: Program, tensors: list[Any], tensor_lr: bool, lib: Any
) -> list[dict[str, Any]]:
    groups = []
    for indices, options in program.groups:
        group = {"params": [tensors[i] for i in indices], **options}
        if tensor_lr:
            group["lr"] = lib.tensor(options["lr"], dtype=lib.float64)
        groups.append(group)
    return groups


def run_both(
    program: Program, torch_path: dict[str, Any], tensor_lr: bool, capability: str
) -> None:
    """Steps both optimizers through the program, asserting identical bits after each step."""
    torch_params = [torch.tensor(p, requires_grad=True) for p in program.params]
    ref_params = [refimpl.tensor(p, requires_grad=True) for p in program.params]
    torch_opt = torch.optim.SGD(
        _torch_groups(program, torch_params, tensor_lr, torch), **torch_path
    )
    ref_opt = SGD(
        _torch_groups(program, ref_params, tensor_lr, refimpl),
        **torch_path,
        cpu_capability=capability,
    )
    for step, grads in enumerate(program.grads):
        for tp, rp, g in zip(torch_params, ref_params, grads, strict=True):
            tp.grad = None if g is None else torch.tensor(g)
            rp.grad = None if g is None else refimpl.tensor(g)
        try:
            torch_opt.step()
        except TypeError as error:
            # torch 2.13's fused path fails when a group's parameters get their first gradient
            # at different steps (a None momentum buffer beside existing ones): not a program
            # to compare.
            assert "expected Tensor as element" in str(error) and torch_path.get("fused")
            reject()
        ref_opt.step()
        for i, (tp, rp) in enumerate(zip(torch_params, ref_params, strict=True)):
            expected, actual = tp.detach().numpy(), rp.data
            assert bitwise_equal(actual, expected), (
                f"step {step} param {i}: {first_difference(actual, expected)}"
            )
            # torch's foreach path writes nesterov's g + μb into .grad (no maximize or decay)
            if tp.grad is not None:
                assert bitwise_equal(rp.grad.data, tp.grad.numpy()), (
                    f"step {step} grad {i}: {first_difference(rp.grad.data, tp.grad.numpy())}"
                )
            torch_buf = torch_opt.state[tp].get("momentum_buffer")
            ref_buf = ref_opt.state[rp].get("momentum_buffer")
            assert (torch_buf is None) == (ref_buf is None), f"step {step} buffer {i} presence"
            if torch_buf is not None:
                assert bitwise_equal(ref_buf.data, torch_buf.numpy()), (
                    f"step {step} buffer {i}: {first_difference(ref_buf.data, torch_buf.numpy())}"
                )


PATHS = {
    "for-loop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


@pytest.mark.parametrize("path", list(PATHS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=programs(), tensor_lr=st.booleans())
def test_sgd_matches_torch_bitwise(path: str, program: Program, tensor_lr: bool) -> None:
    run_both(program, PATHS[path], tensor_lr, torch_capability())


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.filterwarnings("ignore:optimizer contains a parameter group with duplicate")
def test_batched_and_large_tensors_with_a_duplicate(path: str, dtype: type) -> None:
    """refimpl steps small tensors together and large ones in place: a group mixing both
    (sizes around BATCH_BELOW and the fused kernel's vector width), 0-dim included, matches
    torch bit for bit; off the fused path one parameter is listed twice, which torch's for-loop
    and foreach step twice."""
    rng = np.random.default_rng(7)
    shapes = [(BATCH_BELOW + 3,), (3, 5), (), (BATCH_BELOW - 1,), (7,), (2 * BATCH_BELOW,)]
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(3)]
    grads[1][2] = None
    first = [0, 1, 2, 1, 3] if path == "for-loop" else [0, 1, 2, 3]
    program = Program(
        np.dtype(dtype),
        params,
        [
            (first, {"lr": 0.1, "momentum": 0.9, "dampening": 0.25, "weight_decay": 0.01}),
            ([4, 5], {"lr": 0.5, "momentum": 0.5, "nesterov": True, "maximize": True}),
        ],
        grads,
    )
    run_both(program, PATHS[path], tensor_lr=False, capability=torch_capability())


@pytest.mark.parametrize(
    "options",
    [
        {"weight_decay": 0.0, "maximize": False},  # torch's foreach writes g + μb into .grad
        {"weight_decay": 0.1, "maximize": False},  # ... but not into a copy it made first
        {"weight_decay": 0.0, "maximize": True},
    ],
)
@pytest.mark.parametrize("path", ["for-loop", "foreach"])
def test_nesterov_grads_after_step_as_torch(path: str, options: dict[str, Any]) -> None:
    rng = np.random.default_rng(3)
    params = [rng.standard_normal(s).astype(np.float32) for s in [(3, 4), (5,)]]
    grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in params] for _ in range(3)]
    program = Program(
        np.dtype(np.float32),
        params,
        [([0, 1], {"lr": 0.1, "momentum": 0.9, "nesterov": True, **options})],
        grads,
    )
    run_both(program, PATHS[path], tensor_lr=False, capability=torch_capability())


def test_sgd_matches_torch_with_default_cpu_capability() -> None:
    """torch's generic kernels (two roundings) against refimpl at cpu_capability="DEFAULT"."""
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    done = subprocess.run(
        [sys.executable, "-m", "tests.optim_default_capability"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cases passed" in done.stdout


def test_capability_in_subprocess_is_default() -> None:
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "DEFAULT"


@pytest.mark.parametrize("direction", ["torch to refimpl", "refimpl to torch"])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=programs(), k=st.integers(1, 3))
def test_state_dict_handover_continues_bitwise(direction: str, program: Program, k: int) -> None:
    """One side trains k steps, its state dict loads into the other side's optimizer, and
    training continues bit-identically to the first side continuing."""
    capability = torch_capability()
    torch_params = [torch.tensor(p, requires_grad=True) for p in program.params]
    ref_params = [refimpl.tensor(p, requires_grad=True) for p in program.params]
    torch_opt = torch.optim.SGD(_torch_groups(program, torch_params, False, torch))
    ref_opt = SGD(_torch_groups(program, ref_params, False, refimpl), cpu_capability=capability)
    steps = program.grads * (1 + k)

    def feed(grads: list[np.ndarray | None]) -> None:
        for tp, rp, g in zip(torch_params, ref_params, grads, strict=True):
            tp.grad = None if g is None else torch.tensor(g)
            rp.grad = None if g is None else refimpl.tensor(g)

    source_is_torch = direction == "torch to refimpl"
    for grads in steps[:k]:
        feed(grads)
        (torch_opt if source_is_torch else ref_opt).step()
    # The trained parameters move across with the optimizer state.
    for tp, rp in zip(torch_params, ref_params, strict=True):
        if source_is_torch:
            rp.data[...] = tp.detach().numpy()
        else:
            with torch.no_grad():
                tp.copy_(torch.from_numpy(rp.data.copy()))
    if source_is_torch:
        ref_opt.load_state_dict(state_dict_to_refimpl(torch_opt.state_dict()))
    else:
        torch_opt.load_state_dict(state_dict_to_torch(ref_opt.state_dict()))
    for step, grads in enumerate(steps[k:], start=k):
        feed(grads)
        torch_opt.step()
        ref_opt.step()
        for i, (tp, rp) in enumerate(zip(torch_params, ref_params, strict=True)):
            assert bitwise_equal(rp.data, tp.detach().numpy()), (
                f"step {step} param {i}: {first_difference(rp.data, tp.detach().numpy())}"
            )
