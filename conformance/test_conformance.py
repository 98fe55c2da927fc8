"""`pytest --pyargs conformance` (or `pytest conformance` in a clone): the state machine
against torch, one test per dtype and shard (see conformance.pytest_plugin for the options and
the shards: without pytest-xdist, one shard, so one test per dtype). The session's report is
written when it ends, from every test's result, by the process that controls the session."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from conformance.options import DTYPES
from conformance.profiles import PROFILES
from conformance.pytest_plugin import TEST_NAME, Config, shard_count
from conformance.runner import run


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Each dtype, split into `shard_count` shards: `test_sgd_conformance[float32]` when there
    is one, `test_sgd_conformance[float32-shard1of2]` ... when there are more."""
    if metafunc.function.__name__ != TEST_NAME:
        return
    count = shard_count(metafunc.config)
    params = [(dtype, (index, count)) for dtype in DTYPES for index in range(count)]
    ids = [
        dtype if count == 1 else f"{dtype}-shard{index + 1}of{count}"
        for dtype, (index, _) in params
    ]
    metafunc.parametrize(("dtype", "shard"), params, ids=ids)


def test_sgd_conformance(
    conformance_config: Config,
    conformance_record: Callable[..., Path],
    dtype: str,
    shard: tuple[int, int],
) -> None:
    config = conformance_config
    options = config.options
    result = run(
        options,
        dtypes=(dtype,),
        settings=PROFILES[config.profile],
        seed=config.seed,
        max_failures=config.max_failures,
        shard=shard,
    )
    report_dir = conformance_record(result, shard)
    part = f", shard {shard[0] + 1} of {shard[1]}" if shard[1] > 1 else ""
    print(
        f"{options.implementation} {dtype}{part} ({options.resolved_contract} contract): "
        f"{result.coverage.programs} programs, {result.coverage.actions} actions in "
        f"{result.seconds:.1f} s"
    )
    if options.without:
        print(f"not verified: {', '.join(sorted(options.without))}")
    if result.failures:
        pytest.fail(
            "\n\n".join(
                f"failure {n} ({json.dumps(f.key)})"
                + (" [flaky: did not show again on a re-run]" if getattr(f, "flaky", False) else "")
                + f": {f.divergence}\n\nshrunk case (JSON, replay with conformance.machine.replay):"
                f"\n{json.dumps(f.case.to_json())}"
                for n, f in enumerate(result.failures, start=1)
            )
            + f"\n\nreport (written when the session ends): {report_dir}/report.md",
            pytrace=False,
        )
