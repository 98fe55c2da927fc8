"""`conformance`: check an optimizer against torch.optim.SGD and write a diff report.

    conformance run [--optimizer refimpl|module:Class] [--profile ci|dev|thorough] ...
    conformance replay REPORT.json [--case N]
    conformance mutants [--profile ...]

`run` reads `[tool.sgd-conformance]` from ./pyproject.toml where there is one (keys named as
the long options: optimizer, contract, mode, reference-path, without, state-key, dtype,
profile, examples, seed, timeout, max-failures); the command line wins.

Exit status: 0 conformant, 1 a divergence was found (or a mutant survived), 2 a usage or
configuration error (with a one-line message saying what to fix).
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

from conformance.options import CONTRACTS, DTYPES, FEATURES, REFERENCE_PATHS

USAGE_ERROR, DIVERGED, CONFORMS = 2, 1, 0
CONFIG_TABLE = "sgd-conformance"
# run's options and their defaults, where neither the command line nor pyproject.toml says
RUN_DEFAULTS: dict[str, Any] = {
    "optimizer": "refimpl", "contract": None, "mode": None, "reference_path": "for-loop",
    "without": "", "state_key": "momentum_buffer", "dtype": "both", "profile": "ci",
    "examples": None, "seed": None, "timeout": 10.0, "max_failures": 5,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conformance", description="Checks an optimizer against torch.optim.SGD with "
        "Hypothesis-generated programs and writes a diff report.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="run the conformance suite and write a report",
        description="Checks an optimizer against torch.optim.SGD. Options may also be set in "
                    "./pyproject.toml under [tool.sgd-conformance] (the command line wins).")
    run.add_argument("--optimizer",
                     help="refimpl (default) or module:Class, a class constructed like "
                          "torch.optim.SGD")
    run.add_argument("--contract", choices=CONTRACTS,
                     help="semantic (default for a module:Class): what user code can observe "
                          "(same exception classes, torch's hyperparameters in each group, "
                          "no torch code-path artifacts required); strict (default for "
                          "refimpl): a drop-in replacement (every group key, torch's messages "
                          "word for word, torch's side effects)")
    run.add_argument("--reference-path", choices=REFERENCE_PATHS,
                     help="which torch.optim.SGD code path is the reference (default "
                          "for-loop); foreach/fused flags reach the optimizer only where its "
                          "constructor names them")
    run.add_argument("--without", metavar="FEATURE[,FEATURE...]",
                     help="features the optimizer does not claim, never exercised and listed "
                          f"as not verified in the report: {', '.join(FEATURES)}")
    run.add_argument("--state-key", metavar="NAME",
                     help="the state key of the momentum buffer (default momentum_buffer)")
    run.add_argument("--profile", choices=["dev", "ci", "thorough"],
                     help="programs per dtype: dev 50, ci 1,000 (default), thorough 25,000")
    run.add_argument("--examples", type=int, help="programs per dtype (overrides --profile)")
    run.add_argument("--seed", type=int,
                     help="Hypothesis seed (default: random, with failures saved in "
                          ".hypothesis/ and replayed first next time)")
    run.add_argument("--dtype", choices=[*DTYPES, "both"], help="default both")
    run.add_argument("--mode", choices=["exact", "ulp", "tolerance"],
                     help="how values are judged (default: exact for refimpl, ulp otherwise)")
    run.add_argument("--max-failures", type=int,
                     help="distinct failures to find and shrink per dtype before stopping "
                          "(default 5)")
    run.add_argument("--report-dir", type=Path, default=Path("reports"),
                     help="where the report directory is written (default: reports/)")
    run.add_argument("--junit", type=Path, help="also write the JUnit XML here")
    run.add_argument("--timeout", type=float,
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
        return lambda programs: bar.update(1) if programs <= total else None, bar.close
    step = max(1, total // 10)

    def line(programs: int) -> None:
        if programs <= total and programs % step == 0:
            print(f"{label}: {programs} programs", file=sys.stderr, flush=True)
    return line, lambda: None


def _config(path: Path) -> dict[str, Any]:
    """`[tool.sgd-conformance]` of a pyproject.toml, with keys as run's option names."""
    try:
        table = tomllib.loads(path.read_text()).get("tool", {}).get(CONFIG_TABLE, {})
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise _UsageError(f"cannot read {path}: {error}") from error
    config = {key.replace("-", "_"): value for key, value in table.items()}
    unknown = sorted(set(config) - set(RUN_DEFAULTS))
    if unknown:
        raise _UsageError(f"{path} [tool.{CONFIG_TABLE}]: unknown key(s) "
                          f"{', '.join(unknown)}")
    return config


