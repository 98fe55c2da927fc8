"""`pytest --pyargs conformance` (or `pytest conformance` in a clone): the state machine
against torch, one test per dtype (see conformance.pytest_plugin for the options). The
session's report is written when it ends, from both tests' results."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conformance.profiles import PROFILES
from conformance.pytest_plugin import Config
from conformance.runner import run


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sgd_conformance(conformance_config: Config,
                         conformance_record: Callable[[Any], Path], dtype: str) -> None:
    config = conformance_config
    options = config.options
    result = run(options, dtypes=(dtype,), settings=PROFILES[config.profile], seed=config.seed,
                 max_failures=config.max_failures)
    report_dir = conformance_record(result)
    print(f"{options.implementation} {dtype} ({options.resolved_contract} contract): "
          f"{result.coverage.programs} programs, {result.coverage.actions} actions in "
          f"{result.seconds:.1f} s")
    if options.without:
        print(f"not verified: {', '.join(sorted(options.without))}")
    if result.failures:
        pytest.fail("\n\n".join(
            f"failure {n} ({json.dumps(f.key)})"
            + (" [flaky: did not show again on a re-run]" if getattr(f, "flaky", False)
               else "")
            + f": {f.divergence}\n\nshrunk case (JSON, replay with conformance.machine.replay):"
              f"\n{json.dumps(f.case.to_json())}"
            for n, f in enumerate(result.failures, start=1))
            + f"\n\nreport (written when the session ends): {report_dir}/report.md",
            pytrace=False)
