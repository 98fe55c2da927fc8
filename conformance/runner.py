"""Runs the state machine for one implementation and collects the outcome: up to
`max_failures` distinct failures, each shrunk, with when it was found; the coverage; the
times. The pytest test, the CLI and the mutant kill matrix all call `run`.

A run first replays the canonical configurations (`conformance.canonical`), whatever the seed;
a failing one is reduced (actions dropped, hyperparameters back to their defaults, while it
fails the same way) and reported like any other. Then it goes in rounds. Each round is one
Hypothesis run over the programs still in the budget; it stops at its first failure and shrinks
it (keeping the differing tensor and the kind of action, `stateful.failure_class`; the
hyperparameters shrink to the features the failure needs). The next round starts from the
programs left, with that failure's key known: a program whose divergence it explains (same
tensor and action, those features among its own) ends quietly, so the next round finds
something else. The run ends when the budget is spent, `max_failures` are found, or a failure
was the implementation's process lost (a crash or a hang: past it, each program would pay a
restart or a timeout).

`shard=(i, n)` runs the i-th of n parts of that run: its share of the budget and of the
canonical cases, with a seed of its own (shard 0 keeps the run's), so n processes together do
the run's work (`conformance.parallel`); `merge` puts their results together, the same way
whatever order they finished in.

A `module:Class` runs in a worker process (`conformance.isolation`, multiprocessing's
forkserver): a script that calls `run` must guard its entry point with
`if __name__ == "__main__":`, as multiprocessing requires.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import hypothesis
import torch
from hypothesis import settings as Settings
from hypothesis.errors import FlakyFailure
from hypothesis.stateful import run_state_machine_as_test

from conformance import canonical
from conformance.implementations import Implementation, implementation
from conformance.isolation import IsolatedImplementation, stop_workers
from conformance.machine import Divergence, DivergenceFound, Twins, history, replay
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


def share(total: int, shard: tuple[int, int]) -> int:
    """The i-th of n shards' part of `total` programs (the first ones take the remainder)."""
    index, count = shard
    return total // count + (index < total % count)


def shard_seed(seed: int | None, shard: tuple[int, int]) -> int | None:
    """A shard's own seed: shard 0 keeps the run's, so one shard is the whole run."""
    return None if seed is None else seed + 104_729 * shard[0]


def run(
    target: RunOptions | str,
    *,
    dtypes: tuple[str, ...] = ("float32", "float64"),
    settings: Settings,
    seed: int | None = None,
    shrink: bool = True,
    max_failures: int = 1,
    on_program: Callable[[int], None] | None = None,
    shard: tuple[int, int] = (0, 1),
    **options: Any,
) -> RunResult:
    """Checks an implementation against torch under `settings` (its max_examples is the
    budget of programs). `target` is a `RunOptions` or an implementation name, with any
    other `RunOptions` field as a keyword (`mode=`, `contract=`, `timeout=`, ...).
    `on_program(n)` is called as the n-th program starts (progress). `shard=(i, n)` runs
    the i-th of n parts of the run (see the module docstring)."""
    run_options = (
        target.with_(**options) if isinstance(target, RunOptions) else RunOptions(target, **options)
    )
    if not (isinstance(shard, tuple) and len(shard) == 2 and 0 <= shard[0] < shard[1]):
        raise ValueError(f"shard must be (index, count) with 0 <= index < count, not {shard}")
    budget, seed = share(settings.max_examples, shard), shard_seed(seed, shard)
    coverage = Coverage()
    failures: list[Failure] = []
    known: list[dict[str, Any]] = []
    generated = 0  # programs drawn so far (the budget); shrinking's re-runs are not drawn
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a thread pool's hand-offs cost 10x the work
    try:
        with without_local_constants():
            lost = _canonical(
                run_options,
                dtypes,
                shard,
                max_failures,
                failures,
                known,
                coverage,
                start,
                on_program,
            )
            while not lost and len(failures) < max_failures and generated < budget:
                before = generated
                cls = make_machine(run_options, dtypes, tuple(known), len(failures))
                offset = coverage.programs - generated  # the canonical cases, already run
                if on_program is not None:
                    cls.on_program = lambda c, before=before, cls=cls, offset=offset: on_program(
                        offset + before + (cls.first_failure or (c.programs,))[0]
                    )
                if seed is not None:  # each round its own
                    cls = hypothesis.seed(seed + 7919 * len(failures))(cls)
                hypothesis_options: dict[str, Any] = {
                    "report_multiple_bugs": False,
                    "max_examples": budget - before,
                }
                if seed is not None:  # a seeded run is exactly reproducible: no saved examples
                    hypothesis_options["database"] = None
                if not shrink:
                    hypothesis_options["phases"] = [
                        p for p in settings.phases if p.name != "shrink"
                    ]
                try:
                    try:
                        run_state_machine_as_test(
                            cls, settings=Settings(settings, **hypothesis_options)
                        )
                    except FlakyFailure as flaky:  # it failed, then passed when re-run
                        raise _flaky(flaky) from flaky
                except DivergenceFound as found:
                    programs, when = cls.first_failure or (
                        cls.coverage.programs,
                        time.perf_counter(),
                    )
                    known.append(found.divergence.key)
                    failures.append(
                        Failure(
                            found.divergence,
                            found.case,
                            offset + before + programs,
                            when - start,
                            flaky=isinstance(found, _Flaky),
                        )
                    )
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
                    failure.error_per_action, failure.trajectory = (
                        replayed.error_per_action,
                        replayed.trajectory,
                    )
    finally:
        torch.set_num_threads(threads)
        stop_workers()
    return RunResult(run_options, dtypes, failures, coverage, time.perf_counter() - start)


