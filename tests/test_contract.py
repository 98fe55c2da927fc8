"""The contracts and the declared surface (conformance.options): what a correct optimizer
written from the documentation may do differently from torch under the semantic contract,
what the strict contract still demands, and how a declared surface reaches the programs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conformance import strategies
from conformance.families import get
from conformance.families.sgd import torch_writes_grad
from conformance.implementations import ImplementationError, implementation
from conformance.machine import replay
from conformance.options import RunOptions, parse_features
from conformance.profiles import PROFILES
from conformance.program import Action, Case, Group, Setup
from conformance.runner import run
from tests.test_machine import SPEC

FEATURES = get("sgd").features

# --- optimizers a user might write --------------------------------------------------------------


class DocSGD(torch.optim.Optimizer):
    """SGD from the torch.optim.SGD docstring: six hyperparameters, its own error wording."""

    def __init__(
        self,
        params: Any,
        lr: Any = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("lr must be a scalar")
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError("lr, momentum and weight_decay must be non-negative")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov needs momentum > 0 and no dampening")
        super().__init__(
            params,
            {
                "lr": lr,
                "momentum": momentum,
                "dampening": dampening,
                "weight_decay": weight_decay,
                "nesterov": nesterov,
                "maximize": maximize,
            },
        )

    def buffer_key(self) -> str:
        return "momentum_buffer"

    def signed(self, grad: torch.Tensor, maximize: bool) -> torch.Tensor:
        return -grad if maximize else grad

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mu = float(group["lr"]), group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = self.signed(p.grad, group["maximize"])
                if group["weight_decay"] != 0:
                    g = g + group["weight_decay"] * p
                if mu != 0:
                    state = self.state[p]
                    if self.buffer_key() not in state:
                        buf = state[self.buffer_key()] = g.clone()
                    else:
                        buf = state[self.buffer_key()]
                        buf.mul_(mu).add_((1 - group["dampening"]) * g)
                    g = g + mu * buf if group["nesterov"] else buf
                p.add_(-lr * g)
        return loss


class ExtraKeysSGD(DocSGD):
    """Keeps its own bookkeeping in every group."""

    def __init__(self, params: Any, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        for group in self.param_groups:
            group["steps_taken"] = 0

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group({"steps_taken": 0, **param_group})

    def step(self, closure: Any = None) -> Any:
        for group in self.param_groups:
            group["steps_taken"] = group.get("steps_taken", 0) + 1
        return super().step(closure)


class BufKeySGD(DocSGD):
    def buffer_key(self) -> str:
        return "buf"


class LrError(ValueError):
    pass


class SubclassErrorSGD(DocSGD):
    def __init__(self, params: Any, lr: Any = 1e-3, **kwargs: Any) -> None:
        if lr < 0:
            raise LrError("negative lr")
        super().__init__(params, lr, **kwargs)


class TypeErrorSGD(DocSGD):
    def __init__(self, params: Any, lr: Any = 1e-3, **kwargs: Any) -> None:
        if lr < 0:
            raise TypeError("negative lr")
        super().__init__(params, lr, **kwargs)


class NoMaximizeSGD(torch.optim.Optimizer):
    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum})


class FusedForcedSGD(torch.optim.SGD):
    """torch's own fused path, whatever the caller asks."""

    def __init__(
        self,
        params: Any,
        lr: Any = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        super().__init__(
            params, lr, momentum, dampening, weight_decay, nesterov, maximize=maximize, fused=True
        )


class TwoBugsSGD(DocSGD):
    """maximize ignored, and step(closure) returns None."""

    def signed(self, grad: torch.Tensor, maximize: bool) -> torch.Tensor:
        return grad

    def step(self, closure: Any = None) -> Any:
        super().step(closure)
        return None


class WritesGrad(DocSGD):
    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.mul_(1.5)
        return loss


class NudgedClosure(DocSGD):
    def step(self, closure: Any = None) -> Any:
        if closure is None:
            return super().step()

        def nudged() -> Any:
            loss = closure()
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        if p.grad is not None:
                            p.grad.copy_(torch.nextafter(p.grad, p.grad + 1))
            return loss

        return super().step(nudged)


MODULE = __name__  # the classes above, importable by a worker process as tests.test_contract


FOREACH = "conformance.references:ForeachSGD"  # torch's own foreach path, always


def _options(name: str, **kwargs: Any) -> RunOptions:
    return RunOptions(f"{MODULE}:{name}", **kwargs)


def _case(*actions: Action, **defaults: Any) -> Case:
    options = {
        "lr": 0.1,
        "momentum": 0.9,
        "dampening": 0.0,
        "weight_decay": 0.0,
        "nesterov": False,
        "maximize": False,
        **defaults,
    }
    setup = Setup(SPEC, "float64", options, (Group(tuple(SPEC.parameter_names())),))
    return Case(setup, actions)


STEPS = (
    Action("backward", {"batch": 1}),
    Action("step"),
    Action("backward", {"batch": 2}),
    Action("step"),
)
INVALID_LR = Action("construct", {"options": {"lr": -0.1, "momentum": 0.0}})

# --- semantic: what a correct optimizer may do differently ---------------------------------------


def test_own_error_wording_passes_semantic_and_fails_strict() -> None:
    case = _case(INVALID_LR, *STEPS)
    assert replay(case, _options("DocSGD")) is None
    divergence = replay(case, _options("DocSGD", contract="strict"))
    assert divergence is not None and divergence.tensor == "exception"
    assert "Invalid learning rate: -0.1" in divergence.detail  # both messages are shown
    assert "non-negative" in divergence.detail


def test_an_exception_subclass_conforms_and_another_class_does_not() -> None:
    case = _case(INVALID_LR)
    assert replay(case, _options("SubclassErrorSGD")) is None
    divergence = replay(case, _options("TypeErrorSGD"))
    assert divergence is not None and divergence.tensor == "exception"
    assert "ValueError" in divergence.detail and "TypeError" in divergence.detail


def test_keys_torch_lacks_and_torch_flags_matter_in_strict_only() -> None:
    assert replay(_case(*STEPS), _options("ExtraKeysSGD")) is None
    divergence = replay(_case(*STEPS), _options("ExtraKeysSGD", contract="strict"))
    assert divergence is not None and divergence.tensor == "param_groups"
    assert "<missing>" in divergence.detail  # torch's differentiable flag, first in order


def test_a_missing_hyperparameter_is_a_divergence_unless_declared_absent() -> None:
    """NoMaximizeSGD keeps only lr and momentum in its groups."""
    setup = Setup(
        SPEC,
        "float64",
        {"lr": 0.1, "momentum": 0.9, "dampening": 0.0},
        (Group(tuple(SPEC.parameter_names())),),
    )
    divergence = replay(
        Case(setup, STEPS[:1]), _options("NoMaximizeSGD", without=frozenset({"maximize"}))
    )
    assert divergence is not None and divergence.tensor == "param_groups"
    assert "dampening: torch 0.0, the implementation <missing>" in divergence.detail
    setup = Setup(
        SPEC, "float64", {"lr": 0.1, "momentum": 0.9}, (Group(tuple(SPEC.parameter_names())),)
    )
    assert (
        replay(
            Case(setup, STEPS[:1]),
            _options(
                "NoMaximizeSGD",
                without=frozenset({"maximize", "dampening", "weight-decay", "nesterov"}),
            ),
        )
        is None
    )


@pytest.mark.parametrize("contract", ["semantic", "strict"])
def test_torch_foreach_grad_write_is_no_artifact_a_user_must_copy(contract: str) -> None:
    """Nesterov, no maximize, no weight decay: torch's foreach path writes g + μb into .grad.
    Against the for-loop reference, semantic accepts it; strict does not. Against the foreach
    reference, strict demands it and semantic accepts an untouched .grad too."""
    case = _case(*STEPS, nesterov=True)
    assert torch_writes_grad(case.setup.defaults)
    foreach = replay(case, RunOptions(FOREACH, contract=contract))
    assert (foreach is None) == (contract == "semantic")
    as_reference = _options("DocSGD", contract=contract, reference_path="foreach")
    untouched = replay(case, as_reference)
    assert (untouched is None) == (contract == "semantic")
    assert replay(case, RunOptions(FOREACH, contract="strict", reference_path="foreach")) is None


def test_a_wrong_grad_write_is_still_caught() -> None:
    """Accepting torch's write is not accepting any write."""

    for nesterov in (True, False):
        divergence = replay(_case(*STEPS, nesterov=nesterov), _options("WritesGrad"))
        assert divergence is not None and divergence.tensor == "grad"
        assert divergence.overwritten == "implementation"


def test_state_key_names_where_the_buffer_lives() -> None:
    case = _case(
        *STEPS,
        Action("save_load", {"source": "reference"}),
        *STEPS,
        Action("save_load", {"source": "implementation"}),
        *STEPS,
    )
    divergence = replay(case, _options("BufKeySGD"))
    assert divergence is not None and divergence.tensor == "momentum_buffer"
    assert replay(case, _options("BufKeySGD", state_key="buf")) is None


def test_tolerance_mode_judges_gradients_with_tolerance() -> None:
    """A gradient one rounding off (as from a compiled closure) fails exact and ulp modes,
    which compare torch's own autograd bitwise, and passes tolerance."""

    case = _case(Action("step_closure", {"batch": 3}))
    divergence = replay(case, _options("NudgedClosure"))
    assert divergence is not None and divergence.tensor == "grad"
    assert replay(case, _options("NudgedClosure", mode="tolerance")) is None


# --- the declared surface ------------------------------------------------------------------------


def test_a_constructor_without_an_argument_the_programs_pass_is_a_configuration_error() -> None:
    with pytest.raises(ImplementationError, match="--without maximize"):
        implementation(_options("NoMaximizeSGD"))
    implementation(_options("NoMaximizeSGD", without=frozenset({"maximize"})))


def test_torch_flags_reach_only_a_constructor_that_names_them() -> None:
    impl = implementation(_options("DocSGD"))
    assert not impl.accepts("foreach") and impl.accepts("maximize")
    assert implementation(RunOptions("torch.optim:SGD")).accepts("foreach")


def test_unknown_features_are_rejected() -> None:
    assert parse_features("maximize, closure") == {"maximize", "closure"}
    with pytest.raises(ValueError, match="unknown feature"):
        parse_features("maximise")


@settings(max_examples=60, deadline=None)
@given(without=st.sets(st.sampled_from(sorted(FEATURES))), data=st.data())
def test_declared_absent_hyperparameters_are_never_drawn(
    without: set[str], data: st.DataObject
) -> None:
    setup = data.draw(strategies.setups(without=frozenset(without)))
    passed = [setup.defaults, *(g.options for g in setup.groups)]
    absent = {
        "maximize": "maximize",
        "dampening": "dampening",
        "nesterov": "nesterov",
        "weight-decay": "weight_decay",
    }
    for feature, key in absent.items():
        if feature in without:
            assert all(key not in options for options in passed)
    if "tensor-lr" in without:
        assert not setup.tensor_lr
    construction = data.draw(strategies.constructions(frozenset(without)))
    for feature, key in absent.items():
        if feature in without:
            assert key not in construction["options"]


# --- runs ----------------------------------------------------------------------------------------


def test_a_run_reports_each_distinct_failure_shrunk() -> None:
    result = run(
        _options("TwoBugsSGD"),
        dtypes=("float64",),
        settings=PROFILES["dev"],
        seed=0,
        max_failures=5,
    )
    kinds = {(f.key["tensor"], f.key["action"]) for f in result.failures}
    assert ("loss", "step") in kinds  # the dropped loss (a step with a closure is a step)
    assert any("maximize" in f.key["features"] for f in result.failures)  # maximize ignored
    assert len({str(f.key) for f in result.failures}) == len(result.failures)
    for failure in result.failures:
        assert len(failure.case.actions) <= 5 and failure.found_after_programs >= 1
        assert failure.error_per_action


def test_torch_fused_path_differs_by_its_type_error() -> None:
    """torch 2.13's fused SGD raises TypeError when a group's parameters get their first
    gradient at different steps (here: one was frozen for the first step)."""
    first = SPEC.parameter_names()[0]
    case = _case(
        Action("freeze", {"param": first}),
        *STEPS[:2],
        Action("unfreeze", {"param": first}),
        *STEPS[2:],
    )
    assert replay(case, _options("DocSGD")) is None
    divergence = replay(case, _options("FusedForcedSGD"))
    assert divergence is not None and divergence.tensor == "exception"
    assert "TypeError: expected Tensor as element" in divergence.detail


def test_torch_fused_path_differs_by_nothing_else() -> None:
    """Its rounding (fused multiply-adds, a scalar tail) is within the step's error model:
    every failure a run finds is that TypeError."""
    result = run(
        _options("FusedForcedSGD"),
        dtypes=("float64",),
        settings=PROFILES["dev"],
        seed=0,
        max_failures=5,
    )
    for failure in result.failures:
        assert "TypeError: expected Tensor as element" in failure.divergence.detail, str(
            failure.divergence
        )


@pytest.mark.parametrize("path", ["foreach", "fused"])
def test_refimpl_is_strictly_torch_on_every_reference_path(path: str) -> None:
    """refimpl's SGD reproduces each torch path in the strict contract: its side effects
    (foreach's .grad write, fused's rounding and its TypeError) included."""
    for dtype in ("float32", "float64"):
        result = run(
            RunOptions("refimpl", reference_path=path),
            dtypes=(dtype,),
            settings=PROFILES["dev"],
            seed=0,
        )
        assert result.passed, str(result.divergence)


def test_betas_are_compared_by_value_under_the_semantic_contract() -> None:
    from conformance.machine import _same_value, _show

    assert _same_value((0.9, 0.999), [0.9, 0.999], strict=False)
    assert _same_value((0.9, 0.999), (("tensor", 0.9), 0.999), strict=False)
    assert not _same_value((0.9, 0.999), (0.9, 0.99), strict=False)
    assert not _same_value((0.9, 0.999), [0.9, 0.999], strict=True)
    assert _show((0.9, 0.999)) == "(0.9, 0.999)" and _show(("tensor", 0.5)) == "tensor(0.5)"


def test_nan_against_inf_where_the_step_overflowed_is_not_a_divergence() -> None:
    """torch's lerp makes NaN of an infinite gradient (g − (g − m)·β at β1 = 0) where the
    documented β·m + (1 − β)·g gives inf; MinimalAdam, written from the documentation, is
    judged conforming on the case a ci run found (seed 1), while the values do differ so."""
    import json
    from pathlib import Path

    from conformance.machine import Twins

    data = json.loads(
        (Path(__file__).parent / "fixtures" / "adam_lerp_nan_against_inf.json").read_text(
            encoding="utf-8"
        )
    )
    case = Case.from_json(data)
    options = RunOptions(
        "conformance.adam_references:MinimalAdam",
        family="adam",
        isolation="none",
        without=frozenset({"amsgrad", "maximize", "cross-load", "invalid-hyperparameters"}),
    )
    twins = Twins(case.setup, implementation(options), options)
    for action in case.actions:
        assert twins.run(action) is None
    assert twins.side_obs is not None
    expected = twins._reference_now().state["exp_avg"]["0.weight"]
    actual = twins.side_obs.state["exp_avg"]["0.weight"]
    assert np.isnan(expected).any() and np.isinf(actual[np.isnan(expected)]).all()
