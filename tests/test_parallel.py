"""`--jobs N` (conformance.parallel): the shards of a run add up to the run, and a seeded run
gives the same report for the same N, whichever process finished first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import settings as Settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from conformance import canonical, parallel, report, runner
from conformance.__main__ import main
from conformance.options import RunOptions
from conformance.profiles import PROFILES


@given(st.integers(0, 10_000), st.integers(1, 64))
def test_the_shares_add_up_to_the_budget(total: int, count: int) -> None:
    shares = [runner.share(total, (i, count)) for i in range(count)]
    assert sum(shares) == total and max(shares) - min(shares) <= 1


def test_shard_zero_keeps_the_seed_and_the_others_differ() -> None:
    seeds = [runner.shard_seed(5, (i, 4)) for i in range(4)]
    assert seeds[0] == 5 and len(set(seeds)) == 4
    assert runner.shard_seed(None, (2, 4)) is None


def test_two_jobs_run_the_whole_budget_of_each_dtype() -> None:
    options = RunOptions("refimpl")
    results = parallel.run(
        options,
        dtypes=("float32", "float64"),
        settings=PROFILES["dev"],
        seed=3,
        max_failures=1,
        jobs=2,
    )
    cases = len(canonical.cases("float32", options))
    for dtype, result in zip(("float32", "float64"), results, strict=True):
        assert result.passed and result.dtypes == (dtype,)
        assert result.coverage.programs >= PROFILES["dev"].max_examples + cases
        assert set(result.coverage.dtypes) == {dtype}


def _report(tmp_path: Path, name: str, *args: str) -> dict[str, Any]:
    out = tmp_path / name
    code = main(["run", *args, "--report-dir", str(out)])
    (directory,) = out.iterdir()
    data = report.timeless(json.loads((directory / "report.json").read_text()))
    data["exit"] = code
    return data


def test_the_same_seed_and_jobs_give_the_same_report(tmp_path: Path) -> None:
    """A wrong derivative rule, found by drawn programs (not a canonical case) in some shard."""
    args = [
        "--optimizer",
        "tests.outside_catalogue:DefaultsLr",
        "--isolation",
        "none",
        "--profile",
        "dev",
        "--seed",
        "11",
        "--jobs",
        "2",
        "--max-failures",
        "3",
    ]
    first, second = _report(tmp_path, "a", *args), _report(tmp_path, "b", *args)
    assert first["exit"] == 1 and first["failures"]
    assert first == second
    assert first["settings"]["jobs"] == 2


def test_an_unseeded_run_shares_one_example_database(tmp_path: Path) -> None:
    """Each shard saves to and replays from the one database of the run's settings (by
    default the working directory's `.hypothesis/`), not a copy of its own."""
    database = DirectoryBasedExampleDatabase(tmp_path / "examples")
    explore = Settings(PROFILES["dev"], derandomize=False, database=database)
    results = parallel.run(
        RunOptions("refimpl"),
        dtypes=("float32",),
        settings=explore,
        seed=None,
        max_failures=1,
        jobs=2,
    )
    assert results[0].passed
    assert any((tmp_path / "examples").iterdir())
