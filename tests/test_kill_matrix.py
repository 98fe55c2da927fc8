"""The self-check, for every family: the ci profile kills every catalogued mutant (the family's
`mutants`, and for SGD the wrong derivative rules), and the canonical cases with 300 drawn
programs per dtype pass every correct optimizer (the family's torch-derived `correct` ones, and
its `references`, written from the documentation alone, each with the features it declares
absent) under the default contract.
Seeds are fixed so CI is reproducible; the time each mutant took to be caught is printed at the
end of the run (the kill matrix, from each test's recorded property, so it is printed under
pytest-xdist too)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import settings as Settings

from conformance import families, mutants
from conformance.options import RunOptions
from conformance.profiles import PROFILES
from conformance.runner import run

MUTANTS = [
    (family, mutant)
    for family in families.FAMILY_NAMES
    for mutant in families.get(family).mutant_optimizers()
] + [("sgd", mutant) for mutant in mutants.AUTOGRAD_MUTANTS + mutants.THOROUGH_MUTANTS]


@pytest.mark.parametrize(("family", "mutant"), MUTANTS, ids=lambda m: getattr(m, "name", m))
def test_ci_profile_kills_mutant(
    family: str, mutant: mutants.Mutant, record_property: Callable[[str, object], None]
) -> None:
    """As `pytest conformance` runs the ci profile: one machine per dtype (the mutant is dead
    once either finds it; the time to kill adds up the dtypes tried)."""
    seconds, programs = 0.0, 0
    name = mutant.name if family == "sgd" else f"{family}: {mutant.name}"
    for dtype in ("float32", "float64"):
        if mutant.kind == "optimizer":
            result = run(
                RunOptions(mutant.target, family=family),
                dtypes=(dtype,),
                settings=PROFILES["ci"],
                seed=0,
                shrink=False,
            )
        else:
            with mutants.load(mutant.target)():
                result = run(
                    "refimpl", dtypes=(dtype,), settings=PROFILES["ci"], seed=0, shrink=False
                )
        programs += result.coverage.programs
        if not result.passed:
            assert result.seconds_to_failure is not None
            record_property(
                "kill_matrix", (name, True, seconds + result.seconds_to_failure, programs)
            )
            return
        seconds += result.seconds
    record_property("kill_matrix", (name, False, None, programs))
    pytest.fail(f"{name} survived {programs} programs")


# A correct optimizer's run, in CI: the canonical cases and 300 drawn programs per dtype (a ci
# run draws 1,000; the swarm makes 300 reach every pair of features). The full ci profile at
# seeds 0-2 is run by hand (`conformance run --optimizer TARGET --seed S`) when the
# generators change.
CORRECT_BUDGET = Settings(PROFILES["ci"], max_examples=300)


CORRECT = [
    (family, target, frozenset[str]())
    for family in families.FAMILY_NAMES
    for target in families.get(family).correct_optimizers()
] + [
    (family, target, without)
    for family in families.FAMILY_NAMES
    for target, without in families.get(family).reference_optimizers().items()
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    ("family", "target", "without"),
    CORRECT,
    ids=lambda v: v if isinstance(v, str) else ",".join(sorted(v)),
)
def test_ci_profile_passes_correct_optimizer(
    family: str, target: str, without: frozenset[str], dtype: str
) -> None:
    """As `pytest conformance --conformance-family FAMILY --optimizer TARGET
    --conformance-without ...` runs it (default mode: ulp; default contract: semantic), on
    CORRECT_BUDGET."""
    if target.endswith(":CompiledStepSGD"):
        from conformance import compiled_reference  # importing it compiles

        if compiled_reference.COMPILE_SKIP_REASON is not None:
            pytest.skip(compiled_reference.COMPILE_SKIP_REASON)
    result = run(
        RunOptions(target, family=family, without=without),
        dtypes=(dtype,),
        settings=CORRECT_BUDGET,
        seed=0,
    )
    assert result.passed, str(result.divergence)
    assert result.coverage.programs >= CORRECT_BUDGET.max_examples
