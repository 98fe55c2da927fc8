"""pytest plugin (entry point `pytest11`): options for the conformance tests.

    pytest --pyargs conformance --optimizer mypkg.optim:MySGD   # installed, from anywhere
    pytest conformance                                    # in a clone: refimpl, ci profile
    pytest conformance --optimizer mypkg.optim:MySGD --conformance-without maximize,closure
    pytest conformance --conformance-mode tolerance --conformance-profile thorough

The options are checked once a conformance test is collected, before any program runs: a
bad one ends the session with one line and pytest's usage-error status (4); the report
directory is created where missing and must be writable. When the session ends, the dtypes
that ran get one complete report, the same as `conformance run` writes (report.json, .md,
.html, junit.xml, a repro per failure), in `--conformance-report-dir` (default reports/); a
failing test names it. A session without conformance tests is left alone: nothing is checked,
created or written.

Nothing here imports hypothesis or torch at import time: the plugin is registered wherever the
package is installed, with or without its `[conformance]` extra.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conformance.__main__ import MAX_MEMORY_LIMIT, MAX_TIMEOUT
from conformance.options import (
    CONTRACTS,
    DTYPES,
    FEATURES,
    ISOLATIONS,
    REFERENCE_PATHS,
    RunOptions,
    parse_features,
)

PROFILE_NAMES = ("dev", "ci", "thorough")


@dataclass(frozen=True)
class Config:
    options: RunOptions
    profile: str
    seed: int | None
    max_failures: int
    report_dir: Path = Path("reports")


@dataclass
class _Session:
    """What the conformance tests of one session leave for its report."""

    config: Config
    results: dict[str, Any]  # dtype -> the runner's RunResult
    created: str  # the report's timestamp, fixed when the first test asked for its path
    target: Path  # where the report directory will be written
    written: Path | None = None


CONFIG = pytest.StashKey[Config]()
SESSION = pytest.StashKey[_Session]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance", "SGD conformance against torch.optim.SGD")
    group.addoption("--optimizer", default="refimpl",
                    help="implementation under test: refimpl (default) or module:Class, a class "
                         "constructed like torch.optim.SGD")
    group.addoption("--conformance-contract", choices=CONTRACTS, default=None,
                    help="semantic (default for a module:Class) or strict (default for "
                         "refimpl); see conformance.options")
    group.addoption("--conformance-reference-path", choices=REFERENCE_PATHS,
                    default="for-loop", help="torch's code path used as the reference")
    group.addoption("--conformance-without", default="",
                    help=f"features the optimizer does not claim: {', '.join(FEATURES)}")
    group.addoption("--conformance-state-key", default="momentum_buffer",
                    help="the state key of the momentum buffer")
    group.addoption("--conformance-mode", choices=["exact", "ulp", "tolerance"], default=None,
                    help="how values are judged: exact (bitwise; refimpl's default), ulp (the "
                         "error model's budget; a module:Class's default) or tolerance "
                         "(assert_close's defaults, gradients included)")
    group.addoption("--conformance-profile", choices=PROFILE_NAMES, default="ci",
                    help="Hypothesis profile: dev (quick), ci (default), thorough")
    group.addoption("--conformance-seed", type=int, default=None,
                    help="Hypothesis seed (default: random; failures are saved in .hypothesis/)")
    group.addoption("--conformance-timeout", type=float, default=10.0,
                    help="seconds one action of the implementation may take (default 10)")
    group.addoption("--conformance-max-failures", type=int, default=5,
                    help="distinct failures to find and shrink per dtype (default 5)")
    group.addoption("--conformance-isolation", choices=ISOLATIONS, default=None,
                    help="where the optimizer runs: process (default for a module:Class; a "
                         "crash, hang or running out of memory is a reported divergence) or "
                         "none (default for refimpl and torch.optim:SGD: in this process)")
    group.addoption("--conformance-memory-limit", type=int, default=4096, metavar="MIB",
                    help="MiB of address space the worker process may add (default 4096)")
    group.addoption("--conformance-report-dir", default="reports", metavar="DIR",
                    help="where the report directory is written when the session ends "
                         "(default reports/)")


def _read_config(config: pytest.Config) -> Config:
    """The options, every value checked; ValueError says what is wrong, in one line."""
    option = config.getoption
    try:
        without = parse_features(option("--conformance-without"))
    except ValueError as error:
        raise ValueError(f"--conformance-without: {error}") from error
    timeout = option("--conformance-timeout")
    if not 0 < timeout <= MAX_TIMEOUT:
        raise ValueError(f"--conformance-timeout must be a positive number of seconds, at "
                         f"most {MAX_TIMEOUT:g}, got {timeout!r}")
    for name in ("--conformance-max-failures", "--conformance-memory-limit"):
        if option(name) < 1:
            raise ValueError(f"{name} must be at least 1, got {option(name)!r}")
    if option("--conformance-memory-limit") > MAX_MEMORY_LIMIT:
        raise ValueError(f"--conformance-memory-limit must be at most {MAX_MEMORY_LIMIT} "
                         f"(MiB), got {option('--conformance-memory-limit')!r}")
    if not option("--optimizer") or not option("--conformance-state-key"):
        raise ValueError("--optimizer and --conformance-state-key must not be empty")
    options = RunOptions(implementation=option("--optimizer"),
                         contract=option("--conformance-contract"),
                         mode=option("--conformance-mode"),
                         reference_path=option("--conformance-reference-path"),
                         without=without, state_key=option("--conformance-state-key"),
                         timeout=timeout, isolation=option("--conformance-isolation"),
                         memory_limit=option("--conformance-memory-limit"))
    return Config(options, option("--conformance-profile"), option("--conformance-seed"),
                  option("--conformance-max-failures"),
                  Path(option("--conformance-report-dir")))


def _is_conformance_test(item: pytest.Item) -> bool:
    return "conformance_config" in getattr(item, "fixturenames", ())


def pytest_collection_finish(session: pytest.Session) -> None:
    """Checks the options (and that the report directory is writable) once a conformance
    test is to run: a usage error ends the session before any program runs."""
    if not any(_is_conformance_test(item) for item in session.items):
        return
    from conformance import report

    try:
        config = _read_config(session.config)
        try:
            report.check_directory(config.report_dir)
        except ValueError as error:
            raise ValueError(f"--conformance-report-dir: {error}") from error
    except ValueError as error:
        message = " ".join(str(error).split())
        pytest.exit(f"conformance: error: {message}", returncode=pytest.ExitCode.USAGE_ERROR)
    session.config.stash[CONFIG] = config


@pytest.fixture
def conformance_config(request: pytest.FixtureRequest) -> Config:
    config = request.config.stash.get(CONFIG, None)
    if config is None:  # checked at collection; read again where a plugin skipped that
        try:
            config = _read_config(request.config)
        except ValueError as error:
            raise pytest.UsageError(str(error)) from error
        request.config.stash[CONFIG] = config
    return config


@pytest.fixture
def conformance_record(request: pytest.FixtureRequest, conformance_config: Config
                       ) -> Callable[[Any], Path]:
    """`record(result)` keeps a dtype's RunResult for the session's report and returns the
    report directory it will be written to when the session ends."""
    stash = request.config.stash

    def record(result: Any) -> Path:
        from conformance import report

        session = stash.get(SESSION, None)
        if session is None:
            created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
            run_id = report.run_id(created, conformance_config.options.implementation)
            target, n = conformance_config.report_dir / run_id, 1
            while target.exists():
                n += 1
                target = conformance_config.report_dir / f"{run_id}-{n}"
            session = stash[SESSION] = _Session(conformance_config, {}, created, target)
        for dtype in result.dtypes:
            session.results[dtype] = result
        return session.target
    return record


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Writes the report of the dtypes that ran (the others are listed as not verified)."""
    state = session.config.stash.get(SESSION, None)
    if state is None or not state.results or state.written is not None:
        return
    from conformance import report
    from conformance.implementations import implementation
    from conformance.profiles import PROFILES

    config, options = state.config, state.config.options
    dtypes = [d for d in DTYPES if d in state.results]
    results = list(dict.fromkeys(id(state.results[d]) for d in dtypes))
    by_id = {id(r): r for r in state.results.values()}
    settings = {
        **options.to_json(), "profile": config.profile,
        "examples": PROFILES[config.profile].max_examples, "seed": config.seed,
        "mode": options.mode or implementation(options).default_mode, "dtypes": dtypes,
        "max_failures": config.max_failures, "config_file": None}
    not_verified = [{"feature": f, "description": FEATURES[f],
                     "source": "--conformance-without"}
                    for f in FEATURES if f in options.without]
    not_verified += [{"feature": d, "description": f"{d} parameters are not checked",
                      "source": "pytest selection"} for d in DTYPES if d not in dtypes]
    data = report.build([by_id[i] for i in results], settings, state.created,
                        not_verified=not_verified)
    state.written = report.write(data, state.target.parent, run_id=state.target.name)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    state = terminalreporter.config.stash.get(SESSION, None)
    if state is not None and state.written is not None:
        terminalreporter.write_line(f"sgd-conformance report: {state.written}/report.md")
