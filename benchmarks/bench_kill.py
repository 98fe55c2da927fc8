"""Kill speed: how soon each wrong optimizer and wrong derivative rule is found.

    .venv/bin/python benchmarks/bench_kill.py [--family sgd|adam|adamw]
        [--profile dev|ci|thorough] [--seeds 0,1,2] [--only NAME,...] [--no-shrink]

For every mutant of the family's catalogue (SGD: `conformance.mutants`, with the wrong
derivative rules; Adam and AdamW: `conformance.adam_mutants`) and every realistic bug kept out
of it (`tests/outside_catalogue.py`, `tests/outside_catalogue_adam.py`), per seed: the dtypes
are tried in order, float32 then float64, as `pytest conformance` runs them, until one fails.
Printed per mutant (the worst seed): the programs run before the first failing one showed
(`found_after_programs`, added up over the dtypes tried, and in the dtype that failed), the
seconds until then (`found_after_seconds`), and the seconds to the shrunk report (the whole
run of the failing dtype, shrinking and the report's replay included, plus the dtypes tried
before it). Then the median and the worst, and the mutants that survived some seed.
Runs one process, one job (`runner.run`), on whatever this machine has.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conformance import families, mutants
from conformance.options import RunOptions
from conformance.profiles import PROFILES
from conformance.runner import run
from tests.outside_catalogue import OUTSIDE_CATALOGUE
from tests.outside_catalogue_adam import OUTSIDE_ADAM


@dataclass
class Kill:
    name: str
    seed: int
    killed: bool
    programs: int  # found_after_programs, over the dtypes tried
    in_dtype: int  # found_after_programs in the dtype that failed
    found_seconds: float  # found_after_seconds, over the dtypes tried
    report_seconds: float  # to the shrunk report
    dtype: str | None
    first: str


def kill(
    name: str, target: str, kind: str, profile: str, seed: int, shrink: bool, family: str
) -> Kill:
    programs, seconds = 0, 0.0
    for dtype in ("float32", "float64"):
        context = mutants.load(target)() if kind == "autograd" else nullcontext()
        start = time.perf_counter()
        with context:
            result = run(
                RunOptions("refimpl" if kind == "autograd" else target, family=family),
                dtypes=(dtype,),
                settings=PROFILES[profile],
                seed=seed,
                shrink=shrink,
            )
        elapsed = time.perf_counter() - start
        if result.failures:
            failure = result.failures[0]
            return Kill(
                name,
                seed,
                True,
                programs + failure.found_after_programs,
                failure.found_after_programs,
                seconds + failure.found_after_seconds,
                seconds + elapsed,
                dtype,
                str(failure.divergence).splitlines()[0][:90],
            )
        programs += result.coverage.programs
        seconds += elapsed
    return Kill(name, seed, False, programs, programs, seconds, seconds, None, "survived")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="sgd", choices=families.FAMILY_NAMES)
    parser.add_argument("--profile", default="dev", choices=sorted(PROFILES))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--only", default="")
    parser.add_argument("--no-shrink", action="store_true")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    table = [(m.name, m.target, m.kind) for m in families.get(args.family).mutant_optimizers()]
    if args.family == "sgd":
        table += [(m.name, m.target, m.kind) for m in mutants.AUTOGRAD_MUTANTS]
        table += [(t.split(":")[1], t, "outside") for t in OUTSIDE_CATALOGUE]
    table += [(name, t, "outside") for name, t, family in OUTSIDE_ADAM if family == args.family]
    if args.only:
        table = [row for row in table if row[0] in args.only.split(",")]
    worst: list[Kill] = []
    print(
        f"family {args.family}, profile {args.profile}, seeds {seeds}, shrink {not args.no_shrink}"
    )
    print(
        f"{'mutant':34} {'kind':9} {'programs':>8} {'in dtype':>8} {'found s':>8} "
        f"{'report s':>8}  "
        f"dtype    first divergence (worst seed)"
    )
    for name, target, kind in table:
        kills = [
            kill(
                name,
                target,
                kind if kind != "outside" else "optimizer",
                args.profile,
                seed,
                not args.no_shrink,
                args.family,
            )
            for seed in seeds
        ]
        bad = max(kills, key=lambda k: (not k.killed, k.report_seconds))
        worst.append(bad)
        survived = [k.seed for k in kills if not k.killed]
        print(
            f"{name:34} {kind:9} {bad.programs:8} {bad.in_dtype:8} {bad.found_seconds:8.2f} "
            f"{bad.report_seconds:8.2f}  {bad.dtype or '-':8} "
            f"{'SURVIVED seeds ' + str(survived) if survived else bad.first}",
            flush=True,
        )
    killed = [k for k in worst if k.killed]
    if killed:
        print(
            f"\nkilled {len(killed)}/{len(worst)} at every seed; worst seed per mutant: "
            f"median {statistics.median(k.report_seconds for k in killed):.2f} s to a "
            f"shrunk report (max {max(k.report_seconds for k in killed):.2f} s), median "
            f"{statistics.median(k.programs for k in killed):.0f} programs to the first "
            f"failure (max {max(k.programs for k in killed)}); within the first 50 programs "
            f"of the dtype that failed: {sum(k.in_dtype <= 50 for k in killed)}/{len(worst)}"
        )
    return 0 if len(killed) == len(worst) else 1


if __name__ == "__main__":
    raise SystemExit(main())
