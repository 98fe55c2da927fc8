"""`conformance`: check an optimizer against torch.optim.SGD (or Adam, AdamW) and write a diff
report.

    conformance run [--family sgd|adam|adamw] [--optimizer refimpl|module:Class]
                    [--profile ci|dev|thorough] ...
    conformance replay REPORT.json [--case N]
    conformance mutants [--family ...] [--profile ...]

`run` reads `[tool.sgd-conformance]` from ./pyproject.toml where there is one (keys named as
the long options: family, optimizer, contract, mode, reference-path, without, state-key, dtype,
profile, examples, seed, timeout, max-failures, isolation, memory-limit, jobs, report-dir,
junit);
the command line wins.

Exit status, and no other ever escapes:

* 0: conformant, with every program run (or every mutant killed).
* 1: a divergence was found (or a mutant survived), always with a complete report.
* 2: a usage or configuration error: one line saying what to fix, decided before any program
  runs (bad options or pyproject.toml keys, an unwritable --report-dir or --junit, a
  `module:Class` that does not construct like the family's torch optimizer, a report `replay`
  cannot read, the `[conformance]` extra not installed).
* 3: the harness itself failed, a bug in sgd-conformance and not in the optimizer under test:
  the traceback, then a line asking to file it.
* 130: the user's own interrupt (Ctrl-C) of this process; not a verdict.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tomllib
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from conformance.families import FAMILY_NAMES
from conformance.families import get as get_family
from conformance.options import CONTRACTS, DTYPES, ISOLATIONS, REFERENCE_PATHS

CONFORMS, DIVERGED, USAGE_ERROR, INTERNAL_ERROR, INTERRUPTED = 0, 1, 2, 3, 130
CONFIG_TABLE = "sgd-conformance"
PROFILE_NAMES = ("dev", "ci", "thorough")
MODES = ("exact", "ulp", "tolerance")
# run's options and their defaults, where neither the command line nor pyproject.toml says
RUN_DEFAULTS: dict[str, Any] = {
    "family": "sgd",
    "optimizer": "refimpl",
    "contract": None,
    "mode": None,
    "reference_path": "for-loop",
    "without": "",
    "state_key": "",
    "dtype": "both",
    "profile": "ci",
    "examples": None,
    "seed": None,
    "timeout": 10.0,
    "max_failures": 5,
    "isolation": None,
    "memory_limit": 4096,
    "jobs": None,
    "report_dir": "reports",
    "junit": None,
}
MAX_JOBS = 1024
# Bounds a value must be within to mean anything to the clocks and rlimits it reaches.
MAX_TIMEOUT = 86400.0  # seconds (a day) for one action
MAX_MEMORY_LIMIT = 2**30  # MiB (a PiB)
# What the `[conformance]` extra installs (numpy, the one base dependency, is always there).
EXTRA_MODULES = ("torch", "hypothesis", "tqdm", "matplotlib", "jsonschema")
INSTALL_HINT = (
    "install the suite with pip install 'sgd-conformance[conformance]' (torch==2.13.0 first)"
)
EXIT_STATUSES = (
    "Exit status: 0 conformant, 1 a divergence (with a complete report), 2 a "
    "usage or configuration error (one line, before any program runs), 3 an "
    "internal error of sgd-conformance (please file it), 130 interrupted by you."
)
INTERNAL_ERROR_LINE = (
    "conformance: internal error (a bug in sgd-conformance, not in your "
    "optimizer): please file it with the traceback above"
)


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors (an unknown option, a bad choice, a value of the wrong
    type) in one line; they exit 2 from parse_args, as argparse's own do."""

    def error(self, message: str) -> NoReturn:
        self.exit(
            USAGE_ERROR, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n"
        )


