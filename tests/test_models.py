"""conformance.models: specs round-trip through JSON, twins start bit-identical, batches are
deterministic and valid, refimpl's losses and gradients stay within the spec's budget of
torch's (and a wrong derivative rule does not), and the strategies reach every kind, loss, op
and feature, shrinking to the simplest model.

MODELS_BUDGET_EXAMPLES (default 1000) sets how many drawn (spec, dtype, batch) triples the budget
test runs; `MODELS_BUDGET_EXAMPLES=20000 HYPOTHESIS_PROFILE=explore pytest -s -k budget
tests/test_models.py` is the long validation, printing the largest error / budget ratios.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import refimpl
from conformance import models as M
from conformance import strategies as S
from refimpl.ops import OPS

BUDGET_EXAMPLES = int(os.environ.get("MODELS_BUDGET_EXAMPLES", "1000"))
QUICK = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
G, L, P = M.GraphOp, M.Layer, M.Param


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors, as the runner runs them (a thread pool's hand-offs cost more)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _plain_json(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_json(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain_json(v) for v in value)
    return value is None or type(value) in (str, int, float, bool)


def _bits(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array).tobytes()


# Specs --------------------------------------------------------------------------------------


@QUICK
@given(S.model_specs())
def test_json_round_trip(spec: M.ModelSpec) -> None:
    data = spec.to_json()
    assert _plain_json(data)
    again = M.ModelSpec.from_json(json.loads(json.dumps(data)))
    assert again == spec and hash(again) == hash(spec)
    assert again.to_json() == data


@QUICK
@given(S.model_specs())
def test_parameter_names_and_facts(spec: M.ModelSpec) -> None:
    names = spec.parameter_names()
    assert len(set(names)) == len(names) >= 1
    assert list(spec.parameter_shapes()) == names
    assert set(spec.frozen) <= set(names)
    assert spec.used_parameters() <= set(names)
    assert any(spec.expects_grad(n) for n in names), "nothing would train"
    assert 1 <= spec.input_shape[0] <= 4
    assert 1 <= spec.num_parameters() <= 1000
    for dtype in M.DTYPES:
        budget = spec.grad_ulp_budget(dtype)
        assert 1 <= budget <= M.GRAD_BUDGET_CAP[dtype]
    assert spec.grad_ulp_budget("float32") < 2**12 + 1
    assert spec.grad_ulp_budget("float64") < 2**20
    assert spec.describe()


INVALID = {
    "unknown kind": dict(kind="rnn", input_shape=(2, 3), layers=(L("linear", 1),)),
    "unknown loss": dict(kind="mlp", input_shape=(2, 3), layers=(L("linear", 1),), loss="kl"),
    "shape mismatch": dict(kind="conv1d", input_shape=(2, 3), layers=(L("linear", 1),)),
    "conv too small": dict(
        kind="conv1d",
        input_shape=(1, 1, 2),
        layers=(L("conv1d", 1, kernel=3), L("flatten"), L("linear", 1)),
    ),
    "layer_norm of 2": dict(
        kind="mlp", input_shape=(2, 3), layers=(L("linear", 2), L("layer_norm"), L("linear", 1))
    ),
    "layer_norm after rank 1": dict(
        kind="mlp", input_shape=(2, 1), layers=(L("linear", 4), L("layer_norm"), L("linear", 1))
    ),
    "l1 over an even batch": dict(
        kind="mlp", input_shape=(2, 3), layers=(L("linear", 1),), loss="l1"
    ),
    "cross_entropy on one class": dict(
        kind="mlp", input_shape=(1, 3), layers=(L("linear", 1),), loss="cross_entropy"
    ),
    "frozen unknown": dict(
        kind="mlp", input_shape=(1, 3), layers=(L("linear", 1),), frozen=("9.weight",)
    ),
    "graph l1": dict(
        kind="graph",
        input_shape=(1, 2),
        params=(P("p0", ()),),
        ops=(G("mul", ("x", "p0")),),
        loss="l1",
    ),
    "graph bad broadcast": dict(
        kind="graph", input_shape=(2, 3), params=(P("p0", (2,)),), ops=(G("add", ("x", "p0")),)
    ),
    "graph forward reference": dict(
        kind="graph",
        input_shape=(2, 3),
        params=(P("p0", ()),),
        ops=(G("add", ("x", "v1")), G("mul", ("v0", "p0"))),
    ),
    "graph bad dim": dict(
        kind="graph",
        input_shape=(2, 3),
        params=(P("p0", ()),),
        ops=(G("sum", ("x",), dim=2), G("mul", ("v0", "p0"))),
    ),
    "embedding index": dict(
        kind="embedding",
        input_shape=(1, 2),
        vocab=3,
        layers=(L("embedding", 2, padding_idx=3), L("flatten"), L("linear", 1)),
    ),
}


@pytest.mark.parametrize("fields", INVALID.values(), ids=INVALID.keys())
def test_invalid_specs_are_refused(fields: dict[str, Any]) -> None:
    fields = {"loss": "mse", "seed": 0, **fields}
    with pytest.raises(ValueError):
        M.ModelSpec(**fields)


# Twins and batches -----------------------------------------------------------------------------


@QUICK
@given(S.model_specs(), st.sampled_from(M.DTYPES))
def test_twins_start_bit_identical(spec: M.ModelSpec, dtype: str) -> None:
    ours, theirs = M.build(spec, dtype, "refimpl"), M.build(spec, dtype, "torch")
    assert (ours.lib, theirs.lib) == ("refimpl", "torch")
    assert list(ours.parameters) == list(theirs.parameters) == spec.parameter_names()
    for name in spec.parameter_names():
        p, q = ours.parameters[name], theirs.parameters[name]
        assert isinstance(p, refimpl.nn.Parameter) and isinstance(q, torch.nn.Parameter)
        assert p.requires_grad == q.requires_grad == (name not in spec.frozen)
        a, b = p.detach().numpy(), q.detach().numpy()
        assert a.dtype == b.dtype == np.dtype(dtype)
        assert a.shape == b.shape == spec.parameter_shapes()[name]
        assert _bits(a) == _bits(b)
    # Each build holds its own arrays.
    first = next(iter(theirs.parameters.values()))
    with torch.no_grad():
        first.add_(1.0)
    again = M.build(spec, dtype, "refimpl").parameters[spec.parameter_names()[0]]
    assert _bits(again.detach().numpy()) == _bits(next(iter(ours.parameters.values())).data)


def test_initial_values_have_zeros_and_ordinary_scale() -> None:
    spec = M.ModelSpec(
        kind="graph",
        input_shape=(2, 3),
        loss="sum",
        seed=0,
        params=(P("p0", (3, 3)),),
        ops=(G("matmul", ("x", "p0")),),
    )
    draws = [
        M.initial_values(dataclasses.replace(spec, seed=s), "float64")["p0"] for s in range(200)
    ]
    assert sum((d == 0).any() for d in draws) >= 10
    values = np.concatenate([d.ravel() for d in draws])
    assert 0.3 < values.std() < 0.6


@QUICK
@given(S.model_specs(), st.sampled_from(M.DTYPES), st.integers(0, 2**63 - 1))
def test_batches_are_deterministic_and_valid(spec: M.ModelSpec, dtype: str, seed: int) -> None:
    a, b = M.batch(spec, dtype, seed), M.batch(spec, dtype, seed)
    assert set(a) == {"x", "y"}
    for key in a:
        assert _bits(a[key]) == _bits(b[key]) and a[key].dtype == b[key].dtype
        a[key][...] = 0  # fresh copies: scribbling on one changes nothing
    c = M.batch(spec, dtype, seed)
    assert all(_bits(b[key]) == _bits(c[key]) for key in b)
    x, y = b["x"], b["y"]
    assert x.shape == spec.input_shape
    if spec.kind == "embedding":
        assert x.dtype == np.int64 and x.min() >= 0 and x.max() < spec.vocab
    else:
        assert x.dtype == np.dtype(dtype) and np.isfinite(x).all()
    out = spec.output_shape()
    if spec.loss in M.CLASS_LOSSES:
        assert y.dtype == np.int64 and y.shape == out[:1]
        assert y.min() >= 0 and y.max() < out[1]
    else:
        assert y.dtype == np.dtype(dtype) and y.shape == out
        if spec.loss == "bce_with_logits":
            assert set(np.unique(y)) <= {0.0, 1.0}
    if spec.kind != "graph":  # tied samples have tied targets
        rows = {}
        for row, target in zip(x + 0, y, strict=True):
            assert rows.setdefault(row.tobytes(), target.tobytes()) == target.tobytes()


def test_batches_include_zeros_ties_and_plain_values() -> None:
    spec = M.ModelSpec(kind="mlp", input_shape=(4, 3), loss="mse", seed=5, layers=(L("linear", 1),))
    zeros = ties = plain = 0
    for seed in range(200):
        x = M.batch(spec, "float64", seed)["x"]
        zeros += bool((x == 0).any())
        ties += len(np.unique(x)) < x.size
        plain += len(np.unique(x)) == x.size and not (x == 0).any()
    assert zeros >= 20 and ties >= 20 and plain >= 20


# refimpl against torch --------------------------------------------------------------------


def _compare(spec: M.ModelSpec, dtype: str, batch_seed: int) -> dict[str, float]:
    """Forward and backward on both twins; checks the loss, the None pattern and every grad
    against the budget, and returns each error / budget ratio."""
    ours, theirs = M.build(spec, dtype, "refimpl"), M.build(spec, dtype, "torch")
    a, b = ours.loss(batch_seed), theirs.loss(batch_seed)
    assert a.shape == () and b.shape == () and a.requires_grad and b.requires_grad
    budget = spec.grad_ulp_budget(dtype)
    la, lb = a.detach().numpy(), b.detach().numpy()
    assert la.dtype == lb.dtype == np.dtype(dtype)
    # Losses are sums of non-negative terms, but for "sum": measure that one against |output|.
    scale = M.loss_scale(spec, dtype, theirs.values(), batch_seed)
    ratios = {"loss": M.grad_error_ulps(la, lb, scale) / budget}
    a.backward()
    b.backward()
    scales: dict[str, float] = {}
    for name, p in ours.parameters.items():
        q = theirs.parameters[name]
        assert (p.grad is None) == (q.grad is None) == (not spec.expects_grad(name)), name
        if q.grad is not None:
            ratios[name] = M.grad_error_ulps(p.grad.numpy(), q.grad.numpy()) / budget
            if ratios[name] > 1:  # a chance cancellation? In ULPs of its terms (the module doc)
                scales = scales or M.gradient_scales(spec, dtype, theirs.values(), batch_seed)
                ratios[name] = (
                    M.grad_error_ulps(p.grad.numpy(), q.grad.numpy(), scales[name]) / budget
                )
    worst = max(ratios, key=ratios.get)
    assert ratios[worst] <= 1, (
        f"{worst}: {ratios[worst] * budget:.3g} ulp > budget {budget:.3g}\n{spec.describe()}\n"
        f"{json.dumps(spec.to_json())} dtype={dtype} batch_seed={batch_seed}"
    )
    return ratios


def test_refimpl_within_grad_budget_of_torch() -> None:
    """The budget validation: many drawn specs × dtypes × batches; prints the largest ratios."""
    worst: dict[tuple[str, str], float] = defaultdict(float)

    @settings(
        max_examples=BUDGET_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(S.model_specs(), st.sampled_from(M.DTYPES), st.integers(0, 2**32 - 1))
    def check(spec: M.ModelSpec, dtype: str, batch_seed: int) -> None:
        ratios = _compare(spec, dtype, batch_seed)
        key = (dtype, spec.kind)
        worst[key] = max(worst[key], max(v for k, v in ratios.items() if k != "loss"))
        worst[(dtype, "loss")] = max(worst[(dtype, "loss")], ratios["loss"])

    check()
    print(
        "\nlargest error / grad_ulp_budget:",
        ", ".join(f"{d} {k} {v:.3g}" for (d, k), v in sorted(worst.items())),
    )


def test_grads_none_for_unused_and_frozen_parameters() -> None:
    # p0 feeds the output twice (tied), p1 only a dead branch, p2 nothing, p3 is frozen.
    spec = M.ModelSpec(
        kind="graph",
        input_shape=(2, 3),
        loss="mse",
        seed=3,
        params=(P("p0", (3,)), P("p1", (2, 3)), P("p2", ()), P("p3", (1, 3))),
        ops=(
            G("add", ("x", "p0")),
            G("mul", ("x", "p1")),
            G("mul", ("v0", "p0")),
            G("div", ("v2", "p3")),
            G("sum", ("v3",), dim=0, keepdim=True),
        ),
        frozen=("p3",),
    )
    assert spec.used_parameters() == {"p0", "p3"}
    ratios = _compare(spec, "float64", 0)
    assert set(ratios) == {"loss", "p0"}
    _compare(spec, "float32", 1)


WRONG = {  # a derivative rule (the row's input index) and a model whose gradients go through it
    "tanh": (
        0,
        dict(kind="mlp", input_shape=(3, 2), layers=(L("linear", 3), L("tanh"), L("linear", 1))),
    ),
    "sigmoid": (
        0,
        dict(
            kind="graph",
            input_shape=(2, 3),
            params=(P("p0", (3,)),),
            ops=(G("mul", ("x", "p0")), G("sigmoid", ("v0",))),
        ),
    ),
    "linear": (
        0,
        dict(kind="mlp", input_shape=(2, 3), layers=(L("linear", 2), L("tanh"), L("linear", 2))),
    ),
    "convolution": (
        1,
        dict(
            kind="conv1d",
            input_shape=(1, 2, 5),
            layers=(L("conv1d", 2, kernel=2), L("flatten"), L("linear", 1)),
        ),
    ),
    "layer_norm": (
        0,
        dict(
            kind="embedding",
            input_shape=(1, 3),
            vocab=4,
            layers=(L("embedding", 3), L("layer_norm"), L("flatten"), L("linear", 1)),
        ),
    ),
    "amax": (
        0,
        dict(
            kind="graph",
            input_shape=(2, 3),
            params=(P("p0", (3,)),),
            ops=(G("mul", ("x", "p0")), G("amax", ("v0",), dim=1)),
        ),
    ),
    "mse_loss": (0, dict(kind="mlp", input_shape=(2, 3), layers=(L("linear", 2),))),
}


@pytest.mark.parametrize("op", WRONG)
def test_a_wrong_derivative_rule_breaks_the_budget(
    monkeypatch: pytest.MonkeyPatch, op: str
) -> None:
    """The same rule scaled by 1.25 (an O(1) error) fails the comparison, in both dtypes."""
    index, fields = WRONG[op]
    row = OPS[op]
    right = row.derivatives[index]
    rules = list(row.derivatives)
    rules[index] = lambda *args, **params: right(*args, **params) * 1.25
    monkeypatch.setitem(OPS, op, dataclasses.replace(row, derivatives=tuple(rules)))
    for dtype in M.DTYPES:
        for seed in range(3):
            spec = M.ModelSpec(**{"loss": "mse", "seed": seed, **fields})
            with pytest.raises(AssertionError, match="budget"):
                _compare(spec, dtype, seed)


def test_gradient_scales_bound_cancelling_sums() -> None:
    # d loss / d p0 sums the residuals, which may cancel; the scale sums their sizes.
    spec = M.ModelSpec(
        kind="graph",
        input_shape=(3, 2),
        loss="mse",
        seed=0,
        params=(P("p0", ()), P("p1", (2,))),
        ops=(G("sub", ("x", "p0")),),
    )
    model = M.build(spec, "float64", "torch")
    model.loss(7).backward()
    scales = M.gradient_scales(spec, "float64", model.values(), 7)
    assert scales["p1"] == 0.0
    batch = M.batch(spec, "float64", 7)
    residual = batch["x"] - model.values()["p0"] - batch["y"]
    assert math.isclose(scales["p0"], np.abs(2 * residual / residual.size).sum())
    assert scales["p0"] >= abs(float(model.parameters["p0"].grad))


CANCELLING = [  # drawn cases where a whole gradient tensor cancels to far below its terms
    (
        M.ModelSpec(
            kind="conv1d",
            input_shape=(3, 1, 4),
            loss="sum",
            seed=545,
            layers=(
                L("conv1d", 1, padding=1, bias=False),
                L("gelu"),
                L("conv1d", 2, kernel=2, stride=2, bias=False),
                L("relu"),
                L("flatten"),
                L("linear", 3),
            ),
        ),
        "float32",
        408527602,
        "0.weight",
    ),
    (
        M.ModelSpec(
            kind="conv1d",
            input_shape=(3, 1, 6),
            loss="cross_entropy",
            seed=54576841,
            loss_param=0.1,
            layers=(
                L("conv1d", 1, padding=1),
                L("tanh"),
                L("conv1d", 1, bias=False),
                L("tanh"),
                L("flatten"),
                L("linear", 4, bias=False),
            ),
        ),
        "float32",
        107,
        "0.bias",
    ),
]


@pytest.mark.parametrize(("spec", "dtype", "batch_seed", "name"), CANCELLING)
def test_gradient_scales_hold_chance_cancellations(
    spec: M.ModelSpec, dtype: str, batch_seed: int, name: str
) -> None:
    ours, theirs = M.build(spec, dtype, "refimpl"), M.build(spec, dtype, "torch")
    ours.loss(batch_seed).backward()
    theirs.loss(batch_seed).backward()
    a, b = ours.grads()[name], theirs.grads()[name]
    budget = spec.grad_ulp_budget(dtype)
    assert M.grad_error_ulps(a, b) > budget  # in ULPs of the gradient itself: noise
    scale = M.gradient_scales(spec, dtype, theirs.values(), batch_seed)[name]
    assert M.grad_error_ulps(a, b, scale) <= budget / 8


def test_loss_scale_holds_outputs_close_to_targets() -> None:
    # mse of an output close to its target: the tiny loss keeps the output's error (seed and
    # batch found by search).
    spec = M.ModelSpec(
        kind="mlp",
        input_shape=(1, 4),
        loss="mse",
        seed=3013,
        layers=(L("linear", 2), L("gelu_tanh"), L("linear", 1)),
    )
    ours, theirs = M.build(spec, "float32", "refimpl"), M.build(spec, "float32", "torch")
    a, b = ours.loss(670).detach().numpy(), theirs.loss(670).detach().numpy()
    budget = spec.grad_ulp_budget("float32")
    assert M.grad_error_ulps(a, b) > budget
    scale = M.loss_scale(spec, "float32", theirs.values(), 670)
    assert M.grad_error_ulps(a, b, scale) <= budget / 8
    summed = M.ModelSpec(
        kind="graph",
        input_shape=(2, 2),
        loss="sum",
        seed=0,
        params=(P("p0", ()),),
        ops=(G("sub", ("x", "p0")),),
    )
    values = {"p0": np.zeros((), np.float64)}
    x = M.batch(summed, "float64", 0)["x"]
    assert math.isclose(M.loss_scale(summed, "float64", values, 0), np.abs(x).mean())


def test_zero_gradients_and_cancelling_values_are_found() -> None:
    # p0 cancels out of x + p0 - mean(x + p0): its exact gradient is zero.
    shifted = (
        G("add", ("x", "p0")),
        G("mean", ("v0",), dim=1, keepdim=True),
        G("sub", ("v0", "v1")),
        G("mul", ("v2", "p1")),
        G("tanh", ("v3",)),
    )
    spec = M.ModelSpec(
        kind="graph",
        input_shape=(3, 4),
        loss="sum",
        seed=0,
        params=(P("p0", ()), P("p1", (4,))),
        ops=shifted,
    )
    assert M.zero_gradient_parameters(spec) == {"p0"}
    assert M.cancelling_op(spec) is None
    # mean(v0 - mean(v0)) is zero but for rounding.
    spec = M.ModelSpec(
        kind="graph",
        input_shape=(3, 4),
        loss="mse",
        seed=0,
        params=(P("p0", ()),),
        ops=(
            G("add", ("x", "p0")),
            G("mean", ("v0",)),
            G("sub", ("v0", "v1")),
            G("mean", ("v2",)),
            G("mul", ("v3", "p0")),
        ),
    )
    assert M.cancelling_op(spec) == 3


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(S.model_specs())
def test_drawn_specs_have_no_zero_gradients(spec: M.ModelSpec) -> None:
    assert not (M.zero_gradient_parameters(spec) - set(spec.frozen))
    assert M.cancelling_op(spec) is None


# Strategies -------------------------------------------------------------------------------


def _features(spec: M.ModelSpec) -> set[tuple[str, str]]:
    seen = {("kind", spec.kind), ("loss", spec.loss), ("reduction", spec.reduction)}
    seen |= {("layer", x.op) for x in spec.layers}
    seen |= {("op", o.op) for o in spec.ops}
    if spec.frozen:
        seen.add(("feature", "frozen"))
    if any(not x.bias for x in spec.layers if x.op in ("linear", "conv1d", "conv2d")):
        seen.add(("feature", "no bias"))
    if any(x.padding_idx is not None for x in spec.layers):
        seen.add(("feature", "padding_idx"))
    if spec.kind == "graph":
        uses = [a for o in spec.ops for a in o.args]
        names = {p.name for p in spec.params}
        shapes = {**{p.name: p.shape for p in spec.params}}
        if any(uses.count(n) > 1 for n in names):
            seen.add(("feature", "tied parameter"))
        if names - set(uses):
            seen.add(("feature", "unused parameter"))
        if (names & set(uses)) - spec.used_parameters():
            seen.add(("feature", "dead branch"))
        if any(p.shape == () for p in spec.params):
            seen.add(("feature", "scalar parameter"))
        for o in spec.ops:
            if o.op in M.BINARY_OPS and any(a in shapes and 0 < len(shapes[a]) < 2 for a in o.args):
                seen.add(("feature", "broadcast parameter"))
            if o.op in M.REDUCTION_OPS:
                seen.add(("feature", "reduce all" if o.dim is None else "reduce dim"))
    return seen


def test_strategies_cover_kinds_losses_ops_and_features() -> None:
    seen: set[tuple[str, str]] = set()

    @settings(
        max_examples=600, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(S.model_specs())
    def collect(spec: M.ModelSpec) -> None:
        seen.update(_features(spec))

    collect()
    expected = {("kind", k) for k in M.KINDS} | {("loss", x) for x in M.LOSSES}
    # (every graph op, and every op refimpl has: tests/test_generator_coverage.py)
    expected |= {("reduction", r) for r in M.REDUCTIONS} | {("op", o) for o in M.BINARY_OPS}
    expected |= {("layer", x) for x in M.LAYER_OPS}
    expected |= {
        ("feature", f)
        for f in (
            "frozen",
            "no bias",
            "padding_idx",
            "tied parameter",
            "unused parameter",
            "dead branch",
            "scalar parameter",
            "broadcast parameter",
            "reduce all",
            "reduce dim",
        )
    }
    assert not expected - seen, sorted(expected - seen)


def _minimal(strategy: st.SearchStrategy[M.ModelSpec], condition: Any) -> M.ModelSpec:
    """The example Hypothesis shrinks to when a test fails exactly on `condition` (no explain
    phase: it would run variations of that example after it; derandomized: from a random
    start the shrinker may stop in another branch of one_of)."""
    failing: list[M.ModelSpec] = []

    @settings(
        max_examples=500,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def test(spec: M.ModelSpec) -> None:
        if condition(spec):
            failing.append(spec)
            raise AssertionError

    with pytest.raises(AssertionError):
        test()
    return failing[-1]  # the final replay is of the shrunk example


def test_strategies_shrink_to_one_linear_with_mse() -> None:
    spec = _minimal(S.model_specs(), lambda s: True)
    assert spec == M.ModelSpec(
        kind="mlp", input_shape=(1, 1), loss="mse", seed=0, layers=(L("linear", 1),)
    )
    graph = _minimal(S.model_specs(), lambda s: s.kind == "graph")
    assert len(graph.ops) == 1 and graph.loss == "mse" and not graph.frozen
    assert graph.input_shape == (1, 1) and len(graph.params) == 1
    conv = _minimal(S.model_specs(), lambda s: s.kind == "conv2d" and s.loss == "nll")
    assert conv.input_shape[0] == 1 and conv.layers[-1].out == 2 and len(conv.layers) == 4
