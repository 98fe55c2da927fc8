"""refimpl's Adam and AdamW against torch.optim.Adam and AdamW, bit for bit.

Hypothesis draws group layouts, dtypes, hyperparameters over their whole ranges (0 and the
boundaries included: β at 0, at 1/2 where lerp switches formulas and just below 1, ε = 0, tensor
lr and tensor betas of either dtype), several steps of gradients (some None, zeros included) and
changes of lr, ε and λ between steps; both optimizers receive the same gradients, and after every
step the parameters, exp_avg, exp_avg_sq, max_exp_avg_sq and step must have identical bits. This
runs against torch's for-loop, foreach and fused paths in this process (at the CPU capability
`conformance.bridge.torch_capability` reports) and, in a subprocess, against torch with
ATEN_CPU_CAPABILITY=default (`python -m tests.test_adam_bitwise`).

The square root: torch's for-loop and foreach paths take `Tensor.sqrt()`, which on CPU is MKL's
vsSqrt/vdSqrt, not correctly rounded and CPU-dependent. The bitwise tests give refimpl torch's
square root (`sqrt=torch_sqrt`, refimpl's hook for it), so they check every other rounding
exactly. `test_numpy_sqrt_within_budget` runs refimpl as it runs by default (numpy's correctly
rounded square root) and holds the parameters to the measured budget, PARAM_ULP_BUDGET; the
moments and steps must stay bitwise there too. The fused path uses a correctly rounded square
root, like refimpl's default: it is tested bitwise without the hook.
"""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from itertools import pairwise, product
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refimpl
import refimpl.optim as roptim
from conformance.bridge import state_dict_to_refimpl, state_dict_to_torch, torch_capability
from refimpl.optim import BATCH_BELOW
from tests.ulp import bitwise_equal, first_difference, ulp, ulp_distance

# Measured on this project's machine (AMD EPYC, torch 2.13's MKL): the parameter after one step
# with numpy's square root differs from torch's for-loop result by at most 4 ULP of
# max(|θ'|, |θ_torch − θ'|), θ' the parameter the update is added to (after AdamW's decay), in
# both dtypes: over 32,000 optimizer runs of 4 steps with every hyperparameter drawn as here
# (1.3 million elements), and over 10^8 elements of direct `adam_update` calls with random
# moments, steps up to 1,000 and both roundings. MKL's square root is off by up to one ULP,
# which moves the denominator and the quotient m/denom by a few ULP of the quotient; 3% of
# float32 and 0.2% of float64 elements differ at all.
PARAM_ULP_BUDGET = 4.0


def torch_sqrt(array: np.ndarray) -> np.ndarray:
    """torch's CPU square root (MKL's), for refimpl's `sqrt` hook."""
    return torch.from_numpy(np.array(array, order="C", copy=True)).sqrt().numpy()


@dataclass
class Program:
    dtype: np.dtype
    params: list[np.ndarray]
    groups: list[tuple[list[int], dict[str, Any]]]  # parameter indices, hyperparameters
    grads: list[list[np.ndarray | None]]  # per step, per parameter
    changes: list[dict[str, float]] = field(default_factory=list)  # per step, for group 0


LR = st.one_of(st.sampled_from([0.0, 1e-3, 0.1, 1.0, 10.0]), st.floats(0.0, 10.0))
BETA = st.one_of(
    st.sampled_from([0.0, 0.5, 0.9, 0.999, 0.49999997, 0.50000006, math.nextafter(1.0, 0.0)]),
    st.floats(0.0, 1.0, exclude_max=True),
)
EPS = st.one_of(st.sampled_from([0.0, 1e-8, 1e-3, 1.0]), st.floats(0.0, 1.0))
WEIGHT_DECAY = st.one_of(st.just(0.0), st.sampled_from([0.01, 0.5]), st.floats(0.0, 5.0))