def _features_help() -> str:
    """Each family's features, for --help (where the [conformance] extra is missing, the
    families cannot load: main() says what to install)."""
    try:
        return "; ".join(f"{n}: {', '.join(get_family(n).features)}" for n in FAMILY_NAMES)
    except ImportError:
        return "see conformance.families"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="conformance",
        description="Checks an optimizer against torch.optim.SGD (or Adam, "
        "AdamW) with Hypothesis-generated programs and writes a diff report.",
        epilog=EXIT_STATUSES,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run the conformance suite and write a report",
        description="Checks an optimizer against its family's torch optimizer "
        "(torch.optim.SGD by default). Options may also be set in "
        "./pyproject.toml under [tool.sgd-conformance], keys named as the long "
        "options (the command line wins).",
        epilog=EXIT_STATUSES,
    )
    run.add_argument(
        "--family",
        choices=FAMILY_NAMES,
        help="the optimizer family: sgd (default; torch.optim.SGD), adam "
        "(torch.optim.Adam) or adamw (torch.optim.AdamW)",
    )
    run.add_argument(
        "--optimizer",
        help="refimpl (default: refimpl's optimizer of the family) or "
        "module:Class, a class constructed like the family's torch "
        "optimizer",
    )
    run.add_argument(
        "--contract",
        choices=CONTRACTS,
        help="semantic (default for a module:Class): what user code can observe "
        "(same exception classes, torch's hyperparameters in each group, "
        "no torch code-path artifacts required); strict (default for "
        "refimpl): a drop-in replacement (every group key, torch's messages "
        "word for word, torch's side effects)",
    )
    run.add_argument(
        "--reference-path",
        choices=REFERENCE_PATHS,
        help="which code path of torch's optimizer is the reference (default "
        "for-loop); foreach/fused flags reach the optimizer only where its "
        "constructor names them",
    )
    run.add_argument(
        "--without",
        metavar="FEATURE[,FEATURE...]",
        help="features the optimizer does not claim, never exercised and listed "
        f"as not verified in the report: {_features_help()}",
    )
    run.add_argument(
        "--state-key",
        metavar="[TORCH_KEY=]KEY[,...]",
        help="where the optimizer keeps torch's state entries, if named "
        "differently: TORCH_KEY=KEY pairs (exp_avg=m,exp_avg_sq=v), or one "
        "name for the family's first (SGD's momentum_buffer); default: "
        "torch's names",
    )
    run.add_argument(
        "--profile",
        choices=PROFILE_NAMES,
        help="programs per dtype: dev 50, ci 1,000 (default), thorough 25,000",
    )
    run.add_argument("--examples", type=int, help="programs per dtype (overrides --profile)")
    run.add_argument(
        "--seed",
        type=int,
        help="Hypothesis seed (default: random, with failures saved in "
        ".hypothesis/ and replayed first next time)",
    )
    run.add_argument("--dtype", choices=[*DTYPES, "both"], help="default both")
    run.add_argument(
        "--mode",
        choices=MODES,
        help="how values are judged (default: exact for refimpl, ulp otherwise)",
    )
    run.add_argument(
        "--max-failures",
        type=int,
        help="distinct failures to find and shrink per dtype before stopping (default 5)",
    )
    run.add_argument(
        "--isolation",
        choices=ISOLATIONS,
        help="where the optimizer runs: process (default for a module:Class) "
        "runs it in a worker process, so a crash, a hang or running out "
        "of memory is a reported divergence, not the end of the run; none "
        "(default for refimpl and torch.optim's own classes) runs it in this "
        "process",
    )
    run.add_argument(
        "--memory-limit",
        type=int,
        metavar="MIB",
        help="MiB of address space the worker process may add to what it "
        "started with (default 4096; with --isolation process)",
    )
    run.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="processes the programs are split across (default: every core "
        "this process may use); a seeded run gives the same report for "
        "the same N",
    )
    run.add_argument(
        "--report-dir",
        type=Path,
        help="where the report directory is written (default: reports/; "
        "created where missing, and must be writable)",
    )
    run.add_argument(
        "--junit", type=Path, metavar="FILE", help="also write the JUnit XML to this file"
    )
    run.add_argument(
        "--timeout",
        type=float,
        help="seconds one action of the implementation may take (default 10)",
    )
    replay = sub.add_parser(
        "replay", help="re-run a recorded failure and print its first divergence"
    )
    replay.add_argument("report", type=Path, help="a report.json")
    replay.add_argument("--case", type=int, default=1, help="which failure (default 1)")
    mutants = sub.add_parser("mutants", help="run the self-check catalogue, print the kill matrix")
    mutants.add_argument(
        "--family",
        choices=FAMILY_NAMES,
        default="sgd",
        help="whose catalogue (default sgd; autograd mutants run with sgd)",
    )
    mutants.add_argument("--profile", choices=PROFILE_NAMES, default="ci")
    mutants.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command; its return value is the exit status (see the module docstring). argparse's
    own usage errors (an unknown option, a value of the wrong type) exit 2 from here."""
    args = _parser().parse_args(argv)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": _run,
        "replay": _replay,
        "mutants": _mutants,
    }
    try:
        _check_extra()
        return commands[args.command](args)
    except _UsageError as error:
        print(f"conformance: error: {_one_line(error)}", file=sys.stderr)
        return USAGE_ERROR
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in EXTRA_MODULES:
            return _internal_error()
        print(f"conformance: error: {_not_installed([error.name or ''])}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("conformance: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BaseException:  # a bug of ours: no other status may escape
        return _internal_error()


class _UsageError(Exception):
    pass


def _internal_error() -> int:
    traceback.print_exc()
    print(INTERNAL_ERROR_LINE, file=sys.stderr, flush=True)
    return INTERNAL_ERROR


def _one_line(error: BaseException | str) -> str:
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def _not_installed(modules: list[str]) -> str:
    names = ", ".join(modules)
    return f"{names} {'is' if len(modules) == 1 else 'are'} not installed; {INSTALL_HINT}"


def _check_extra() -> None:
    """The `[conformance]` extra's modules are importable: a cheap look-up, no import."""
    missing = []
    for module in EXTRA_MODULES:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # ValueError: loaded, without a __spec__
            found = module in sys.modules and sys.modules[module] is not None
        if not found:
            missing.append(module)
    if missing:
        raise _UsageError(_not_installed(missing))