def _canonical(
    options: RunOptions,
    dtypes: tuple[str, ...],
    shard: tuple[int, int],
    max_failures: int,
    failures: list[Failure],
    known: list[dict[str, Any]],
    coverage: Coverage,
    start: float,
    on_program: Callable[[int], None] | None,
) -> bool:
    """Runs this shard's canonical cases, appending what fails (reduced) to `failures` and
    its key to `known`; returns whether the implementation's process was lost."""
    impl = implementation(options)
    cases = [case for dtype in dtypes for _, case in canonical.cases(dtype, options)]
    for case in cases[shard[0] :: shard[1]]:
        if len(failures) >= max_failures:
            break
        coverage.add_setup(case.setup)
        if on_program is not None:
            on_program(coverage.programs)
        twins = Twins(case.setup, impl, options)
        buffered: dict[str, int] = {}
        twins.reference.model.kinks = coverage.kinks
        for action in case.actions:
            coverage.add_action(action, twins, buffered)
            divergence = twins.run(action)
            if divergence is not None and known:
                divergence = twins.package(
                    [d for d in twins.found if not any(d.explained_by(key) for key in known)]
                )
            if divergence is None:
                continue
            when = time.perf_counter() - start
            # as Hypothesis does with a drawn program: run it again, and a failure that does
            # not show again (a timeout a cold cache caused, say) is reported as flaky
            coverage.shrinking += 1
            again = replay(twins.case, impl, options, known)
            if again is None or not _same_kind(again, divergence):
                failures.append(
                    Failure(divergence, twins.case, coverage.programs, when, flaky=True)
                )
            else:
                divergence, reduced = _reduce(
                    twins.case, divergence, impl, options, coverage, known
                )
                failures.append(Failure(divergence, reduced, coverage.programs, when))
            known.append(divergence.key)
            if divergence.tensor == "process":
                return True
            break
    return False


def _same_kind(found: Divergence, divergence: Divergence) -> bool:
    """The same failure, for reducing: the same tensor, difference and kind of action."""
    return all(found.key[k] == divergence.key[k] for k in ("tensor", "difference", "action"))


def _reduce(
    case: Case,
    divergence: Divergence,
    impl: Implementation | IsolatedImplementation,
    options: RunOptions,
    coverage: Coverage,
    known: Sequence[dict[str, Any]] = (),
) -> tuple[Divergence, Case]:
    """A smaller case that fails the same way (the same tensor, difference and kind of
    action): each action dropped, each hyperparameter back to its default, a tensor lr made a
    number, as long as it still does."""
    if divergence.tensor == "process":  # each try would cost a restart or a timeout
        return divergence, case

    def fails(candidate: Case) -> Divergence | None:
        coverage.shrinking += 1
        found = replay(candidate, impl, options, known)
        return found if found is not None and _same_kind(found, divergence) else None

    for index in reversed(range(len(case.actions))):
        candidate = Case(case.setup, case.actions[:index] + case.actions[index + 1 :])
        found = fails(candidate)
        if found is not None:
            divergence, case = found, candidate
    for name in [*(n for n in case.setup.defaults if n != "lr"), "tensor_lr"]:
        setup = case.setup
        if name == "tensor_lr":
            if not setup.tensor_lr:
                continue
            candidate = Case(replace(setup, tensor_lr=False), case.actions)
        else:
            dropped = {name, *options.spec.dependents(name)}  # nesterov needs momentum
            candidate = Case(
                replace(
                    setup, defaults={k: v for k, v in setup.defaults.items() if k not in dropped}
                ),
                case.actions,
            )
        found = fails(candidate)
        if found is not None:
            divergence, case = found, candidate
    return divergence, case


def merge(results: list[RunResult], max_failures: int) -> RunResult:
    """The shards of one run (in shard order) as one result: their coverage added up, their
    failures in shard order with one per key (the shortest case), at most `max_failures`;
    `found_after_programs` counts the programs of the shard that found it, which ran
    alongside the others. The seconds are the longest shard's."""
    coverage = Coverage()
    best: dict[str, Failure] = {}
    for result in results:
        coverage.merge(result.coverage)
        for failure in result.failures:
            key = json.dumps(failure.key, sort_keys=True)
            if key not in best or len(failure.case.actions) < len(best[key].case.actions):
                best[key] = failure
    failures = list(best.values())[:max_failures]
    first = results[0]
    return RunResult(
        first.options, first.dtypes, failures, coverage, max(r.seconds for r in results)
    )


@contextlib.contextmanager
def without_local_constants() -> Iterator[None]:
    """Hypothesis mixes into what it draws the literals of every local module (one outside
    site-packages and the standard library) loaded so far in the process
    (`hypothesis.internal.conjecture.providers._get_local_constants`). Which modules those are
    differs from process to process: a session without xdist has loaded the report module, a
    worker on a remote host runs the copy of pytest xdist put in its directory, as local code,
    and a user's optimizer module is local code too. So that a seed (and a shard count) draws
    the same programs wherever a shard runs and whatever the optimizer, a run draws without
    them. No public setting turns them off, so this patches a private Hypothesis API: where
    it is gone, nothing is changed."""
    try:
        from hypothesis.internal.conjecture import providers
        from hypothesis.internal.constants_ast import Constants

        original, cache = providers._get_local_constants, providers.CONSTANTS_CACHE
    except (ImportError, AttributeError):
        yield
        return
    none = Constants()
    cache.cache.clear()  # allowed constants computed with the local ones
    providers._get_local_constants = lambda: none
    try:
        yield
    finally:
        providers._get_local_constants = original
        cache.cache.clear()


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
