"""conformance.mutants checked by hand: every optimizer mutant is built like torch.optim.SGD and
is truly wrong (a hand-written scenario shows it), the correct optimizers are correct (CorrectSGD
bitwise, TwiceRoundedSGD within a few ULP), and every autograd mutant changes a gradient and
puts refimpl's OPS table back."""

from __future__ import annotations

import copy
import functools
import inspect
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

import refimpl
import refimpl.functional as RF
from conformance import families
from conformance.mutants import (
    AUTOGRAD_MUTANTS,
    OPTIMIZER_MUTANTS,
    THOROUGH_MUTANTS,
    CorrectSGD,
    Mutant,
    TwiceRoundedSGD,
    load,
)
from refimpl.ops import OPS

CORRECT_OPTIMIZERS = families.get("sgd").correct_optimizers()
ALL_OPTIMIZERS = [m.target for m in OPTIMIZER_MUTANTS] + list(CORRECT_OPTIMIZERS)


# --------------------------------------------------------------------------------------------
# The catalogue
# --------------------------------------------------------------------------------------------


def test_catalogue_is_well_formed() -> None:
    assert len(OPTIMIZER_MUTANTS) >= 18
    assert len(AUTOGRAD_MUTANTS) >= 6
    names = [m.name for m in OPTIMIZER_MUTANTS + AUTOGRAD_MUTANTS]
    assert len(set(names)) == len(names)
    targets = [m.target for m in OPTIMIZER_MUTANTS + AUTOGRAD_MUTANTS]
    assert len(set(targets)) == len(targets)
    for mutant in OPTIMIZER_MUTANTS + AUTOGRAD_MUTANTS:
        assert isinstance(mutant, Mutant)
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", mutant.name), mutant.name
        assert mutant.target.startswith("conformance.mutants:")
        assert mutant.description.endswith(".") and "\n" not in mutant.description
        obj = load(mutant.target)
        if mutant.kind == "optimizer":
            assert issubclass(obj, torch.optim.Optimizer)
        else:
            assert mutant.kind == "autograd" and callable(obj)
    assert {m.kind for m in OPTIMIZER_MUTANTS} == {"optimizer"}
    assert {m.kind for m in AUTOGRAD_MUTANTS} == {"autograd"}
    assert load("torch.optim:SGD") is torch.optim.SGD
    assert load(CORRECT_OPTIMIZERS[1]) is CorrectSGD
    with pytest.raises(ValueError):
        load("torch.optim.SGD")


# --------------------------------------------------------------------------------------------
# (a) Built exactly like torch.optim.SGD
# --------------------------------------------------------------------------------------------

BAD_ARGUMENTS: list[dict[str, Any]] = [
    {"lr": -1},
    {"lr": -0.5},
    {"momentum": -0.1},
    {"weight_decay": -1e-3},
    {"nesterov": True},
    {"nesterov": True, "momentum": 0.9, "dampening": 0.1},
    {"lr": torch.tensor([0.1, 0.2])},
    {"fused": True, "differentiable": True},
    {"fused": True, "foreach": True},
]


def _outcome(build: Callable[[], Any]) -> Any:
    try:
        build()
    except Exception as error:  # the error itself is compared
        return type(error), str(error)
    return None


@pytest.mark.parametrize("target", ALL_OPTIMIZERS)
def test_built_like_torch_sgd(target: str) -> None:
    cls = load(target)
    assert inspect.signature(cls) == inspect.signature(torch.optim.SGD)

    p = torch.zeros(2, requires_grad=True)
    assert _outcome(lambda: cls([p], lr=-1)) == (ValueError, "Invalid learning rate: -1")
    for kwargs in BAD_ARGUMENTS:
        expected = _outcome(lambda kwargs=kwargs: torch.optim.SGD([p], **kwargs))
        assert expected is not None, kwargs
        if target.endswith(":AcceptsInvalidConfig") and kwargs.get("dampening"):
            continue  # its one bug: it accepts exactly this
        assert _outcome(lambda kwargs=kwargs: cls([p], **kwargs)) == expected, kwargs
    assert _outcome(lambda: cls([])) == _outcome(lambda: torch.optim.SGD([]))

    options = {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}
    mine, theirs = cls([p], **options), torch.optim.SGD([p], **options)
    assert mine.state_dict() == theirs.state_dict()
    assert mine.defaults == theirs.defaults
    default_mine, default_theirs = cls([p]), torch.optim.SGD([p])
    assert default_mine.state_dict() == default_theirs.state_dict()