def _progress(total: int, label: str) -> Any:
    """A progress bar on a terminal (tqdm), plain lines in CI: `update(programs)` as the
    run's count of programs started grows, and `close()`."""
    from tqdm import tqdm

    if sys.stderr.isatty():
        bar = tqdm(total=total, desc=label, unit="program", leave=False)

        def move(programs: int) -> None:
            if bar.n < programs <= total:
                bar.update(programs - bar.n)

        return move, bar.close
    step, shown = max(1, total // 10), [0]

    def line(programs: int) -> None:
        if programs <= total and programs >= shown[0] + step:
            shown[0] = programs - programs % step
            print(f"{label}: {shown[0]} programs", file=sys.stderr, flush=True)

    return line, lambda: None


def _config(path: Path) -> dict[str, Any]:
    """`[tool.sgd-conformance]` of a pyproject.toml, with keys as run's option names."""
    try:
        table = (
            tomllib.loads(path.read_text(encoding="utf-8")).get("tool", {}).get(CONFIG_TABLE, {})
        )
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise _UsageError(f"cannot read {path}: {error}") from error
    if not isinstance(table, dict):
        raise _UsageError(f"{path}: [tool.{CONFIG_TABLE}] must be a table")
    config = {key.replace("-", "_"): value for key, value in table.items()}
    unknown = sorted(set(config) - set(RUN_DEFAULTS))
    if unknown:
        raise _UsageError(
            f"{path} [tool.{CONFIG_TABLE}]: unknown key(s) "
            f"{', '.join(unknown)}; known: "
            f"{', '.join(k.replace('_', '-') for k in RUN_DEFAULTS)}"
        )
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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _options(values: dict[str, Any], sources: dict[str, str]) -> Any:
    """The run's options, every value checked: a bad one is a usage error before any work."""
    from conformance.options import RunOptions, parse_features, parse_state_keys

    def bad(key: str, why: str) -> _UsageError:
        where = " (from pyproject.toml)" if sources[key] == "pyproject.toml" else ""
        return _UsageError(f"--{key.replace('_', '-')} {why}, got {values[key]!r}{where}")

    choices = {
        "family": FAMILY_NAMES,
        "contract": (None, *CONTRACTS),
        "reference_path": REFERENCE_PATHS,
        "mode": (None, *MODES),
        "dtype": (*DTYPES, "both"),
        "profile": PROFILE_NAMES,
        "isolation": (None, *ISOLATIONS),
    }
    for key, allowed in choices.items():
        if values[key] not in allowed:
            raise bad(key, f"must be one of {', '.join(a for a in allowed if a)}")
    for key in ("examples", "max_failures", "memory_limit", "jobs"):
        value = values[key]
        if value is not None and (not _is_int(value) or value < 1):
            raise bad(key, "must be at least 1")
    if values["jobs"] is not None and values["jobs"] > MAX_JOBS:
        raise bad("jobs", f"must be at most {MAX_JOBS}")
    if values["memory_limit"] > MAX_MEMORY_LIMIT:
        raise bad("memory_limit", f"must be at most {MAX_MEMORY_LIMIT} (MiB)")
    timeout = values["timeout"]
    if (
        not isinstance(timeout, int | float)
        or isinstance(timeout, bool)
        or not 0 < timeout <= MAX_TIMEOUT
    ):
        raise bad("timeout", f"must be a positive number of seconds, at most {MAX_TIMEOUT:g}")
    if values["seed"] is not None and not _is_int(values["seed"]):
        raise bad("seed", "must be an integer")
    if not isinstance(values["optimizer"], str) or not values["optimizer"]:
        raise bad("optimizer", "must be a non-empty string")
    if not isinstance(values["state_key"], str):
        raise bad("state_key", "must be a string")
    try:
        parse_state_keys(values["state_key"], values["family"])
    except ValueError as error:
        raise _UsageError(f"--state-key: {error}") from error
    if not isinstance(values["report_dir"], str | Path) or not str(values["report_dir"]):
        raise bad("report_dir", "must be a directory name")
    if values["junit"] is not None and (
        not isinstance(values["junit"], str | Path) or not str(values["junit"])
    ):
        raise bad("junit", "must be a file name")
    try:
        without = parse_features(values["without"], values["family"])
    except (ValueError, AttributeError, TypeError) as error:
        raise _UsageError(f"--without: {error}") from error
    return RunOptions(
        implementation=values["optimizer"],
        family=values["family"],
        contract=values["contract"],
        mode=values["mode"],
        reference_path=values["reference_path"],
        without=without,
        state_key=values["state_key"],
        timeout=float(timeout),
        isolation=values["isolation"],
        memory_limit=values["memory_limit"],
    )


def _outputs(values: dict[str, Any]) -> tuple[Path, Path | None]:
    """The report directory and the JUnit file, each checked writable by writing and removing
    a probe (the directory is created where missing), before any program runs."""
    from conformance import report

    report_dir = Path(values["report_dir"])
    junit = None if values["junit"] is None else Path(values["junit"])
    try:
        report.check_directory(report_dir)
    except ValueError as error:
        raise _UsageError(f"--report-dir: {error}") from error
    if junit is not None:
        try:
            report.check_file(junit)
        except ValueError as error:
            raise _UsageError(f"--junit: {error}") from error
    return report_dir, junit


def _not_verified(options: Any, dtypes: list[str], sources: dict[str, str]) -> list[dict[str, str]]:
    source = "pyproject.toml" if sources["without"] == "pyproject.toml" else "--without"
    features = options.spec.features
    out = [
        {"feature": f, "description": features[f], "source": source}
        for f in features
        if f in options.without
    ]
    out += [
        {"feature": f, "description": why, "source": "--reference-path"}
        for f, why in options.unsupported.items()
        if f not in options.without
    ]
    out += [
        {"feature": d, "description": f"{d} parameters are not checked", "source": "--dtype"}
        for d in DTYPES
        if d not in dtypes
    ]
    return out


def _run(args: argparse.Namespace) -> int:
    values, sources = _settings(args)
    options = _options(values, sources)
    report_dir, junit = _outputs(values)
    if values["jobs"] != 1:  # the job processes' server imports torch while this one does
        from conformance import processes

        processes.start()
    from hypothesis import settings as Settings

    from conformance import parallel, report
    from conformance.implementations import ImplementationError, implementation
    from conformance.profiles import PROFILES

    try:
        impl = implementation(options)
    except ImplementationError as error:
        raise _UsageError(f"--optimizer {options.implementation}: {error}") from error
    settings = PROFILES[values["profile"]]
    if values["examples"] is not None:
        settings = Settings(settings, max_examples=values["examples"])
    dtypes = list(DTYPES) if values["dtype"] == "both" else [values["dtype"]]
    jobs = values["jobs"] or parallel.cores()
    bars = {dtype: _progress(settings.max_examples, f"{impl.name} {dtype}") for dtype in dtypes}
    try:
        results = parallel.run(
            options,
            dtypes=tuple(dtypes),
            settings=settings,
            seed=values["seed"],
            max_failures=values["max_failures"],
            jobs=jobs,
            on_program=lambda dtype, n: bars[dtype][0](n),
        )
    finally:
        for _, close in bars.values():
            close()
    for dtype, result in zip(dtypes, results, strict=True):
        flaky = sum(getattr(f, "flaky", False) for f in result.failures)
        verdict = (
            "conforms"
            if result.passed
            else f"DIVERGES ({len(result.failures)} distinct failure(s)"
            + (f", {flaky} flaky" if flaky else "")
            + f"); first: {result.divergence}"
        )
        print(
            f"{impl.name} {dtype}: {result.coverage.programs} programs, "
            f"{result.coverage.actions} actions, {result.seconds:.1f} s"
            f"{f' on {jobs} processes' if jobs > 1 else ''}: {verdict.splitlines()[0]}"
        )
    settings_json = {
        **options.to_json(),
        "profile": values["profile"],
        "examples": settings.max_examples,
        "seed": values["seed"],
        "mode": options.mode or impl.default_mode,
        "dtypes": dtypes,
        "max_failures": values["max_failures"],
        "jobs": jobs,
        "config_file": values["config_file"],
    }
    data = report.build(
        results, settings_json, not_verified=_not_verified(options, dtypes, sources)
    )
    path = report.write(data, report_dir)
    if junit is not None:
        junit.write_text(report.junit(data), encoding="utf-8")
    print(f"report: {path}/report.md")
    return CONFORMS if data["result"] == "pass" else DIVERGED


def _replay(args: argparse.Namespace) -> int:
    from conformance import report
    from conformance.implementations import ImplementationError
    from conformance.machine import replay
    from conformance.options import RunOptions
    from conformance.program import Case

    try:
        data = json.loads(args.report.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise _UsageError(f"cannot read {args.report}: {error}") from error
    try:
        report.check_replayable(data)
    except ValueError as error:
        raise _UsageError(f"{args.report}: {error}") from error
    failures = data["failures"]
    if not 1 <= args.case <= len(failures):
        raise _UsageError(
            f"{args.report} has {len(failures)} failure(s); --case {args.case} is not one of them"
        )
    try:
        case = Case.from_json(failures[args.case - 1]["case"])
        options = RunOptions.from_json(data["settings"])
        names = set(case.setup.model.parameter_names())
    except (KeyError, TypeError, ValueError) as error:
        raise _UsageError(
            f"{args.report}: failure {args.case} is not a case this version can replay: {error}"
        ) from error
    unknown = sorted({p for g in case.setup.groups for p in g.params} - names)
    if unknown:
        raise _UsageError(
            f"{args.report}: failure {args.case}'s groups name parameters its "
            f"model lacks: {', '.join(unknown)}"
        )
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
    from conformance.options import RunOptions
    from conformance.profiles import PROFILES
    from conformance.runner import run

    family = get_family(args.family)
    catalogue = family.mutant_optimizers() + (
        mutants.AUTOGRAD_MUTANTS + mutants.THOROUGH_MUTANTS if args.family == "sgd" else ()
    )
    survived = 0
    print(f"{'mutant':36s} {'kind':9s} {'result':8s} {'time to kill':>12s}  programs")
    for mutant in catalogue:
        seconds, programs, killed = 0.0, 0, False
        for dtype in ("float32", "float64"):
            if mutant.kind == "optimizer":
                result = run(
                    RunOptions(mutant.target, family=args.family),
                    dtypes=(dtype,),
                    settings=PROFILES[args.profile],
                    seed=args.seed,
                    shrink=False,
                )
            else:
                with mutants.load(mutant.target)():
                    result = run(
                        "refimpl",
                        dtypes=(dtype,),
                        settings=PROFILES[args.profile],
                        seed=args.seed,
                        shrink=False,
                    )
            programs += result.coverage.programs
            if not result.passed:
                seconds += result.seconds_to_failure or 0.0
                killed = True
                break
            seconds += result.seconds
        survived += not killed and mutant not in mutants.THOROUGH_MUTANTS
        when = f"{seconds:.2f} s" if killed else "-"
        print(
            f"{mutant.name:36s} {mutant.kind:9s} {'killed' if killed else 'SURVIVED':8s} "
            f"{when:>12s}  {programs}",
            flush=True,
        )
    return DIVERGED if survived else CONFORMS


if __name__ == "__main__":
    sys.exit(main())
