"""Shared pytest configuration: Hypothesis profiles and the ULP table printed at the end."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import settings

settings.register_profile("dev", max_examples=10)
# CI replays the same examples every run (a red CI is always reproducible); local runs
# (HYPOTHESIS_PROFILE=explore) draw fresh ones to find new failures.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True, scope="session")
def _same_draws_in_every_process() -> Iterator[None]:
    """Hypothesis mixes the literals of the local modules a process has loaded into what it
    draws; under pytest-xdist each worker has loaded different ones, so a derandomized test
    would draw differently depending on where it ran. Every test draws without them, as a
    conformance run does (`conformance.runner.without_local_constants`)."""
    from conformance.runner import without_local_constants

    with without_local_constants():
        yield


def pytest_terminal_summary(terminalreporter: Any) -> None:
    _kill_matrix(terminalreporter)
    module = sys.modules.get("tests.test_ops")
    table = getattr(module, "ULP_TABLE", None)
    if not table:
        return
    from refimpl.ops import OPS

    budgets = {case.name: case.budget for case in module.CASES}
    terminalreporter.section("largest ULP error vs torch (case, dtype: forward / grads; budget)")
    for name in dict.fromkeys(key[0] for key in table):
        cells = []
        for dtype in ("float32", "float64"):
            fwd = table.get((name, dtype, "forward"))
            grad = table.get((name, dtype, "grad"))
            cells.append(f"{dtype} {_fmt(fwd)} / {_fmt(grad)}")
        terminalreporter.write_line(f"{name:26s} {'   '.join(cells)}   budget {budgets[name]}")
    del OPS


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if value else "0"


KILL_MATRIX: dict[str, tuple[bool, float | None, int]] = {}  # name -> killed, seconds, programs


def pytest_runtest_logreport(report: Any) -> None:
    """Collects the kill matrix from the tests' recorded properties (under pytest-xdist, from
    the workers' reports)."""
    for name, value in getattr(report, "user_properties", ()):
        if name == "kill_matrix" and report.when == "call":
            mutant, killed, seconds, programs = value
            KILL_MATRIX[mutant] = (killed, seconds, programs)


def _kill_matrix(terminalreporter: Any) -> None:
    if not KILL_MATRIX:
        return
    terminalreporter.section("kill matrix (ci profile, seed 0): mutant, killed, time to kill")
    for name, (killed, seconds, programs) in KILL_MATRIX.items():
        when = f"{seconds:.2f} s" if seconds is not None else "-"
        terminalreporter.write_line(
            f"{name:36s} {'killed' if killed else 'SURVIVED':9s} {when:>9s}  ({programs} programs)"
        )
