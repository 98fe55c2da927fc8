"""The self-check: the ci profile kills every catalogued mutant, and the canonical cases with 300
drawn programs per dtype pass every correct optimizer (conformance.mutants, and the ones
written from the documentation alone in conformance.references) under the default contract.
Seeds are fixed so CI is reproducible; the time each mutant took to be caught is printed at the
end of the run (the kill matrix, from each test's recorded property, so it is printed under
pytest-xdist too)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import settings as Settings

from conformance import mutants, references
from conformance.profiles import PROFILES
from conformance.runner import run


@pytest.mark.parametrize("mutant", mutants.OPTIMIZER_MUTANTS + mutants.AUTOGRAD_MUTANTS
                         + mutants.THOROUGH_MUTANTS,
                         ids=lambda m: m.name)
def test_ci_profile_kills_mutant(mutant: mutants.Mutant,
                                 record_property: Callable[[str, object], None]) -> None:
    """As `pytest conformance` runs the ci profile: one machine per dtype (the mutant is dead
    once either finds it; the time to kill adds up the dtypes tried)."""
    seconds, programs = 0.0, 0
    for dtype in ("float32", "float64"):
        if mutant.kind == "optimizer":
            result = run(mutant.target, dtypes=(dtype,), settings=PROFILES["ci"], seed=0,
                         shrink=False)
        else:
            with mutants.load(mutant.target)():
                result = run("refimpl", dtypes=(dtype,), settings=PROFILES["ci"], seed=0,
                             shrink=False)
        programs += result.coverage.programs
        if not result.passed:
            assert result.seconds_to_failure is not None
            record_property("kill_matrix", (mutant.name, True,
                                            seconds + result.seconds_to_failure, programs))
            return
        seconds += result.seconds
    record_property("kill_matrix", (mutant.name, False, None, programs))
    pytest.fail(f"{mutant.name} survived {programs} programs")


# A correct optimizer's run, in CI: the canonical cases and 300 drawn programs per dtype (a ci
# run draws 1,000; the swarm makes 300 reach every pair of features). The full ci profile at
# seeds 0-2 is run by hand (`conformance run --optimizer TARGET --seed S`) when the
# generators change.
CORRECT_BUDGET = Settings(PROFILES["ci"], max_examples=300)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("target", mutants.CORRECT_OPTIMIZERS + references.REFERENCES)
def test_ci_profile_passes_correct_optimizer(target: str, dtype: str) -> None:
    """As `pytest conformance --optimizer TARGET` runs it (default mode: ulp; default
    contract: semantic), on CORRECT_BUDGET."""
    if target.endswith(":CompiledStepSGD"):
        from conformance import compiled_reference  # importing it compiles

        if compiled_reference.COMPILE_SKIP_REASON is not None:
            pytest.skip(compiled_reference.COMPILE_SKIP_REASON)
    result = run(target, dtypes=(dtype,), settings=CORRECT_BUDGET, seed=0)
    assert result.passed, str(result.divergence)
    assert result.coverage.programs >= CORRECT_BUDGET.max_examples