@st.composite
def hyperparameters(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "lr": draw(LR),
        "betas": (draw(BETA), draw(BETA)),
        "eps": draw(EPS),
        "weight_decay": draw(WEIGHT_DECAY),
        "amsgrad": draw(st.booleans()),
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
            shapes.flatmap(lambda s: hnp.arrays(dtype, s, elements=values)), min_size=1, max_size=4
        )
    )
    order = draw(st.permutations(range(len(params))))
    cuts = (
        sorted(draw(st.sets(st.integers(1, len(params) - 1), max_size=2)))
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
            else np.zeros(p.shape, dtype)
            if draw(st.integers(0, 7)) == 0
            else draw(hnp.arrays(dtype, p.shape, elements=values))
            for p in params
        ]
        for _ in range(steps)
    ]
    changes = [
        draw(
            st.fixed_dictionaries({}, optional={"lr": LR, "eps": EPS, "weight_decay": WEIGHT_DECAY})
        )
        for _ in range(steps)
    ]
    return Program(dtype, params, groups, grads, changes)


PATHS: dict[str, dict[str, Any]] = {
    "for-loop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}
CLASSES = {  # refimpl's and torch's classes, and extra constructor options
    "Adam": ("Adam", {}),
    "AdamW": ("AdamW", {}),
    "Adam(decoupled_weight_decay=True)": ("Adam", {"decoupled_weight_decay": True}),
}
LIBS: dict[str, Any] = {"torch": torch, "refimpl": refimpl}


def hyper_tensor(lib: Any, value: float, dtype: str) -> Any:
    return lib.tensor(value, dtype=getattr(lib, dtype))


def build(
    lib: Any,
    program: Program,
    tensors: list[Any],
    cls: str,
    path: str,
    tensor_lr: str | None,
    tensor_betas: str | None,
    capability: str,
    sqrt: Any,
) -> Any:
    """The optimizer of `lib` over `tensors`, for `program`'s groups (lr and betas made tensors
    of the given dtype where asked)."""
    name, extra = CLASSES[cls]
    groups = []
    for indices, options in program.groups:
        group = {"params": [tensors[i] for i in indices], **options}
        if tensor_lr:
            group["lr"] = hyper_tensor(lib, options["lr"], tensor_lr)
        if tensor_betas:
            group["betas"] = tuple(hyper_tensor(lib, b, tensor_betas) for b in options["betas"])
        groups.append(group)
    if lib is torch:
        return getattr(torch.optim, name)(groups, **PATHS[path], **extra)
    return getattr(roptim, name)(
        groups, **PATHS[path], **extra, cpu_capability=capability, sqrt=sqrt
    )


def feed(
    program: Program,
    step: int,
    opts: tuple[Any, Any],
    params: tuple[list[Any], list[Any]],
    tensor_lr: str | None,
) -> None:
    """Gives both sides the step's gradients and hyperparameter changes."""
    for lib, opt, tensors in zip(("torch", "refimpl"), opts, params, strict=True):
        for t, g in zip(tensors, program.grads[step], strict=True):
            t.grad = None if g is None else LIBS[lib].tensor(g)
        for key, value in (program.changes[step] if program.changes else {}).items():
            group = opt.param_groups[0]
            group[key] = (
                hyper_tensor(LIBS[lib], value, tensor_lr) if key == "lr" and tensor_lr else value
            )


def assert_state_bitwise(
    step: int, i: int, torch_state: dict[str, Any], ref_state: dict[str, Any]
) -> None:
    assert list(ref_state) == list(torch_state), f"step {step} state keys {i}"
    for key, expected in torch_state.items():
        expected, actual = expected.numpy(), ref_state[key].data
        assert actual.shape == expected.shape and actual.dtype == expected.dtype, (
            f"step {step} {key} {i}: {actual.dtype}{actual.shape} vs {expected.dtype}"
            f"{expected.shape}"
        )
        assert bitwise_equal(actual, expected), (
            f"step {step} {key} {i}: {first_difference(actual, expected)}"
        )


def run_both(
    program: Program,
    cls: str,
    path: str,
    tensor_lr: str | None = None,
    tensor_betas: str | None = None,
    capability: str | None = None,
    sqrt: Any = torch_sqrt,
    budget: float | None = None,
) -> float:
    """Steps both optimizers through the program. With `budget` None everything must be
    bitwise; otherwise each step's parameters may differ by `budget` ULP of the update's operands
    (see PARAM_ULP_BUDGET) and torch's parameters are copied back after the comparison, so that
    differences do not accumulate. Returns the largest parameter error seen, in those ULPs."""
    capability = capability or torch_capability()
    torch_params = [torch.tensor(p, requires_grad=True) for p in program.params]
    ref_params = [refimpl.tensor(p, requires_grad=True) for p in program.params]
    opts = (
        build(torch, program, torch_params, cls, path, tensor_lr, tensor_betas, capability, sqrt),
        build(refimpl, program, ref_params, cls, path, tensor_lr, tensor_betas, capability, sqrt),
    )
    worst = 0.0
    for step in range(len(program.grads)):
        feed(program, step, opts, (torch_params, ref_params), tensor_lr)
        before = [p.detach().numpy().copy() for p in torch_params]
        grads = [None if p.grad is None else p.grad.numpy().copy() for p in torch_params]
        opts[0].step()
        opts[1].step()
        for i, (tp, rp) in enumerate(zip(torch_params, ref_params, strict=True)):
            expected, actual = tp.detach().numpy(), rp.data
            if budget is None:
                assert bitwise_equal(actual, expected), (
                    f"step {step} param {i}: {first_difference(actual, expected)}"
                )
            else:
                error = _param_error(actual, expected, before[i], opts[0], tp)
                assert error <= budget, (
                    f"step {step} param {i}: {error} ULP > {budget}: "
                    f"{first_difference(actual, expected)}"
                )
                worst = max(worst, error)
                rp.data[...] = expected
            if grads[i] is not None:  # no path writes into .grad
                assert bitwise_equal(rp.grad.data, grads[i]) and bitwise_equal(
                    tp.grad.numpy(), grads[i]
                ), f"step {step} grad {i} changed"
            assert_state_bitwise(step, i, opts[0].state.get(tp, {}), opts[1].state.get(rp, {}))
    return worst


def _param_error(
    actual: np.ndarray, expected: np.ndarray, before: np.ndarray, opt: Any, param: Any
) -> float:
    """|actual − expected| in ULPs of max(|θ'|, |expected − θ'|), θ' = `before` after AdamW's
    decay (the operands of the update's last addition)."""
    group = next(g for g in opt.param_groups if any(p is param for p in g["params"]))
    decayed = before.astype(np.float64)
    if group["decoupled_weight_decay"]:
        decayed = decayed * (1 - float(group["lr"]) * group["weight_decay"])
    finite = np.isfinite(expected) & np.isfinite(decayed)
    if not np.array_equal(np.isnan(actual), np.isnan(expected)):
        return math.inf
    if not finite.any():
        return 0.0
    with np.errstate(all="ignore"):
        scale = np.maximum(np.abs(decayed), np.abs(expected.astype(np.float64) - decayed))[finite]
        scale = np.minimum(scale, np.finfo(expected.dtype).max).astype(expected.dtype)
    difference = np.abs(actual[finite].astype(np.float64) - expected[finite].astype(np.float64))
    return float(np.max(difference / ulp(scale), initial=0.0))


TENSOR_DTYPES = st.sampled_from([None, "float32", "float64"])


@pytest.mark.parametrize("cls", list(CLASSES))
@pytest.mark.parametrize("path", list(PATHS))
@settings(max_examples=35, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=programs(), tensor_lr=TENSOR_DTYPES, tensor_betas=TENSOR_DTYPES)
def test_adam_matches_torch_bitwise(
    cls: str, path: str, program: Program, tensor_lr: str | None, tensor_betas: str | None
) -> None:
    if path == "foreach":
        tensor_lr = tensor_betas = None
    run_both(
        program, cls, path, tensor_lr, tensor_betas, sqrt=None if path == "fused" else torch_sqrt
    )


def _fixed_program(
    rng: np.random.Generator, dtype: type, options: dict[str, Any], steps: int = 3
) -> Program:
    shapes = [(3, 5), (), (7,), (0,), (9,)]
    params = [np.asarray(rng.standard_normal(s) * 3, dtype) for s in shapes]
    grads = [[np.asarray(rng.standard_normal(s), dtype) for s in shapes] for _ in range(steps)]
    grads[1][2] = None  # skipped at one step: its step count falls behind the others
    grads[2][0] = np.zeros(shapes[0], dtype)  # a zero gradient is not skipped
    return Program(
        np.dtype(dtype),
        params,
        [([0, 1, 2], options), ([3, 4], {**options, "lr": 0.5, "betas": (0.5, 0.75), "eps": 1e-3})],
        grads,
    )


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_feature_combination_bitwise(path: str, dtype: type) -> None:
    """Every combination of amsgrad, maximize, weight decay (none, L2, AdamW's, Adam's
    decoupled_weight_decay) and lr / betas as float or tensor of either dtype, on one program."""
    rng = np.random.default_rng(11)
    cases = 0
    for amsgrad, maximize, decay, lr_kind, betas_kind in product(
        [False, True],
        [False, True],
        ["none", "L2", "AdamW", "decoupled"],
        [None, "float32", "float64"],
        [None, "float32", "float64"],
    ):
        if path == "foreach" and (lr_kind or betas_kind):
            continue
        options = {
            "lr": 0.1,
            "betas": (0.9, 0.999),
            "eps": 1e-8,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "weight_decay": 0.0 if decay == "none" else 0.3,
        }
        cls = {"AdamW": "AdamW", "decoupled": "Adam(decoupled_weight_decay=True)"}.get(
            decay, "Adam"
        )
        run_both(
            _fixed_program(rng, dtype, options),
            cls,
            path,
            lr_kind,
            betas_kind,
            sqrt=None if path == "fused" else torch_sqrt,
        )
        cases += 1
    assert cases == (2 * 2 * 4 if path == "foreach" else 2 * 2 * 4 * 9)


@pytest.mark.parametrize("path", ["for-loop", "foreach"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=programs(), cls=st.sampled_from(list(CLASSES)), tensor_lr=TENSOR_DTYPES)
def test_numpy_sqrt_within_budget(
    path: str, program: Program, cls: str, tensor_lr: str | None
) -> None:
    """refimpl as it runs by default (numpy's square root) against torch's MKL square root:
    the parameters within PARAM_ULP_BUDGET, the moments and steps bitwise."""
    if path == "foreach":
        tensor_lr = None
    run_both(program, cls, path, tensor_lr, sqrt=None, budget=PARAM_ULP_BUDGET)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torch_sqrt_is_mkl_and_within_one_ulp(dtype: type) -> None:
    """What the budget rests on: torch's CPU sqrt is at most one ULP from the correctly rounded
    square root (numpy's), elementwise whatever the tensor's size or layout."""
    rng = np.random.default_rng(5)
    x = np.abs(rng.standard_normal(20_000) * np.exp(rng.uniform(-40, 40, 20_000))).astype(dtype)
    theirs = torch_sqrt(x)
    assert ulp_distance(theirs, np.sqrt(x)).max() <= 1
    pieces = np.concatenate([torch_sqrt(x[i : i + 7]) for i in range(0, 700, 7)])
    assert bitwise_equal(pieces, theirs[:700])
    assert bitwise_equal(torch_sqrt(x[:1].reshape(())), theirs[:1].reshape(()))


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.filterwarnings("ignore:optimizer contains a parameter group with duplicate")
def test_batched_and_large_tensors_with_a_duplicate(path: str, dtype: type) -> None:
    """refimpl steps small tensors together and large ones (and 0-dim ones) alone: a group
    mixing them, sizes around BATCH_BELOW and the fused kernel's vector width, matches torch;
    off the foreach path (whose interleaving refimpl does not reproduce) one parameter is listed
    twice, which the for-loop steps twice in turn and the fused path after counting both
    steps."""
    rng = np.random.default_rng(7)
    shapes = [(BATCH_BELOW + 3,), (3, 5), (), (BATCH_BELOW - 1,), (7,), (2 * BATCH_BELOW,)]
    params = [np.asarray(rng.standard_normal(s), dtype) for s in shapes]
    grads = [[np.asarray(rng.standard_normal(s), dtype) for s in shapes] for _ in range(3)]
    grads[1][2] = None
    first = [0, 1, 2, 3] if path == "foreach" else [0, 1, 2, 1, 3]
    program = Program(
        np.dtype(dtype),
        params,
        [
            (first, {"lr": 0.1, "betas": (0.8, 0.99), "weight_decay": 0.01, "amsgrad": True}),
            ([4, 5], {"lr": 0.5, "betas": (0.3, 0.5), "maximize": True}),
        ],
        grads,
    )
    run_both(program, "Adam", path, sqrt=None if path == "fused" else torch_sqrt)


def test_adam_matches_torch_with_default_cpu_capability() -> None:
    """torch's generic kernels (two roundings) against refimpl at cpu_capability="DEFAULT"."""
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    done = subprocess.run(
        [sys.executable, "-m", "tests.test_adam_bitwise"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cases passed" in done.stdout


# The rounding primitives on their own --------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_lerp_addcmul_addcdiv_match_torch(dtype: type, data: st.DataObject) -> None:
    """refimpl.rounding's lerp (both formulas, the scalar tail's sign of zero at weight 1),
    addcmul and addcdiv against torch's CPU kernels, at this process's capability, on sizes
    across the kernels' vector widths, zeros of both signs included."""
    from refimpl.rounding import addcdiv, addcmul, lerp

    rounding = roptim.rounding_for_capability(torch_capability())
    n = data.draw(st.integers(0, 70))
    width = 32 if dtype == np.float32 else 64
    values = st.floats(-1e3, 1e3, width=width) | st.sampled_from([0.0, -0.0, 1.0])
    a, b, c = (data.draw(hnp.arrays(dtype, n, elements=values)) for _ in range(3))
    weight = data.draw(BETA | st.just(1.0) | st.floats(0.0, 1.0))
    value = data.draw(st.floats(-10.0, 10.0))
    tail = np.arange(n - n % (roptim.LOOP_KERNEL_TAIL_BYTES // np.dtype(dtype).itemsize), n)
    ta, tb, tc = (torch.from_numpy(x.copy()) for x in (a, b, c))
    for ours, theirs in [
        (lerp(a, b, weight, rounding, tail), ta.lerp(tb, weight)),
        (addcmul(a, b, c, value, rounding), ta.addcmul(tb, tc, value=value)),
        (addcdiv(a, b, c, value), ta.addcdiv(tb, tc, value=value)),
    ]:
        assert bitwise_equal(ours, theirs.numpy()), first_difference(ours, theirs.numpy())


# State dicts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "direction", ["torch to refimpl", "refimpl to torch", "refimpl to refimpl"]
)
@pytest.mark.parametrize("path", list(PATHS))
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=programs(), k=st.integers(1, 3), cls=st.sampled_from(list(CLASSES)))
def test_state_dict_handover_continues_bitwise(
    direction: str, path: str, program: Program, k: int, cls: str
) -> None:
    """One side trains k steps, its state dict (step included) is loaded by the other side's
    optimizer (a fresh refimpl one for refimpl to refimpl, from a deep copy), and training
    continues bit-identically to the first side continuing."""
    capability = torch_capability()
    sqrt = None if path == "fused" else torch_sqrt
    torch_params = [torch.tensor(p, requires_grad=True) for p in program.params]
    ref_params = [refimpl.tensor(p, requires_grad=True) for p in program.params]
    source_params = [refimpl.tensor(p, requires_grad=True) for p in program.params]
    torch_opt = build(torch, program, torch_params, cls, path, None, None, capability, sqrt)
    ref_opt = build(refimpl, program, ref_params, cls, path, None, None, capability, sqrt)
    source_opt = build(refimpl, program, source_params, cls, path, None, None, capability, sqrt)
    steps = program.grads * (1 + k)
    source = {
        "torch to refimpl": (torch_opt, torch_params),
        "refimpl to torch": (ref_opt, ref_params),
        "refimpl to refimpl": (source_opt, source_params),
    }[direction]
    target = (torch_opt, torch_params) if direction == "refimpl to torch" else (ref_opt, ref_params)
    lib_of = {id(torch_opt): torch, id(ref_opt): refimpl, id(source_opt): refimpl}

    def feed_one(opt: Any, tensors: list[Any], grads: list[np.ndarray | None]) -> None:
        for t, g in zip(tensors, grads, strict=True):
            t.grad = None if g is None else lib_of[id(opt)].tensor(g)

    for grads in steps[:k]:
        feed_one(*source, grads)
        source[0].step()
    for s, t in zip(source[1], target[1], strict=True):
        values = np.array(s.detach().numpy(), copy=True)
        if isinstance(t, torch.Tensor):
            with torch.no_grad():
                t.copy_(torch.from_numpy(values))
        else:
            t.data[...] = values
    saved = source[0].state_dict()
    if direction == "torch to refimpl":
        saved = state_dict_to_refimpl(saved)
    elif direction == "refimpl to torch":
        saved = state_dict_to_torch(saved)
    else:
        saved = copy.deepcopy(saved)
    for state in saved["state"].values():
        assert dtype_name(state["step"]) == "float32" and state["step"].dim() == 0
    target[0].load_state_dict(saved)
    for step, grads in enumerate(steps[k:], start=k):
        for opt, tensors in (source, target):
            feed_one(opt, tensors, grads)
            opt.step()
        for i, (sp, tp) in enumerate(zip(source[1], target[1], strict=True)):
            a, b = sp.detach().numpy(), tp.detach().numpy()
            assert bitwise_equal(b, a), f"step {step} param {i}: {first_difference(b, a)}"
            sa, sb = source[0].state.get(sp, {}), target[0].state.get(tp, {})
            assert list(sa) == list(sb)
            for key in sa:
                assert bitwise_equal(sb[key].numpy(), sa[key].numpy()), f"step {step} {key} {i}"


def dtype_name(t: Any) -> str:
    return str(t.dtype).removeprefix("torch.")


def test_load_state_dict_keeps_step_as_torch_does() -> None:
    """torch keeps a loaded `step` as it is (no cast to the parameter's dtype), except in a group
    loaded as fused, where it becomes float32; a `step` saved as a Python number (older torch)
    becomes a 0-dim float32 tensor, and options an older state dict lacks are filled in; AdamW
    stays decoupled whatever the state dict says."""
    results = []
    for lib, opt_lib in ((torch, torch.optim), (refimpl, roptim)):
        p, q = (lib.tensor(v, dtype=lib.float64, requires_grad=True) for v in ([1.0, 2.0], [3.0]))
        r = lib.tensor([4.0], requires_grad=True)
        opt = opt_lib.AdamW([p, q, r])
        group = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
        moments = {"exp_avg": lib.tensor([0.5]), "exp_avg_sq": lib.tensor([1.0])}
        saved = {
            "state": {
                0: {"step": lib.tensor(5.0, dtype=lib.float64), **moments},
                1: {"step": lib.tensor(6.0, dtype=lib.float64), **moments},
                2: {"step": 3, **moments},
            },
            "param_groups": [
                {**group, "params": [0, 2], "decoupled_weight_decay": False},
                {**group, "params": [1], "fused": True},
            ],
        }
        del saved["param_groups"][0]["amsgrad"]
        opt = opt_lib.AdamW([{"params": [p, r]}, {"params": [q]}])
        opt.load_state_dict(saved)
        results.append(
            [[(k, dtype_name(v), v.tolist()) for k, v in opt.state[t].items()] for t in (p, q, r)]
        )
        results.append([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])
    assert results[0] == results[2]
    assert results[1] == results[3]
    steps = [state[0] for state in results[0]]
    assert steps == [("step", "float64", 5.0), ("step", "float32", 6.0), ("step", "float32", 3.0)]
    assert all(g["decoupled_weight_decay"] and g["amsgrad"] is False for g in results[1])


def test_zero_grad_is_stepped_and_none_is_skipped() -> None:
    """A zero gradient still counts a step, decays the moments and (AdamW) the parameter; a None
    gradient leaves parameter and state untouched."""
    program = Program(
        np.dtype(np.float32),
        [np.array([1.0, -2.0], np.float32), np.array([3.0], np.float32)],
        [([0, 1], {"lr": 0.5, "weight_decay": 0.1})],
        [
            [np.array([1.0, 1.0], np.float32), np.array([2.0], np.float32)],
            [np.zeros(2, np.float32), None],
        ],
    )
    run_both(program, "AdamW", "for-loop")
    p, q = (refimpl.tensor(v, requires_grad=True) for v in program.params)
    opt = roptim.AdamW([p, q], lr=0.5, weight_decay=0.1)
    for grads in program.grads:
        p.grad, q.grad = (None if g is None else refimpl.tensor(g) for g in grads)
        before = p.data.copy(), q.data.copy()
        opt.step()
    assert float(opt.state[p]["step"].item()) == 2.0 and float(opt.state[q]["step"].item()) == 1.0
    assert not np.array_equal(p.data, before[0]) and np.array_equal(q.data, before[1])


# Run under ATEN_CPU_CAPABILITY=default by test_adam_matches_torch_with_default_cpu_capability --

CASES = 0


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(
    program=programs(),
    path=st.sampled_from(list(PATHS)),
    cls=st.sampled_from(list(CLASSES)),
    tensor_lr=TENSOR_DTYPES,
    tensor_betas=TENSOR_DTYPES,
)
def _check_default_capability(
    program: Program, path: str, cls: str, tensor_lr: str | None, tensor_betas: str | None
) -> None:
    global CASES
    CASES += 1
    if path == "foreach":
        tensor_lr = tensor_betas = None
    run_both(
        program,
        cls,
        path,
        tensor_lr,
        tensor_betas,
        capability="DEFAULT",
        sqrt=None if path == "fused" else torch_sqrt,
    )


if __name__ == "__main__":
    capability = torch.backends.cpu.get_cpu_capability()
    assert capability == "DEFAULT", f"run with ATEN_CPU_CAPABILITY=default, not {capability}"
    _check_default_capability()
    print(f"{CASES} cases passed")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
@settings(max_examples=200, deadline=None)
@given(lr=st.floats(0.0, 1.0), weight_decay=st.floats(0.0, 2.0), seed=st.integers(0, 2**16))
def test_fused_adamw_decay_is_one_fma(
    dtype: type, lr: float, weight_decay: float, seed: int
) -> None:
    """torch's fused kernel computes AdamW's 1 − γλ as one fused multiply-add where its build
    has one: with a zero gradient the step is the decay alone, and refimpl's equals torch's
    bit for bit (two roundings differ in about a third of float64 cases)."""
    values = np.random.default_rng(seed).standard_normal(19).astype(dtype)
    t = torch.tensor(values, requires_grad=True)
    t.grad = torch.zeros_like(t)
    torch.optim.AdamW([t], lr=lr, weight_decay=weight_decay, fused=True).step()
    r = refimpl.tensor(values.copy())
    r.requires_grad_()
    r.grad = refimpl.tensor(np.zeros_like(values))
    roptim.AdamW(
        [r], lr=lr, weight_decay=weight_decay, fused=True, cpu_capability=torch_capability()
    ).step()
    assert bitwise_equal(r.data, t.detach().numpy())
