"""Runs the state machine for one implementation and collects the outcome: the first
divergence of the shrunk failing case (if any), the coverage, and the times. The pytest test,
the CLI and the mutant kill matrix all call `run`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import settings as Settings
from hypothesis.stateful import run_state_machine_as_test

from conformance.machine import Coverage, Divergence, DivergenceFound, machine
from conformance.oracle import Mode
from conformance.program import Case


@dataclass
class RunResult:
    implementation: str
    mode: Mode | None
    dtypes: tuple[str, ...]
    divergence: Divergence | None
    case: Case | None  # the shrunk failing case
    coverage: Coverage
    seconds: float  # the whole run, shrinking included
    seconds_to_failure: float | None  # until the first failing program was found

    @property
    def passed(self) -> bool:
        return self.divergence is None


def run(impl: str, *, mode: Mode | None = None, dtypes: tuple[str, ...] = ("float32", "float64"),
        settings: Settings, seed: int | None = None, timeout: float | None = 10.0,
        shrink: bool = True, on_program: Callable[[Coverage], None] | None = None
        ) -> RunResult:
    """Checks `impl` ("refimpl" or "module:Class") against torch under `settings`;
    `on_program(coverage)` is called as each program starts (progress)."""
    cls = machine(impl, mode, timeout, dtypes)
    cls.on_program = on_program
    first_failure: list[float] = []
    start = time.perf_counter()
    original = cls._do

    def timed_do(self: Any, action: Any) -> None:
        try:
            original(self, action)
        except DivergenceFound:
            if not first_failure:
                first_failure.append(time.perf_counter() - start)
            raise

    cls._do = timed_do  # type: ignore[method-assign]
    if seed is not None:
        cls._hypothesis_internal_use_seed = seed  # what @hypothesis.seed sets
    options: dict[str, Any] = {"report_multiple_bugs": False}
    if seed is not None:  # a seeded run is exactly reproducible: no replay of saved examples
        options["database"] = None
    if not shrink:
        options["phases"] = [p for p in settings.phases if p.name != "shrink"]
    divergence, case = None, None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a thread pool's hand-offs cost 10x the work
    try:
        run_state_machine_as_test(cls, settings=Settings(settings, **options))
    except DivergenceFound as found:
        divergence, case = found.divergence, found.case
    finally:
        torch.set_num_threads(threads)
    return RunResult(impl, mode, dtypes, divergence, case, cls.coverage,
                     time.perf_counter() - start, first_failure[0] if first_failure else None)