# --------------------------------------------------------------------------------------------
# (b) Each optimizer mutant is wrong somewhere: its own hand-written scenario
# --------------------------------------------------------------------------------------------

# name -> (hyperparameters, actions, dtype). The actions: "backward" (accumulates the loss's
# gradient), "step", "closure" (step with a closure that zeroes, evaluates, backwards),
# "zero_grad", "reload" (a new optimizer over the same parameters loads the state dict),
# "set_lr" (every group's lr becomes 0.05), "add_group" (a new tensor added as a group of its
# own, with no hyperparameters given).
SCENARIOS: dict[str, tuple[dict[str, Any], tuple[str, ...], torch.dtype]] = {
    "dampening-on-first-step": (
        {"momentum": 0.9, "dampening": 0.5},
        ("backward", "step"),
        torch.float32,
    ),
    "first-buffer-without-weight-decay": (
        {"momentum": 0.9, "weight_decay": 0.1},
        ("backward", "step"),
        torch.float32,
    ),
    "weight-decay-after-momentum": (
        {"momentum": 0.9, "weight_decay": 0.1},
        ("backward", "step", "step"),
        torch.float32,
    ),
    "weight-decay-uses-grad": ({"weight_decay": 0.1}, ("backward", "step"), torch.float32),
    "nesterov-ignored": ({"momentum": 0.9, "nesterov": True}, ("backward", "step"), torch.float32),
    "nesterov-without-momentum-factor": (
        {"momentum": 0.9, "nesterov": True},
        ("backward", "step"),
        torch.float32,
    ),
    "maximize-ignored": ({"maximize": True}, ("backward", "step"), torch.float32),
    "maximize-flips-update": (
        {"maximize": True, "weight_decay": 0.1},
        ("backward", "step"),
        torch.float32,
    ),
    "dampening-as-factor": (
        {"momentum": 0.9, "dampening": 0.3},
        ("backward", "step", "step"),
        torch.float32,
    ),
    "none-grad-as-zero": ({"weight_decay": 0.1}, ("backward", "step"), torch.float32),
    "skips-zero-grad": ({"weight_decay": 0.1}, ("backward", "step"), torch.float32),
    "weight-decay-modifies-grad": ({"weight_decay": 0.1}, ("backward", "step"), torch.float32),
    "buffer-aliases-grad": ({"momentum": 0.9}, ("backward", "step", "step"), torch.float32),
    "lr-read-once": ({}, ("backward", "step", "set_lr", "step"), torch.float32),
    "lr-off-by-one-ppm": ({}, ("backward", "step"), torch.float64),
    "float32-compute": ({"momentum": 0.9}, ("backward", "step", "step"), torch.float64),
    "load-state-drops-state": (
        {"momentum": 0.9},
        ("backward", "step", "reload", "step"),
        torch.float32,
    ),
    "state-dict-reversed": (
        {"momentum": 0.9},
        ("backward", "step", "reload", "step"),
        torch.float32,
    ),
    "closure-loss-dropped": ({}, ("closure",), torch.float32),
    "closure-under-no-grad": ({}, ("closure",), torch.float32),
    "zero-grad-keeps-zeros": ({}, ("backward", "step", "zero_grad"), torch.float32),
    "momentum-not-persisted": ({"momentum": 0.9}, ("backward", "step", "step"), torch.float32),
    "accepts-invalid-config": (
        {"momentum": 0.9, "nesterov": True, "dampening": 0.1},
        ("backward", "step"),
        torch.float32,
    ),
    "rejects-zero-lr": ({"lr": 0.0}, ("backward", "step"), torch.float32),
    "add-param-group-no-defaults": (
        {"momentum": 0.9},
        ("add_group", "backward", "step"),
        torch.float32,
    ),
    "buffer-stored-not-read": ({"momentum": 0.9}, ("backward", "step", "step"), torch.float32),
}


def _parameters(dtype: torch.dtype) -> list[torch.Tensor]:
    """w and v get gradients, z an all-zero gradient, n none at all."""
    values = [[0.5, -1.25, 2.0, 0.0], [1.5, -0.75, 0.3], [0.7, -0.2], [0.9, -0.4]]
    return [torch.tensor(v, dtype=dtype, requires_grad=True) for v in values]


def _loss(params: list[torch.Tensor]) -> torch.Tensor:
    w, v, z, _ = params
    cw = torch.tensor([0.3, -0.7, 1.1, 0.2], dtype=w.dtype)
    return (w * cw).sum() + 0.6 * (v * v).sum() + 0.05 * (w * w).sum() + (z * 0.0).sum()


