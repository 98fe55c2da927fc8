"""refimpl.optim's semantics beside torch.optim's: what step, zero_grad and state dicts do."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import numpy as np
import pytest
import torch

import refimpl
from conformance.bridge import state_dict_to_refimpl, torch_capability
from refimpl.optim import SGD, detected_capability, rounding_for_capability


def _pair(values: list[float], dtype: Any = np.float32) -> tuple[torch.Tensor, refimpl.Tensor]:
    array = np.asarray(values, dtype=dtype)
    return torch.tensor(array, requires_grad=True), refimpl.tensor(array, requires_grad=True)


def _sgd(lib: Any, params: list[Any], **options: Any) -> Any:
    if lib is torch:
        return torch.optim.SGD(params, **options)
    return SGD(params, cpu_capability=torch_capability(), **options)


@pytest.mark.parametrize("lib", [torch, refimpl], ids=["torch", "refimpl"])
def test_closure_runs_with_grad_enabled_and_its_loss_is_returned(lib: Any) -> None:
    p = _pair([1.0, -2.0])[0 if lib is torch else 1]
    opt = _sgd(lib, [p], lr=0.5)
    seen = []

    def closure() -> Any:
        seen.append(lib.is_grad_enabled())
        opt.zero_grad()
        loss = (p * p).sum()
        loss.backward()
        return loss

    with lib.no_grad():
        loss = opt.step(closure)
    assert seen == [True]
    assert float(loss.detach()) == 5.0
    np.testing.assert_array_equal(np.asarray(p.detach().numpy()), [0.0, 0.0])


@pytest.mark.parametrize("lib", [torch, refimpl], ids=["torch", "refimpl"])
def test_zero_grad_sets_none_by_default_and_zeroes_in_place_otherwise(lib: Any) -> None:
    p = _pair([1.0, 2.0])[0 if lib is torch else 1]
    opt = _sgd(lib, [p], lr=0.1)
    (p * 3.0).sum().backward()
    grad = p.grad
    opt.zero_grad(set_to_none=False)
    assert p.grad is grad and not p.grad.requires_grad
    np.testing.assert_array_equal(np.asarray(p.grad.numpy()), [0.0, 0.0])
    opt.zero_grad()
    assert p.grad is None


@pytest.mark.parametrize("lib", [torch, refimpl], ids=["torch", "refimpl"])
def test_none_grads_are_skipped_and_zero_grads_are_not(lib: Any) -> None:
    index = 0 if lib is torch else 1
    skipped, zero = _pair([1.0])[index], _pair([1.0])[index]
    opt = _sgd(lib, [skipped, zero], lr=0.1, momentum=0.9, weight_decay=0.5)
    zero.grad = lib.zeros_like(zero.detach()) if lib is torch else refimpl.zeros_like(zero)
    opt.step()
    assert float(skipped.detach().numpy()[0]) == 1.0 and len(opt.state[skipped]) == 0
    # The zero gradient still decays the weight and starts a momentum buffer.
    assert float(zero.detach().numpy()[0]) == pytest.approx(1.0 - 0.1 * 0.5)
    assert "momentum_buffer" in opt.state[zero]


@pytest.mark.parametrize("lib", [torch, refimpl], ids=["torch", "refimpl"])
def test_buffers_exist_only_with_momentum(lib: Any) -> None:
    p = _pair([1.0])[0 if lib is torch else 1]
    opt = _sgd(lib, [p], lr=0.1)
    p.grad = lib.ones_like(p.detach()) if lib is torch else refimpl.ones_like(p)
    opt.step()
    assert len(opt.state[p]) == 0
    opt.param_groups[0]["momentum"] = 0.5  # as a scheduler would
    opt.step()
    assert "momentum_buffer" in opt.state[p]


def test_state_dict_format_matches_torch() -> None:
    (ta, ra), (tb, rb) = _pair([1.0, 2.0]), _pair([3.0])
    options = {"lr": 0.1, "momentum": 0.9, "dampening": 0.25, "weight_decay": 0.01}
    t_opt = torch.optim.SGD([{"params": [ta]}, {"params": [tb], "lr": 0.2}], **options)
    r_opt = SGD(
        [{"params": [ra]}, {"params": [rb], "lr": 0.2}],
        **options,
        cpu_capability=torch_capability(),
    )
    for t, r, g in ((ta, ra, [1.0, -1.0]), (tb, rb, [2.0])):
        t.grad, r.grad = torch.tensor(g), refimpl.tensor(g)
    t_opt.step()
    r_opt.step()
    t_sd, r_sd = t_opt.state_dict(), r_opt.state_dict()
    assert r_sd["param_groups"] == t_sd["param_groups"]
    assert r_sd["state"].keys() == t_sd["state"].keys()
    for key, entry in t_sd["state"].items():
        np.testing.assert_array_equal(
            r_sd["state"][key]["momentum_buffer"].data, entry["momentum_buffer"].numpy()
        )


def test_state_dict_returns_the_live_buffers() -> None:
    _, p = _pair([1.0])
    opt = SGD([p], lr=0.1, momentum=0.9)
    p.grad = refimpl.ones_like(p)
    opt.step()
    assert opt.state_dict()["state"][0]["momentum_buffer"] is opt.state[p]["momentum_buffer"]


@pytest.mark.parametrize("lib", [torch, refimpl], ids=["torch", "refimpl"])
def test_load_state_dict_keeps_matching_buffers_and_converts_others(lib: Any) -> None:
    """The documented choice, as torch: same dtype kept (so shared), other dtype converted."""
    index = 0 if lib is torch else 1
    source_param = _pair([1.0])[index]
    source = _sgd(lib, [source_param], lr=0.1, momentum=0.9)
    source_param.grad = (
        lib.ones_like(source_param.detach()) if lib is torch else refimpl.ones_like(source_param)
    )
    source.step()
    state = source.state_dict()
    buffer = state["state"][0]["momentum_buffer"]
    first, second = (_sgd(lib, [_pair([1.0])[index]], lr=0.1, momentum=0.9) for _ in range(2))
    first.load_state_dict(state)
    second.load_state_dict(state)
    first_buffer = next(iter(first.state.values()))["momentum_buffer"]
    second_buffer = next(iter(second.state.values()))["momentum_buffer"]
    assert first_buffer is buffer and second_buffer is buffer
    isolated = _sgd(lib, [_pair([1.0])[index]], lr=0.1, momentum=0.9)
    isolated.load_state_dict(copy.deepcopy(state))
    assert next(iter(isolated.state.values()))["momentum_buffer"] is not buffer
    wide = _sgd(lib, [_pair([1.0], np.float64)[index]], lr=0.1, momentum=0.9)
    wide.load_state_dict(state)
    converted = next(iter(wide.state.values()))["momentum_buffer"]
    assert converted is not buffer and converted.dtype == (
        torch.float64 if lib is torch else refimpl.float64
    )


def test_torch_state_dict_loads_into_refimpl_with_its_hyperparameters() -> None:
    t, r = _pair([1.0, 2.0])
    t_opt = torch.optim.SGD([t], lr=0.3, momentum=0.5, nesterov=True)
    t.grad = torch.tensor([1.0, 1.0])
    t_opt.step()
    r_opt = SGD([r], lr=0.1, momentum=0.9, cpu_capability=torch_capability())
    r_opt.load_state_dict(state_dict_to_refimpl(t_opt.state_dict()))
    assert r_opt.param_groups[0]["lr"] == 0.3 and r_opt.param_groups[0]["nesterov"] is True
    assert r_opt.param_groups[0]["params"][0] is r


def test_capability_picks_the_rounding() -> None:
    assert rounding_for_capability("AVX512") == "fused"
    assert rounding_for_capability("AVX2") == "fused"
    assert rounding_for_capability("DEFAULT") == "separate"
    with pytest.raises(ValueError, match="unsupported torch CPU capability"):
        rounding_for_capability("NEON")
    # refimpl's own detection agrees with the torch running here.
    assert detected_capability() == torch_capability()


@pytest.mark.parametrize("momentum", [2.0, 1e-50])
def test_step_is_quiet_about_overflow_and_nan(momentum: float) -> None:
    """As torch: a buffer times momentum that overflows (μ = 2), or is inf · 0 (μ = 1e-50 is 0
    in float32), warns about nothing (long thorough runs printed numpy's RuntimeWarnings)."""
    p = refimpl.tensor(np.array([3e38, 1.0], np.float32), requires_grad=True)
    optimizer = SGD([p], lr=1.0, momentum=momentum, cpu_capability=torch_capability())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            p.grad = refimpl.tensor(np.array([3e38, np.inf], np.float32))
            optimizer.step()
    assert not np.isfinite(p.detach().numpy()).all()