def _settings(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    """Each run option from the command line, else pyproject.toml, else its default; and
    where each came from."""
    config_path = Path("pyproject.toml")
    config = _config(config_path) if config_path.is_file() else {}
    values, sources = {}, {}
    for key, default in RUN_DEFAULTS.items():
        given = getattr(args, key)
        if given is not None:
            values[key], sources[key] = given, "command line"
        elif key in config:
            values[key], sources[key] = config[key], "pyproject.toml"
        else:
            values[key], sources[key] = default, "default"
    values["config_file"] = str(config_path.resolve()) if config else None
    return values, sources


def _options(values: dict[str, Any], sources: dict[str, str]) -> Any:
    """The run's options, every value checked: a bad one is a usage error before any work."""
    from conformance.options import RunOptions, parse_features

    choices = {"contract": (None, *CONTRACTS), "reference_path": REFERENCE_PATHS,
               "mode": (None, "exact", "ulp", "tolerance"), "dtype": (*DTYPES, "both"),
               "profile": ("dev", "ci", "thorough")}
    for key, allowed in choices.items():
        if values[key] not in allowed:
            raise _UsageError(f"{key.replace('_', '-')} must be one of "
                              f"{', '.join(a for a in allowed if a)}, got {values[key]!r} "
                              f"(from {sources[key]})")
    for key, low in (("examples", 1), ("max_failures", 1)):
        value = values[key]
        if value is not None and (not isinstance(value, int) or value < low):
            raise _UsageError(f"--{key.replace('_', '-')} must be at least {low}")
    timeout = values["timeout"]
    if not isinstance(timeout, int | float) or not 0 < timeout < float("inf"):
        raise _UsageError(f"--timeout must be a positive number of seconds, got {timeout!r}")
    if values["seed"] is not None and not isinstance(values["seed"], int):
        raise _UsageError(f"--seed must be an integer, got {values['seed']!r}")
    if not isinstance(values["optimizer"], str) or not isinstance(values["state_key"], str) \
            or not values["state_key"]:
        raise _UsageError("--optimizer and --state-key must be non-empty strings")
    try:
        without = parse_features(values["without"])
    except (ValueError, AttributeError, TypeError) as error:
        raise _UsageError(f"--without: {error}") from error
    return RunOptions(implementation=values["optimizer"], contract=values["contract"],
                      mode=values["mode"], reference_path=values["reference_path"],
                      without=without, state_key=values["state_key"],
                      timeout=float(timeout))


def _not_verified(options: Any, dtypes: list[str], sources: dict[str, str]
                  ) -> list[dict[str, str]]:
    source = "pyproject.toml" if sources["without"] == "pyproject.toml" else "--without"
    out = [{"feature": f, "description": FEATURES[f], "source": source}
           for f in FEATURES if f in options.without]
    out += [{"feature": d, "description": f"{d} parameters are not checked",
             "source": "--dtype"} for d in DTYPES if d not in dtypes]
    return out


def _run(args: argparse.Namespace) -> int:
    from hypothesis import settings as Settings

    from conformance import report
    from conformance.implementations import ImplementationError, implementation
    from conformance.profiles import PROFILES
    from conformance.runner import run

    values, sources = _settings(args)
    options = _options(values, sources)
    try:
        impl = implementation(options)
    except ImplementationError as error:
        raise _UsageError(f"--optimizer {options.implementation}: {error}") from error
    settings = PROFILES[values["profile"]]
    if values["examples"] is not None:
        settings = Settings(settings, max_examples=values["examples"])
    dtypes = list(DTYPES) if values["dtype"] == "both" else [values["dtype"]]
    results = []
    for dtype in dtypes:
        on_program, close = _progress(settings.max_examples, f"{impl.name} {dtype}")
        try:
            result = run(options, dtypes=(dtype,), settings=settings, seed=values["seed"],
                         max_failures=values["max_failures"], on_program=on_program)
        finally:
            close()
        results.append(result)
        verdict = "conforms" if result.passed else \
            f"DIVERGES ({len(result.failures)} distinct failure(s)); first: {result.divergence}"
        print(f"{impl.name} {dtype}: {result.coverage.programs} programs, "
              f"{result.coverage.actions} actions, {result.seconds:.1f} s: "
              f"{verdict.splitlines()[0]}")
    settings_json = {
        **options.to_json(), "profile": values["profile"],
        "examples": settings.max_examples, "seed": values["seed"],
        "mode": options.mode or impl.default_mode, "dtypes": dtypes,
        "max_failures": values["max_failures"], "config_file": values["config_file"]}
    data = report.build(results, settings_json,
                        not_verified=_not_verified(options, dtypes, sources))
    path = report.write(data, args.report_dir)
    if args.junit:
        args.junit.parent.mkdir(parents=True, exist_ok=True)
        args.junit.write_text(report.junit(data))
    print(f"report: {path}/report.md")
    return CONFORMS if data["result"] == "pass" else DIVERGED


def _replay(args: argparse.Namespace) -> int:
    from conformance.implementations import ImplementationError
    from conformance.machine import replay
    from conformance.options import RunOptions
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
        case = Case.from_json(failure["case"])
        options = RunOptions.from_json(data["settings"])
    except (KeyError, TypeError, ValueError) as error:
        raise _UsageError(f"{args.report} is not a report of this version: {error}") from error
    try:
        divergence = replay(case, options)
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
