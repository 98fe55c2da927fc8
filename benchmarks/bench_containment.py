"""Containment, measured: what each hostile implementation (tests/hostile.py) makes of
`conformance run`, and what process isolation costs per action.

    python benchmarks/bench_containment.py [--profile ci] [--timeout 10] [--quick]

1. For each hostile case, `python -m conformance run --optimizer tests.hostile:<Case>` runs in
   a process of its own (both dtypes, the given profile and timeout, seed 0): its exit
   status, its wall time and the first line of the report it wrote (report.md's first failure)
   go into a Markdown table.
2. The cost of isolation: a correct optimizer written from the documentation
   (conformance.references:MinimalSGD) runs the same seeded programs with `--isolation none`
   and `--isolation process` (float32, the given profile); the table gives the seconds per
   action of each and the difference. Each is the fastest of 3 runs (1 with --quick), run in
   this process one after another.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.hostile import HOSTILE  # noqa: E402


def hostile_table(profile: str, timeout: str) -> None:
    print(f"| case | exit | wall (s) | report's first failure ({profile}, timeout {timeout} s) |")
    print("| --- | --- | --- | --- |")
    for name in HOSTILE:
        with tempfile.TemporaryDirectory() as reports:
            start = time.perf_counter()
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "conformance",
                    "run",
                    "--optimizer",
                    f"tests.hostile:{name}",
                    "--profile",
                    profile,
                    "--seed",
                    "0",
                    "--timeout",
                    timeout,
                    "--report-dir",
                    reports,
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            wall = time.perf_counter() - start
            found = sorted(Path(reports).glob("*/report.json"))
            first = "(no report)"
            if found:
                failures = json.loads(found[0].read_text())["failures"]
                first = (
                    failures[0]["summary"]
                    if failures and "summary" in failures[0]
                    else _first_line(found[0].with_name("report.md"))
                )
        print(
            f"| {name} | {done.returncode} | {wall:.1f} | {first.replace('|', '/')} |", flush=True
        )


def _first_line(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("First:") or line.startswith("**First"):
            return line[:240]
    return "(report without a first failure)"


def isolation_cost(profile: str, rounds: int) -> None:
    from conformance.options import RunOptions
    from conformance.profiles import PROFILES
    from conformance.runner import run

    print("\n| isolation | programs | actions | seconds | ms per action |")
    print("| --- | --- | --- | --- | --- |")
    per_action = {}
    for isolation in ("none", "process"):
        best = None
        for _ in range(rounds):
            result = run(
                RunOptions("conformance.references:MinimalSGD", isolation=isolation),
                dtypes=("float32",),
                settings=PROFILES[profile],
                seed=0,
            )
            assert result.passed, result.divergence
            if best is None or result.seconds < best.seconds:
                best = result
        assert best is not None
        per_action[isolation] = best.seconds / best.coverage.actions * 1e3
        print(
            f"| {isolation} | {best.coverage.programs} | {best.coverage.actions} | "
            f"{best.seconds:.1f} | {per_action[isolation]:.2f} |",
            flush=True,
        )
    extra = per_action["process"] - per_action["none"]
    print(
        f"\nisolation adds {extra:.2f} ms per action "
        f"({per_action['process'] / per_action['none']:.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="ci", choices=["dev", "ci", "thorough"])
    parser.add_argument("--timeout", default="10")
    parser.add_argument("--quick", action="store_true", help="one round of the cost runs")
    args = parser.parse_args()
    hostile_table(args.profile, args.timeout)
    isolation_cost(args.profile, 1 if args.quick else 3)


if __name__ == "__main__":
    main()
