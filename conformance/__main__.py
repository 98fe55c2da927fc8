"""`conformance`: check an optimizer against torch.optim.SGD and write a diff report.

    conformance run [--optimizer refimpl|module:Class] [--profile ci|dev|thorough] ...
    conformance replay REPORT.json [--case N]
    conformance mutants [--profile ...]

Exit status: 0 conformant, 1 a divergence was found (or a mutant survived), 2 a usage or
configuration error (with a one-line message saying what to fix).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

USAGE_ERROR, DIVERGED, CONFORMS = 2, 1, 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conformance", description="Checks an optimizer against torch.optim.SGD with "
        "Hypothesis-generated programs and writes a diff report.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the conformance suite and write a report")
    run.add_argument("--optimizer", default="refimpl",
                     help="refimpl (default) or module:Class, a class constructed like "
                          "torch.optim.SGD")
    run.add_argument("--profile", choices=["dev", "ci", "thorough"], default="ci",
                     help="programs per dtype: dev 50, ci 1,000 (default), thorough 25,000")
    run.add_argument("--examples", type=int, help="programs per dtype (overrides --profile)")
    run.add_argument("--seed", type=int,
                     help="Hypothesis seed (default: random, with failures saved in "
                          ".hypothesis/ and replayed first next time)")
    run.add_argument("--dtype", choices=["float32", "float64", "both"], default="both")
    run.add_argument("--mode", choices=["exact", "ulp", "tolerance"],
                     help="how steps are judged (default: exact for refimpl, ulp otherwise)")
    run.add_argument("--report-dir", type=Path, default=Path("reports"),
                     help="where the report directory is written (default: reports/)")
    run.add_argument("--junit", type=Path, help="also write the JUnit XML here")
    run.add_argument("--timeout", type=float, default=10.0,
                     help="seconds one action of the implementation may take (default 10)")
    replay = sub.add_parser("replay", help="re-run a recorded failure and print its first "
                                           "divergence")
    replay.add_argument("report", type=Path, help="a report.json")
    replay.add_argument("--case", type=int, default=1, help="which failure (default 1)")
    mutants = sub.add_parser("mutants", help="run the self-check catalogue, print the kill "
                                             "matrix")
    mutants.add_argument("--profile", choices=["dev", "ci", "thorough"], default="ci")
    mutants.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "replay":
            return _replay(args)
        return _mutants(args)
    except _UsageError as error:
        print(f"conformance: error: {error}", file=sys.stderr)
        return USAGE_ERROR


class _UsageError(Exception):
    pass


def _progress(total: int, label: str) -> Any:
    """A progress bar on a terminal (tqdm), plain lines in CI."""
    from tqdm import tqdm

    if sys.stderr.isatty():
        bar = tqdm(total=total, desc=label, unit="program", leave=False)
        return lambda coverage: bar.update(1) if coverage.programs <= total else None, bar.close
    step = max(1, total // 10)

    def line(coverage: Any) -> None:
        if coverage.programs <= total and coverage.programs % step == 0:
            print(f"{label}: {coverage.programs} programs", file=sys.stderr, flush=True)
    return line, lambda: None


def _run(args: argparse.Namespace) -> int:
    from hypothesis import settings as Settings

    from conformance import report
    from conformance.implementations import ImplementationError, implementation
    from conformance.profiles import PROFILES
    from conformance.runner import run

    try:
        impl = implementation(args.optimizer)
    except ImplementationError as error:
        raise _UsageError(f"--optimizer {args.optimizer}: {error}") from error
    if args.examples is not None and args.examples < 1:
        raise _UsageError("--examples must be at least 1")
    if args.timeout <= 0:
        raise _UsageError("--timeout must be positive")
    settings = PROFILES[args.profile]
    if args.examples is not None:
        settings = Settings(settings, max_examples=args.examples)
    dtypes = ["float32", "float64"] if args.dtype == "both" else [args.dtype]
    mode = args.mode
    results = []
    for dtype in dtypes:
        on_program, close = _progress(settings.max_examples, f"{impl.name} {dtype}")
        try:
            result = run(impl.name, mode=mode, dtypes=(dtype,), settings=settings,
                         seed=args.seed, timeout=args.timeout, on_program=on_program)
        finally:
            close()
        results.append(result)
        verdict = "conforms" if result.passed else f"DIVERGES: {result.divergence}"
        print(f"{impl.name} {dtype}: {result.coverage.programs} programs, "
              f"{result.coverage.actions} actions, {result.seconds:.1f} s: "
              f"{verdict.splitlines()[0]}")
    data = report.build(results, {
        "optimizer": impl.name, "profile": args.profile, "examples": settings.max_examples,
        "seed": args.seed, "mode": mode or impl.default_mode, "dtypes": dtypes,
        "timeout": args.timeout})
    path = report.write(data, args.report_dir)
    if args.junit:
        args.junit.parent.mkdir(parents=True, exist_ok=True)
        args.junit.write_text(report.junit(data))
    print(f"report: {path}/report.md")
    return CONFORMS if data["result"] == "pass" else DIVERGED


def _replay(args: argparse.Namespace) -> int:
    from conformance.implementations import ImplementationError
    from conformance.machine import replay
    from conformance.program import Case

    try:
        data = json.loads(args.report.read_text())
    except (OSError, ValueError) as error:
        raise _UsageError(f"cannot read {args.report}: {error}") from error
    failures = data.get("failures", [])
    if not 1 <= args.case <= len(failures):
        raise _UsageError(f"{args.report} has {len(failures)} failure(s); --case {args.case} "
                          "is not one of them")
    failure = failures[args.case - 1]
    try:
        divergence = replay(Case.from_json(failure["case"]), data["implementation"],
                            data["settings"].get("mode"), data["settings"].get("timeout", 10.0))
    except ImplementationError as error:
        raise _UsageError(str(error)) from error
    if divergence is None:
        print("conforms: the recorded failure no longer reproduces")
        return CONFORMS
    print(divergence)
    return DIVERGED


def _mutants(args: argparse.Namespace) -> int:
    from conformance import mutants
    from conformance.profiles import PROFILES
    from conformance.runner import run

    survived = 0
    print(f"{'mutant':36s} {'kind':9s} {'result':8s} {'time to kill':>12s}  programs")
    for mutant in mutants.OPTIMIZER_MUTANTS + mutants.AUTOGRAD_MUTANTS + \
            mutants.THOROUGH_MUTANTS:
        seconds, programs, killed = 0.0, 0, False
        for dtype in ("float32", "float64"):
            if mutant.kind == "optimizer":
                result = run(mutant.target, dtypes=(dtype,), settings=PROFILES[args.profile],
                             seed=args.seed, shrink=False)
            else:
                with mutants.load(mutant.target)():
                    result = run("refimpl", dtypes=(dtype,), settings=PROFILES[args.profile],
                                 seed=args.seed, shrink=False)
            programs += result.coverage.programs
            if not result.passed:
                seconds += result.seconds_to_failure or 0.0
                killed = True
                break
            seconds += result.seconds
        survived += not killed and mutant not in mutants.THOROUGH_MUTANTS
        when = f"{seconds:.2f} s" if killed else "-"
        print(f"{mutant.name:36s} {mutant.kind:9s} {'killed' if killed else 'SURVIVED':8s} "
              f"{when:>12s}  {programs}", flush=True)
    return DIVERGED if survived else CONFORMS


if __name__ == "__main__":
    sys.exit(main())
