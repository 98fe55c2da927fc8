"""The generated models reach every op refimpl implements (conformance.models.ALL_OPS) and hit
every kink (models.KINKS) in a realistic share of their first forwards; `ops_of` is what
refimpl's forward runs and `Model.kinks` records only what `kinks_of` allows.

The specs are drawn with a fixed seed (SEED: the same ones every run, whatever the test's source
looks like; derandomizing seeded by the source, and reformatting it drew other specs). The
rates vary from sample to sample (clamp@max from 7% to 34% over seeds 0-3), so the floors are
about half the lowest rate of four samples; `pytest -s tests/test_generator_coverage.py`
prints the rates.
"""

from __future__ import annotations

import functools
import importlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import refimpl.functional
from conformance import models as M
from conformance import spec_strategies as S

GRAPHS, LAYERED = 600, 300  # specs drawn of each
BATCHES = 4  # first forwards measured per spec
SEED = 1  # the sample's seed
# Of the first forwards that can hit a kink, the share that does (torch's values): floors at
# about half of the lowest rate of seeds 0-3 (in the comments: lowest, and SEED's).
FLOORS = {
    "relu@0": 0.07,  # 0.15; 110 / 564 (graphs and layers)
    "leaky_relu@0": 0.11,  # 0.22; 54 / 248
    "elu@0": 0.07,  # 0.14; 50 / 256
    "abs@0": 0.04,  # 0.08; 40 / 420 (graphs; l1 of an output equal to its target: rarely)
    "clamp@min": 0.035,  # 0.07; 34 / 176
    "clamp@max": 0.035,  # 0.07; 17 / 144
    "amax:tie": 0.04,  # 0.08; 42 / 188
    "max:tie": 0.045,  # 0.09; 25 / 56
    "max_dim:tie": 0.05,  # 0.10; 11 / 112
    "max_pool2d:tie": 0.07,  # 0.15; 24 / 108
    "smooth_l1@beta": 0.12,  # 0.25; 45 / 152
    "huber@delta": 0.11,  # 0.22; 36 / 112
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors, as the runner runs them: a thread pool's hand-offs cost more than the
    work (5 ms a conv on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _draw(
    strategy: st.SearchStrategy[M.ModelSpec], count: int
) -> list[tuple[M.ModelSpec, str, int]]:
    drawn: list[tuple[M.ModelSpec, str, int]] = []

    @seed(SEED)
    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy, st.sampled_from(M.DTYPES), st.integers(0, 2**16))
    def collect(spec: M.ModelSpec, dtype: str, batch_seed: int) -> None:
        drawn.append((spec, dtype, batch_seed))

    collect()
    return drawn


@functools.cache
def _cases() -> list[tuple[M.ModelSpec, str, int]]:
    layered = S.model_specs(("mlp", "conv1d", "conv2d", "embedding"))
    return _draw(S.graph_specs(), GRAPHS) + _draw(layered, LAYERED)


def test_every_op_is_reached() -> None:
    reached = Counter(op for spec, _, _ in _cases() for op in M.ops_of(spec))
    assert set(M.ALL_OPS) <= set(M.OPS) | {"l1_loss", "cross_entropy"}
    assert not set(M.ALL_OPS) - set(reached), sorted(set(M.ALL_OPS) - set(reached))
    print("\nspecs running each op:", dict(sorted(reached.items(), key=lambda kv: kv[1])))


def test_every_kink_is_hit_in_first_forwards() -> None:
    """Each spec's first forward on BATCHES batches (the drawn one and the next ones)."""
    possible, hit = Counter[str](), Counter[str]()
    for spec, dtype, batch_seed in _cases():
        model = M.build(spec, dtype, "torch")  # a forward leaves the parameters as they were
        for batch in range(batch_seed, batch_seed + BATCHES):
            model.kinks = Counter()
            model.loss(batch)
            assert set(model.kinks) <= M.kinks_of(spec), spec.describe()
            assert all(n == 1 for n in model.kinks.values())  # one forward: at most 1 each
            possible.update(M.kinks_of(spec))
            hit.update(model.kinks)
    rates = {k: hit[k] / max(possible[k], 1) for k in M.KINKS}
    print(
        "\nfirst forwards on the kink / first forwards that can hit it:",
        ", ".join(f"{k} {hit[k]}/{possible[k]} ({rates[k]:.0%})" for k in M.KINKS),
    )
    assert set(FLOORS) == set(M.KINKS)
    low = {
        k: f"{rates[k]:.3f}" for k in M.KINKS if rates[k] < FLOORS[k] or possible[k] < 8 * BATCHES
    }
    assert not low, low


@pytest.mark.parametrize("dtype", M.DTYPES)
def test_ops_of_is_what_refimpl_runs(dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every OPS row refimpl's forward and loss apply, and no other (a cast is a no-op in
    float64); both libraries record the kinks their own values hit."""
    ran: set[str] = set()
    tensor_module = importlib.import_module("refimpl.tensor")  # refimpl.tensor: the factory
    apply = tensor_module.apply

    def recording(op: Any, *inputs: Any, **params: Any) -> Any:
        ran.add(op.name)
        return apply(op, *inputs, **params)

    monkeypatch.setattr(tensor_module, "apply", recording)
    monkeypatch.setattr(refimpl.functional, "apply", recording)
    for spec, _, batch_seed in _cases()[::8]:
        ran.clear()
        model = M.build(spec, dtype, "refimpl")
        model.kinks = Counter()
        model.loss(batch_seed)
        assert set(model.kinks) <= M.kinks_of(spec), spec.describe()
        rows = M.ops_of(spec) - {"l1_loss", "cross_entropy"}
        missing = rows - ran - ({"to_dtype"} if dtype == "float64" else set())
        assert not missing and ran <= rows, (sorted(missing), sorted(ran - rows), spec.describe())


G, P = M.GraphOp, M.Param


def test_model_kinks_count_forwards_where_a_gradient_flows() -> None:
    # p0 is 0: relu(x * p0) is at 0 everywhere, clamp(p1) sits on its min where p1 is 0, and
    # amax over the zeros ties; relu(x) is at 0 only where x is, and passes no gradient.
    spec = M.ModelSpec(
        kind="graph",
        input_shape=(2, 3),
        loss="sum",
        seed=0,
        params=(P("p0", ()), P("p1", (3,)), P("p2", (3,))),
        ops=(
            G("mul", ("x", "p0")),
            G("relu", ("v0",)),
            G("relu", ("x",)),
            G("add", ("v1", "v2")),
            G("clamp", ("p1",), low=0.0),
            G("mul", ("v3", "v4")),
            G("amax", ("v1",), dim=1),
            G("sum", ("v6",)),
            G("mul", ("v5", "p2")),
            G("add", ("v8", "v7")),
        ),
    )
    assert M.kinks_of(spec) == {"relu@0", "clamp@min", "amax:tie"}
    for lib in M.LIBS:
        model = M.build(spec, "float64", lib)
        assert model.kinks is None
        model.loss(0)  # nothing is counted, and nothing breaks
        for name, value in (("p0", 0.0), ("p1", [0.0, 1.0, 2.0])):
            if lib == "torch":
                with torch.no_grad():
                    model.parameters[name].copy_(torch.tensor(value))
            else:
                model.parameters[name].data[...] = value
        model.kinks = Counter()
        model.loss(0)
        model.loss(1)
        assert model.kinks == {"relu@0": 2, "clamp@min": 2, "amax:tie": 2}, lib
        model.parameters["p1"].requires_grad_(False)  # frozen: no gradient flows there
        model.loss(2)
        assert model.kinks == {"relu@0": 3, "clamp@min": 2, "amax:tie": 3}, lib


def test_smooth_l1_and_huber_batches_put_a_target_on_the_boundary() -> None:
    # In about a quarter of the batches, one target sits exactly beta (delta) off the initial
    # model's output, in every row tied with it.
    for loss in ("smooth_l1", "huber"):
        spec = M.ModelSpec(
            kind="mlp",
            input_shape=(3, 2),
            loss=loss,
            seed=1,
            loss_param=0.5,
            layers=(M.Layer("linear", 2), M.Layer("tanh"), M.Layer("linear", 2)),
        )
        model = M.build(spec, "float32", "torch")
        out = model.output(model.inputs(0)[0]).detach().numpy()
        on = 0
        for batch_seed in range(200):
            y = M.batch(spec, "float32", batch_seed)["y"]
            residual = np.abs(model.output(model.inputs(batch_seed)[0]).detach().numpy() - y)
            on += bool((residual == np.float32(0.5)).any())
        assert out.shape == (3, 2) and 30 <= on <= 80, on
