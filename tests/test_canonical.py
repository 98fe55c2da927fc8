"""The canonical cases (conformance.canonical) and the kill speed they give: correct optimizers
pass every one; every optimizer mutant of the catalogue and every realistic bug outside it fails
one, so every profile finds it whatever the seed; a failing one is reduced to a smaller case
that fails the same way."""

from __future__ import annotations

import json

import pytest

from conformance import canonical, families, mutants
from conformance.machine import replay
from conformance.options import RunOptions
from conformance.profiles import PROFILES
from conformance.runner import run
from tests.outside_catalogue import OUTSIDE_CATALOGUE
from tests.outside_catalogue_adam import OUTSIDE_ADAM

DTYPES = ("float32", "float64")


def _failing(target: str, **options: object) -> list[str]:
    """The canonical cases `target` fails (in this process), as name/dtype."""
    run_options = RunOptions(target, isolation="none", **options)  # type: ignore[arg-type]
    return [
        f"{name}/{dtype}"
        for dtype in DTYPES
        for name, case in canonical.cases(dtype, run_options)
        if replay(case, run_options) is not None
    ]


CORRECT = [
    (family, target, without)
    for family in families.FAMILY_NAMES
    for target, without in [
        ("refimpl", frozenset[str]()),
        *((t, frozenset[str]()) for t in families.get(family).correct_optimizers()),
        *families.get(family).reference_optimizers().items(),
    ]
    if not target.endswith(":CompiledStepSGD")
]


@pytest.mark.parametrize(
    ("family", "target", "without"),
    CORRECT,
    ids=lambda v: v if isinstance(v, str) else ",".join(sorted(v)),
)
def test_correct_optimizers_pass_every_canonical_case(
    family: str, target: str, without: frozenset[str]
) -> None:
    assert _failing(target, family=family, without=without) == []


def test_the_table_is_pytorchs_classic_configurations() -> None:
    names = [name for name, *_ in families.get("sgd").configurations]
    for base in ("plain", "momentum", "dampening", "nesterov"):
        assert {
            base,
            f"{base}+weight_decay",
            f"{base}+maximize",
            f"{base}+weight_decay+maximize",
        } <= set(names)
    assert any(tensor_lr for *_, tensor_lr in families.get("sgd").configurations)


def test_a_declared_absent_feature_is_never_in_a_canonical_case() -> None:
    without = frozenset(
        {
            "nesterov",
            "closure",
            "state-dict",
            "set-to-none-false",
            "invalid-hyperparameters",
            "add-param-group",
            "tensor-lr",
        }
    )
    options = RunOptions("refimpl", without=without)
    for dtype in DTYPES:
        for name, case in canonical.cases(dtype, options):
            assert "nesterov" not in name and not case.setup.tensor_lr
            kinds = {a.kind for a in case.actions}
            assert not kinds & {"step_closure", "save_load", "construct", "add_param_group"}
            assert all(a.args.get("set_to_none", True) for a in case.actions)
            assert len(case.setup.groups) == 1
            assert set(case.setup.groups[0].params) == set(case.setup.model.parameter_names())


WRONG = (
    [
        (family, mutant.target)
        for family in families.FAMILY_NAMES
        for mutant in families.get(family).mutant_optimizers()
    ]
    + [("sgd", target) for target in OUTSIDE_CATALOGUE]
    + [(family, target) for _, target, family in OUTSIDE_ADAM]
)


@pytest.mark.parametrize(("family", "target"), WRONG, ids=lambda v: v.split(":")[-1])
def test_every_wrong_optimizer_fails_a_canonical_case(family: str, target: str) -> None:
    """Whatever the seed, each is found among the first few dozen programs of a run."""
    assert _failing(target, family=family), f"{target} passes every canonical case"


def test_a_canonical_failure_is_reduced_and_found_first() -> None:
    result = run(
        mutants.OPTIMIZER_MUTANTS[0].target,
        dtypes=("float32",),
        settings=PROFILES["dev"],
        seed=0,
        isolation="none",
    )
    (failure,) = result.failures
    full = len(canonical.program(RunOptions()))
    assert failure.found_after_programs <= len(families.get("sgd").configurations)
    assert len(failure.case.actions) < full
    again = replay(failure.case, RunOptions(result.implementation, isolation="none"))
    assert again is not None and again.key == failure.key


def test_the_canonical_models_still_cover_what_they_were_picked_for() -> None:
    """Changing how models are built or batches drawn can move a kink: re-pick with
    scripts/pick_canonical_models.py."""
    stored = json.loads(canonical.MODELS_FILE.read_text(encoding="utf-8"))
    reached = frozenset().union(*(canonical.reach(spec) for spec in canonical.MODELS))
    assert set(stored["covers"]) <= reached


def test_every_wrong_derivative_rule_fails_a_canonical_case() -> None:
    missed = []
    for mutant in mutants.AUTOGRAD_MUTANTS + mutants.THOROUGH_MUTANTS:
        with mutants.load(mutant.target)():
            if not _failing("refimpl"):
                missed.append(mutant.name)
    assert missed == []


@pytest.mark.parametrize(
    ("family", "target"),
    [
        ("sgd", "conformance.mutants:MaximizeIgnored"),
        ("adam", "conformance.adam_mutants:BetasSwapped"),
        ("adamw", "conformance.adam_mutants:MaximizeIgnoredW"),
    ],
    ids=lambda v: v.split(":")[-1],
)
def test_a_deterministic_optimizer_has_no_flaky_failure(family: str, target: str) -> None:
    """A canonical case that fails a second way, after a failure already found, is run again
    with that failure still explained away: it shows again, so it is not called flaky."""
    result = run(
        RunOptions(target, family=family, isolation="none"),
        dtypes=("float64",),
        settings=PROFILES["dev"],
        seed=0,
        max_failures=5,
    )
    assert len(result.failures) >= 2
    assert not [f for f in result.failures if f.flaky]
