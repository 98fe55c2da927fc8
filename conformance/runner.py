"""Runs the state machine for one implementation and collects the outcome: up to
`max_failures` distinct failures, each shrunk, with when it was found; the coverage; the
times. The pytest test, the CLI and the mutant kill matrix all call `run`.

A run goes in rounds. Each round is one Hypothesis run over the programs still in the budget;
it stops at its first failure and shrinks it (keeping the differing tensor and the kind of
action, `stateful.failure_class`; the hyperparameters shrink to the features the failure
needs). The next round starts from the programs left, with that failure's key known: a
program whose divergence it explains (same tensor and action, those features among its own)
ends quietly, so the next round finds something else. The run ends when the budget is spent,
`max_failures` are found, or a failure was the implementation's process lost (a crash or a
hang: past it, each program would pay a restart or a timeout).

A `module:Class` runs in a worker process (`conformance.isolation`, multiprocessing's
forkserver): a script that calls `run` must guard its entry point with
`if __name__ == "__main__":`, as multiprocessing requires.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from hypothesis import settings as Settings
from hypothesis.errors import FlakyFailure
from hypothesis.stateful import run_state_machine_as_test

from conformance.isolation import stop_workers
from conformance.machine import Divergence, DivergenceFound, history
from conformance.options import RunOptions
from conformance.oracle import Mode
from conformance.program import Case
from conformance.stateful import Coverage
from conformance.stateful import machine as make_machine


@dataclass
class Failure:
    divergence: Divergence
    case: Case  # shrunk, unless the run did not shrink
    found_after_programs: int  # programs run (in this dtype) when it first showed
    found_after_seconds: float
    error_per_action: list[float] = field(default_factory=list)  # of the replayed case
    trajectory: dict[str, Any] | None = None  # the diverging element, both sides, per action
    flaky: bool = False  # it did not show again when Hypothesis re-ran the program

    @property
    def key(self) -> dict[str, Any]:
        return self.divergence.key


@dataclass
class RunResult:
    options: RunOptions
    dtypes: tuple[str, ...]
    failures: list[Failure]
    coverage: Coverage
    seconds: float  # the whole run, shrinking included

    @property
    def implementation(self) -> str:
        return self.options.implementation

    @property
    def mode(self) -> Mode | None:
        return self.options.mode

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def divergence(self) -> Divergence | None:
        return self.failures[0].divergence if self.failures else None

    @property
    def case(self) -> Case | None:
        return self.failures[0].case if self.failures else None

    @property
    def seconds_to_failure(self) -> float | None:
        return self.failures[0].found_after_seconds if self.failures else None


def run(target: RunOptions | str, *, dtypes: tuple[str, ...] = ("float32", "float64"),
        settings: Settings, seed: int | None = None, shrink: bool = True,
        max_failures: int = 1, on_program: Callable[[int], None] | None = None,
        **options: Any) -> RunResult:
    """Checks an implementation against torch under `settings` (its max_examples is the
    budget of programs). `target` is a `RunOptions` or an implementation name, with any
    other `RunOptions` field as a keyword (`mode=`, `contract=`, `timeout=`, ...).
    `on_program(n)` is called as the n-th program starts (progress)."""
    run_options = target.with_(**options) if isinstance(target, RunOptions) \
        else RunOptions(target, **options)
    coverage = Coverage()
    failures: list[Failure] = []
    known: list[dict[str, Any]] = []
    generated = 0  # programs drawn so far (the budget); shrinking's re-runs are not drawn
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a thread pool's hand-offs cost 10x the work
    try:
        while len(failures) < max_failures and generated < settings.max_examples:
            before = generated
            cls = make_machine(run_options, dtypes, tuple(known), len(failures))
            if on_program is not None:
                cls.on_program = lambda c, before=before, cls=cls: on_program(
                    before + (cls.first_failure or (c.programs,))[0])
            if seed is not None:  # what @hypothesis.seed sets; each round its own
                cls._hypothesis_internal_use_seed = seed + 7919 * len(failures)
            hypothesis_options: dict[str, Any] = {
                "report_multiple_bugs": False,
                "max_examples": settings.max_examples - before}
            if seed is not None:  # a seeded run is exactly reproducible: no saved examples
                hypothesis_options["database"] = None
            if not shrink:
                hypothesis_options["phases"] = [p for p in settings.phases if p.name != "shrink"]
            try:
                try:
                    run_state_machine_as_test(cls, settings=Settings(settings,
                                                                     **hypothesis_options))
                except FlakyFailure as flaky:  # it failed, then passed when re-run
                    raise _flaky(flaky) from flaky
            except DivergenceFound as found:
                programs, when = cls.first_failure or (cls.coverage.programs, time.perf_counter())
                known.append(found.divergence.key)
                failures.append(Failure(found.divergence, found.case, before + programs,
                                        when - start, flaky=isinstance(found, _Flaky)))
                cls.coverage.shrinking += cls.coverage.programs - programs
                cls.coverage.programs = programs
                coverage.merge(cls.coverage)
                generated += programs
                if found.divergence.tensor == "process":
                    break  # past a crash or a hang, every program would pay a restart or a
                    # timeout to look for more: the run ends with what it found
                continue
            coverage.merge(cls.coverage)
            break
        if shrink:
            for failure in failures:
                replayed = history(failure.case, run_options, element=failure.divergence)
                failure.error_per_action, failure.trajectory = \
                    replayed.error_per_action, replayed.trajectory
    finally:
        torch.set_num_threads(threads)
        stop_workers()
    return RunResult(run_options, dtypes, failures, coverage, time.perf_counter() - start)


class _Flaky(DivergenceFound):
    """A divergence Hypothesis saw once and not again on a re-run (a timeout a cold cache
    caused, say): reported as a failure marked flaky, never a crash of the run."""


def _flaky(group: BaseExceptionGroup) -> BaseException:
    """The first divergence in a FlakyFailure, as a _Flaky (the group itself when it holds
    none: that is the harness's own failure)."""
    for error in group.exceptions:
        if isinstance(error, DivergenceFound):
            return _Flaky(error.divergence, error.case)
        if isinstance(error, BaseExceptionGroup):
            found = _flaky(error)
            if isinstance(found, _Flaky):
                return found
    return group