def _clone(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, dict):
        return {k: _clone(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_clone(v) for v in x)
    return x


def _run(
    cls: type, hyper: dict[str, Any], actions: tuple[str, ...], dtype: torch.dtype
) -> list[Any]:
    """What the program observes after each action: parameters, gradients, buffers, the state
    dict and the step's result; an exception ends the run and is recorded."""
    params = _parameters(dtype)
    options = {"lr": 0.1, **hyper}
    try:
        opt = cls(params, **options)
    except Exception as error:  # validation is part of what is compared
        return [("error", type(error).__name__)]
    trace: list[Any] = []

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = _loss(params)
        loss.backward()
        return loss

    for action in actions:
        result: Any = "-"
        try:
            if action == "backward":
                _loss(params).backward()
            elif action == "step":
                result = opt.step()
            elif action == "closure":
                result = opt.step(closure)
            elif action == "zero_grad":
                opt.zero_grad()
            elif action == "reload":
                state_dict = copy.deepcopy(opt.state_dict())
                opt = cls(params, **options)
                opt.load_state_dict(state_dict)
            elif action == "set_lr":
                for group in opt.param_groups:
                    group["lr"] = 0.05
            elif action == "add_group":
                opt.add_param_group({"params": [torch.ones(2, dtype=dtype, requires_grad=True)]})
            else:
                raise AssertionError(f"unknown action {action}")
        except Exception as error:  # a mutant may fail where torch does not
            trace.append(("error", type(error).__name__))
            break
        trace.append(
            {
                "action": action,
                "result": _clone(result),
                "params": _clone(params),
                "grads": [_clone(p.grad) for p in params],
                "buffers": [
                    _clone(opt.state[p].get("momentum_buffer")) if p in opt.state else None
                    for p in params
                ],
                "state_dict": _clone(opt.state_dict()),
            }
        )
    return trace


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
            and torch.equal(torch.signbit(a), torch.signbit(b))
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def test_every_optimizer_mutant_has_a_scenario() -> None:
    assert set(SCENARIOS) == {m.name for m in OPTIMIZER_MUTANTS}


@pytest.mark.parametrize("mutant", OPTIMIZER_MUTANTS, ids=lambda m: m.name)
def test_optimizer_mutant_differs_from_torch(mutant: Mutant) -> None:
    hyper, actions, dtype = SCENARIOS[mutant.name]
    expected = _run(torch.optim.SGD, hyper, actions, dtype)
    # The scenario itself is sound: the correct from-scratch optimizer matches torch bit for bit
    # (an invalid configuration included: both raise).
    assert _same(_run(CorrectSGD, hyper, actions, dtype), expected)
    assert not _same(_run(load(mutant.target), hyper, actions, dtype), expected)


# --------------------------------------------------------------------------------------------
# (c) The correct optimizers
# --------------------------------------------------------------------------------------------

CONFIGS: list[dict[str, Any]] = [
    {},
    {"momentum": 0.9},
    {"momentum": 0.9, "dampening": 0.25},
    {"momentum": 0.8, "nesterov": True},
    {"weight_decay": 0.01},
    {"maximize": True},
    {"momentum": 0.9, "weight_decay": 0.05, "maximize": True},
    {"momentum": 0.7, "nesterov": True, "weight_decay": 0.02, "maximize": True},
    {"momentum": 0.9, "dampening": 0.1, "weight_decay": 0.03, "lr": torch.tensor([0.07])},
]


def _steps(
    cls: type, config: dict[str, Any], dtype: torch.dtype, steps: int = 4, size: int = 37
) -> list[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(1234)
    params = [
        (torch.rand(size, generator=generator, dtype=dtype) + 1).requires_grad_(),
        (torch.rand(3, 5, generator=generator, dtype=dtype) - 0.5).requires_grad_(),
    ]
    opt = cls(params, **{"lr": 0.1, **config})
    seen = []
    for _ in range(steps):
        for p in params:
            p.grad = torch.rand(p.shape, generator=generator, dtype=dtype) * 2 - 1
        opt.step()
        buffers = [opt.state[p].get("momentum_buffer") for p in params if p in opt.state]
        seen.append([_clone(p) for p in params] + [_clone(b) for b in buffers if b is not None])
    return seen


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_correct_sgd_is_bitwise_torch(config: dict[str, Any], dtype: torch.dtype) -> None:
    assert _same(_steps(CorrectSGD, config, dtype), _steps(torch.optim.SGD, config, dtype))


def _ulp(a: torch.Tensor, b: torch.Tensor) -> int:
    """Largest distance in representable float32 numbers between matching elements."""

    def ordered(x: torch.Tensor) -> np.ndarray:
        bits = x.numpy().view(np.int32).astype(np.int64)
        return np.where(bits < 0, np.int64(-(2**31)) - bits, bits)

    return int(np.abs(ordered(a) - ordered(b)).max())


@pytest.mark.parametrize(
    "config",
    [
        {"momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01},
        {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01, "maximize": True},
    ],
    ids=str,
)
def test_twice_rounded_sgd_is_close_but_not_bitwise(config: dict[str, Any]) -> None:
    mine = _steps(TwiceRoundedSGD, config, torch.float32, steps=3, size=2000)
    theirs = _steps(torch.optim.SGD, config, torch.float32, steps=3, size=2000)
    for step_mine, step_theirs in zip(mine, theirs, strict=True):
        # Parameters stay far from zero (θ ≥ 1 - 0.3 > 0), so their ULP distance is meaningful;
        # buffers may cancel, so they are measured in ULPs of their largest element.
        assert _ulp(step_mine[0], step_theirs[0]) <= 4
        for b_mine, b_theirs in zip(step_mine[2:], step_theirs[2:], strict=True):
            spacing = np.spacing(np.float32(b_theirs.abs().max()))
            assert float((b_mine - b_theirs).abs().max()) <= 4 * spacing
    if torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        pytest.skip("torch's generic kernels round twice too: TwiceRoundedSGD is torch there")
    assert not _same(mine, theirs)


# --------------------------------------------------------------------------------------------
# (d) Autograd mutants change a gradient and restore OPS
# --------------------------------------------------------------------------------------------


def _leaf(values: Any) -> refimpl.Tensor:
    return refimpl.tensor(np.asarray(values, dtype=np.float64), requires_grad=True)


def _grads(loss: refimpl.Tensor, *leaves: refimpl.Tensor) -> list[np.ndarray]:
    loss.backward()
    return [leaf.grad.numpy().copy() for leaf in leaves]


def _relu() -> list[np.ndarray]:
    x = _leaf([-1.0, 0.0, 2.0])
    return _grads(refimpl.relu(x).sum(), x)


def _tanh() -> list[np.ndarray]:
    x = _leaf([-0.5, 0.3, 1.2])
    return _grads(refimpl.tanh(x).sum(), x)


def _sigmoid() -> list[np.ndarray]:
    x = _leaf([-0.5, 0.3, 1.2])
    return _grads(refimpl.sigmoid(x).sum(), x)


def _mul() -> list[np.ndarray]:
    a, b = _leaf([1.0, 2.0, 3.0]), _leaf([4.0, -5.0, 6.0])
    return _grads((a * b).sum(), a, b)


def _mean() -> list[np.ndarray]:
    x = _leaf([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    return _grads(x.mean(), x)


def _mse() -> list[np.ndarray]:
    x = _leaf([[1.0, 2.0, 3.0]])
    return _grads(RF.mse_loss(x, refimpl.tensor(np.array([[0.5, 2.0, -1.0]]))), x)


def _linear() -> list[np.ndarray]:
    x = _leaf([[1.0, 2.0], [3.0, -1.0], [0.5, 0.25]])
    w = _leaf([[0.1, 0.2], [0.3, -0.4], [0.5, 0.6], [-0.7, 0.8]])
    b = _leaf([0.1, 0.2, 0.3, 0.4])
    return _grads(RF.linear(x, w, b).sum(), x, w, b)


def _log_softmax() -> list[np.ndarray]:
    x = _leaf([[0.1, 1.5, -0.3], [2.0, -1.0, 0.5]])
    weights = refimpl.tensor(np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    return _grads((x.log_softmax(1) * weights).sum(), x)


def _exp() -> list[np.ndarray]:
    x = _leaf([0.5, 1.0, -2.0])
    return _grads(refimpl.exp(x).sum(), x)


# The kink mutants' probes: f(x, F) at values on the kink, in refimpl or torch (F: the
# library's functional API); the loss is f's sum (softmax's squared, so that its upstream
# gradient is not constant).
KINK_PROBES: dict[str, tuple[Any, Callable[[Any, Any], Any]]] = {
    "elu-grad-at-zero-right-side": ([-1.0, 0.0, 1.0], lambda x, F: F.elu(x, 2.0)),
    "leaky-relu-grad-at-zero": ([-1.0, 0.0, 1.0], lambda x, F: F.leaky_relu(x, 0.01)),
    "abs-grad-sign-at-zero": ([-1.0, 0.0, 1.0], lambda x, F: x.abs()),
    "clamp-grad-zero-at-bound": ([-1.5, -1.0, 0.0, 0.5, 1.0], lambda x, F: x.clamp(-1.0, 0.5)),
    "amax-grad-not-shared": ([[1.0, 2.0, 2.0, 0.0], [3.0, 3.0, 3.0, 1.0]], lambda x, F: x.amax(1)),
    "max-grad-first-tie": ([1.0, 2.0, 2.0, 0.0], lambda x, F: x.max()),
    "max-dim-grad-shared": ([[2.0, 1.0, 2.0], [0.0, 3.0, 3.0]], lambda x, F: x.max(1).values),
    "softmax-grad-sum-without-y": (
        [[0.1, 1.5, -0.3], [2.0, -1.0, 0.5]],
        lambda x, F: x.softmax(1) ** 2,
    ),
}


def _kink_probe(name: str, lib: str = "refimpl") -> list[np.ndarray]:
    values, f = KINK_PROBES[name]
    if lib == "torch":
        x = torch.tensor(values, dtype=torch.float64, requires_grad=True)
        f(x, torch.nn.functional).sum().backward()
        assert x.grad is not None
        return [x.grad.numpy().copy()]
    x = _leaf(values)
    return _grads(f(x, RF).sum(), x)


PROBES: dict[str, Callable[[], list[np.ndarray]]] = {
    **{name: functools.partial(_kink_probe, name) for name in KINK_PROBES},
    "relu-grad-at-zero": _relu,
    "tanh-grad-linear": _tanh,
    "sigmoid-grad-plus": _sigmoid,
    "mul-grad-swapped": _mul,
    "mean-grad-not-divided": _mean,
    "mse-grad-not-doubled": _mse,
    "linear-bias-grad-mean": _linear,
    "log-softmax-grad-no-softmax": _log_softmax,
    "exp-grad-identity": _exp,
}


def _equal(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(
        x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b, strict=True)
    )


def test_every_autograd_mutant_has_a_probe() -> None:
    assert set(PROBES) == {m.name for m in AUTOGRAD_MUTANTS + THOROUGH_MUTANTS}


@pytest.mark.parametrize("mutant", AUTOGRAD_MUTANTS + THOROUGH_MUTANTS, ids=lambda m: m.name)
def test_autograd_mutant_changes_a_gradient_and_restores_ops(mutant: Mutant) -> None:
    probe, factory = PROBES[mutant.name], load(mutant.target)
    rows = dict(OPS)
    before = probe()
    with factory():
        changed = [name for name in rows if OPS[name] is not rows[name]]
        assert len(changed) == 1
        during = probe()
    assert not _equal(during, before)
    assert OPS.keys() == rows.keys() and all(OPS[name] is rows[name] for name in rows)
    assert _equal(probe(), before)

    with pytest.raises(ZeroDivisionError), factory():
        probe()
        raise ZeroDivisionError
    assert OPS.keys() == rows.keys() and all(OPS[name] is rows[name] for name in rows)


@pytest.mark.parametrize("name", KINK_PROBES)
def test_kink_mutant_differs_from_torch_only_at_the_kink(name: str) -> None:
    """refimpl's rule is torch's on the probe, the mutant's is not; off the kink (the probe's
    values moved by 1/8, ties broken) the mutant agrees with torch."""

    def close(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
        return all(np.allclose(x, y, rtol=1e-12, atol=0) for x, y in zip(a, b, strict=True))

    factory = load(next(m.target for m in AUTOGRAD_MUTANTS if m.name == name))
    expected = _kink_probe(name, "torch")
    assert close(_kink_probe(name), expected)
    with factory():
        assert not close(_kink_probe(name), expected)
    values, f = KINK_PROBES[name]
    moved = np.asarray(values) + np.arange(np.size(values)).reshape(np.shape(values)) / 64 + 1 / 8
    KINK_PROBES[name] = (moved.tolist(), f)
    try:
        expected = _kink_probe(name, "torch")
        if name != "softmax-grad-sum-without-y":  # wrong everywhere, not only at a kink
            with factory():
                assert close(_kink_probe(name), expected)
    finally:
        KINK_PROBES[name] = (values, f)
