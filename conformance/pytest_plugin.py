"""pytest plugin (entry point `pytest11`): options for the conformance tests.

    pytest --pyargs conformance --optimizer mypkg.optim:MySGD   # installed, from anywhere
    pytest conformance                                    # in a clone: refimpl, ci profile
    pytest conformance --optimizer mypkg.optim:MySGD --conformance-without maximize,closure
    pytest conformance --conformance-mode tolerance --conformance-profile thorough
    pytest --pyargs conformance -n auto                   # every core (the [xdist] extra)
    pytest --pyargs conformance --tx ssh=me@host//python=/venv/bin/python --tx ...  # hosts

The options are checked once a conformance test is collected, before any program runs: a
bad one ends the session with one line and pytest's usage-error status (4); the report
directory is created where missing and must be writable. When the session ends, the dtypes
that ran get one complete report, the same as `conformance run` writes (report.json, .md,
.html, junit.xml, a repro per failure), in `--conformance-report-dir` (default reports/); a
failing test names it. A session without conformance tests is left alone: nothing is checked,
created or written.

Shards. Each dtype's run is split into `--conformance-shards N` parts, one test item each
(`test_sgd_conformance[float32-shard1of2]`): by default one per pytest-xdist worker (`-n N`,
`-n auto`, or one per `--tx` gateway), and 1 without xdist, which is the whole run as one
item per dtype (`test_sgd_conformance[float32]`). Shard i runs `runner.run(..., shard=(i, N))`:
its share of the budget and of the canonical cases, with a seed derived from the session's
(`runner.shard_seed`), whichever worker or host runs it. Each item's RunResult travels back
with its test report (pickled, base64, as an attribute xdist serialises with the report); the
controlling process — the only one that writes — merges each dtype's shards in shard order
(`runner.merge`) and writes the one report. So a seed and a shard count give the same report
whichever worker ran which shard, in whatever order they finished. Under xdist the options are
checked by the controller as soon as a worker has collected a conformance test.

Nothing here imports hypothesis, torch or xdist at import time: the plugin is registered
wherever the package is installed, with or without its `[conformance]` and `[xdist]` extras.
"""

from __future__ import annotations

import base64
import datetime as _dt
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conformance.__main__ import MAX_MEMORY_LIMIT, MAX_TIMEOUT
from conformance.families import FAMILY_NAMES
from conformance.options import (
    CONTRACTS,
    DTYPES,
    ISOLATIONS,
    REFERENCE_PATHS,
    RunOptions,
    parse_features,
    parse_state_keys,
)

PROFILE_NAMES = ("dev", "ci", "thorough")
TEST_NAME = "test_sgd_conformance"  # the conformance test (conformance/test_conformance.py)
_RESULT_ATTRIBUTE = "sgd_conformance_result"  # a test report's shard result (base64 pickle)
_TARGET_INPUT = "sgd_conformance_report"  # workerinput: where the controller writes the report


@dataclass(frozen=True)
class Config:
    options: RunOptions
    profile: str
    seed: int | None
    max_failures: int
    report_dir: Path = Path("reports")
    shards: int = 1  # parts each dtype's run is split into, one test item each


@dataclass
class _Session:
    """What the conformance tests of one session leave for its report (the controlling
    process's: never a worker's)."""

    created: str  # the report's timestamp, fixed when the first test (or worker) needed a path
    target: Path  # where the report directory will be written
    # (dtype, shard index) -> (shard count, the runner's RunResult of that shard)
    results: dict[tuple[str, int], tuple[int, Any]] = field(default_factory=dict)
    written: Path | None = None


CONFIG = pytest.StashKey[Config]()
SESSION = pytest.StashKey[_Session]()
_RESULT = pytest.StashKey[str]()  # on an item: its encoded shard result, for its report


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance", "conformance against torch.optim.SGD, Adam, AdamW")
    group.addoption(
        "--conformance-family",
        choices=FAMILY_NAMES,
        default="sgd",
        help="the optimizer family: sgd (default), adam or adamw",
    )
    group.addoption(
        "--optimizer",
        default="refimpl",
        help="implementation under test: refimpl (default) or module:Class, a class "
        "constructed like the family's torch optimizer",
    )
    group.addoption(
        "--conformance-contract",
        choices=CONTRACTS,
        default=None,
        help="semantic (default for a module:Class) or strict (default for "
        "refimpl); see conformance.options",
    )
    group.addoption(
        "--conformance-reference-path",
        choices=REFERENCE_PATHS,
        default="for-loop",
        help="torch's code path used as the reference",
    )
    group.addoption(
        "--conformance-without",
        default="",
        help="features the optimizer does not claim (see conformance run --help)",
    )
    group.addoption(
        "--conformance-state-key",
        default="",
        help="where the optimizer keeps torch's state entries, if named "
        "differently: TORCH_KEY=KEY pairs, or one name for the family's "
        "first (default: torch's names)",
    )
    group.addoption(
        "--conformance-mode",
        choices=["exact", "ulp", "tolerance"],
        default=None,
        help="how values are judged: exact (bitwise; refimpl's default), ulp (the "
        "error model's budget; a module:Class's default) or tolerance "
        "(assert_close's defaults, gradients included)",
    )
    group.addoption(
        "--conformance-profile",
        choices=PROFILE_NAMES,
        default="ci",
        help="Hypothesis profile: dev (quick), ci (default), thorough",
    )
    group.addoption(
        "--conformance-seed",
        type=int,
        default=None,
        help="Hypothesis seed (default: random; failures are saved in .hypothesis/)",
    )
    group.addoption(
        "--conformance-timeout",
        type=float,
        default=10.0,
        help="seconds one action of the implementation may take (default 10)",
    )
    group.addoption(
        "--conformance-max-failures",
        type=int,
        default=5,
        help="distinct failures to find and shrink per dtype (default 5)",
    )
    group.addoption(
        "--conformance-isolation",
        choices=ISOLATIONS,
        default=None,
        help="where the optimizer runs: process (default for a module:Class; a "
        "crash, hang or running out of memory is a reported divergence) or "
        "none (default for refimpl and torch.optim's classes: in this process)",
    )
    group.addoption(
        "--conformance-memory-limit",
        type=int,
        default=4096,
        metavar="MIB",
        help="MiB of address space the worker process may add (default 4096)",
    )
    group.addoption(
        "--conformance-report-dir",
        default="reports",
        metavar="DIR",
        help="where the report directory is written when the session ends (default reports/)",
    )
    group.addoption(
        "--conformance-shards",
        type=int,
        default=None,
        metavar="N",
        help="split each dtype's run into N test items, each with its share of "
        "the programs and a seed of its own, merged into one report (default: "
        "one per pytest-xdist worker, 1 without xdist)",
    )


def _worker_input(config: pytest.Config) -> dict[str, Any] | None:
    """What the xdist controller sent this worker; None in the controlling process."""
    return getattr(config, "workerinput", None)


def shard_count(config: pytest.Config) -> int:
    """How many shards each dtype's run is split into: `--conformance-shards` when given
    (a value below 1 counts as 1 here; the option check rejects it), else one per xdist worker
    (as the controller told this worker), else 1. Every worker computes the same count, so
    every worker collects the same items, as xdist requires."""
    explicit: int | None = config.getoption("--conformance-shards")
    if explicit is not None:
        return max(1, explicit)
    workerinput = _worker_input(config)
    if workerinput is not None:
        return max(1, int(workerinput.get("workercount", 1)))
    return 1


def _read_config(config: pytest.Config) -> Config:
    """The options, every value checked; ValueError says what is wrong, in one line."""
    option = config.getoption
    family = option("--conformance-family")
    try:
        without = parse_features(option("--conformance-without"), family)
    except ValueError as error:
        raise ValueError(f"--conformance-without: {error}") from error
    try:
        parse_state_keys(option("--conformance-state-key"), family)
    except ValueError as error:
        raise ValueError(f"--conformance-state-key: {error}") from error
    timeout = option("--conformance-timeout")
    if not 0 < timeout <= MAX_TIMEOUT:
        raise ValueError(
            f"--conformance-timeout must be a positive number of seconds, at "
            f"most {MAX_TIMEOUT:g}, got {timeout!r}"
        )
    for name in ("--conformance-max-failures", "--conformance-memory-limit"):
        if option(name) < 1:
            raise ValueError(f"{name} must be at least 1, got {option(name)!r}")
    if option("--conformance-memory-limit") > MAX_MEMORY_LIMIT:
        raise ValueError(
            f"--conformance-memory-limit must be at most {MAX_MEMORY_LIMIT} "
            f"(MiB), got {option('--conformance-memory-limit')!r}"
        )
    shards = option("--conformance-shards")
    if shards is not None and shards < 1:
        raise ValueError(f"--conformance-shards must be at least 1, got {shards!r}")
    if not option("--optimizer"):
        raise ValueError("--optimizer must not be empty")
    options = RunOptions(
        implementation=option("--optimizer"),
        family=family,
        contract=option("--conformance-contract"),
        mode=option("--conformance-mode"),
        reference_path=option("--conformance-reference-path"),
        without=without,
        state_key=option("--conformance-state-key"),
        timeout=timeout,
        isolation=option("--conformance-isolation"),
        memory_limit=option("--conformance-memory-limit"),
    )
    return Config(
        options,
        option("--conformance-profile"),
        option("--conformance-seed"),
        option("--conformance-max-failures"),
        Path(option("--conformance-report-dir")),
        shard_count(config),
    )


def _is_conformance_test(item: pytest.Item) -> bool:
    return "conformance_config" in getattr(item, "fixturenames", ())


def _check_options(config: pytest.Config) -> None:
    """Checks the options and that the report directory is writable (creating it), keeping
    the result; a usage error ends the session, in one line, before any program runs."""
    if CONFIG in config.stash:
        return
    from conformance import report

    try:
        checked = _read_config(config)
        try:
            report.check_directory(checked.report_dir)
        except ValueError as error:
            raise ValueError(f"--conformance-report-dir: {error}") from error
    except ValueError as error:
        message = " ".join(str(error).split())
        pytest.exit(f"conformance: error: {message}", returncode=pytest.ExitCode.USAGE_ERROR)
    config.stash[CONFIG] = checked


def pytest_collection_finish(session: pytest.Session) -> None:
    """Checks the options once a conformance test is to run (see `_check_options`). An xdist
    worker leaves that to the controller (`pytest_xdist_node_collection_finished`): only the
    controller writes, and only it can end the session cleanly."""
    if _worker_input(session.config) is not None:
        return
    if any(_is_conformance_test(item) for item in session.items):
        _check_options(session.config)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: Sequence[str]) -> None:
    """xdist's controller, as a worker reports what it collected (before any test runs):
    the options are checked here when a conformance test is among them."""
    if any(f"::{TEST_NAME}[" in nodeid or nodeid.endswith(f"::{TEST_NAME}") for nodeid in ids):
        _check_options(node.config)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist's controller, as it starts a worker: tells it where the report will be, so a
    failing test can name it."""
    node.workerinput[_TARGET_INPUT] = str(_session(node.config).target)


def _session(config: pytest.Config) -> _Session:
    """The controlling process's report state, made (and its path fixed) on first use."""
    session = config.stash.get(SESSION, None)
    if session is None:
        from conformance import report

        created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        report_dir = Path(config.getoption("--conformance-report-dir"))
        run_id = report.run_id(created, config.getoption("--optimizer"))
        target, n = report_dir / run_id, 1
        while target.exists():
            n += 1
            target = report_dir / f"{run_id}-{n}"
        session = config.stash[SESSION] = _Session(created, target)
    return session


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
def conformance_record(request: pytest.FixtureRequest) -> Callable[..., Path]:
    """`record(result, shard=(i, n))` keeps a shard of a dtype's RunResult for the
    session's report (it travels with the test's report to the process that writes it) and
    returns the report directory it will be written to when the session ends."""
    node, config = request.node, request.config

    def record(result: Any, shard: tuple[int, int] = (0, 1)) -> Path:
        (dtype,) = result.dtypes
        node.stash[_RESULT] = base64.b64encode(
            pickle.dumps((dtype, shard, result), protocol=pickle.HIGHEST_PROTOCOL)
        ).decode()
        workerinput = _worker_input(config)
        if workerinput is not None and _TARGET_INPUT in workerinput:
            return Path(workerinput[_TARGET_INPUT])
        return _session(config).target

    return record


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attaches a conformance test's shard result to its call report (xdist sends a report's
    extra attributes to the controller with it)."""
    report = yield
    if call.when == "call" and _RESULT in item.stash:
        setattr(report, _RESULT_ATTRIBUTE, item.stash[_RESULT])
    return report


class _Results:
    """Registered in the controlling process only (never in an xdist worker): keeps the shard
    result each test report brings, its own tests' or the workers'."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        encoded = getattr(report, _RESULT_ATTRIBUTE, None)
        if encoded is None:
            return
        dtype, (index, count), result = pickle.loads(base64.b64decode(encoded))
        _session(self.config).results[dtype, index] = (count, result)


def pytest_configure(config: pytest.Config) -> None:
    if _worker_input(config) is None:
        config.pluginmanager.register(_Results(config), "sgd-conformance-results")


def _merged(
    config: Config, results: dict[tuple[str, int], tuple[int, Any]]
) -> tuple[dict[str, Any], dict[str, list[int]], int]:
    """Each dtype's result (its shards merged in shard order), the shards of each dtype that
    did not report (deselected, or their worker was lost), and the shard count."""
    from conformance.runner import merge

    merged: dict[str, Any] = {}
    missing: dict[str, list[int]] = {}
    count = max(c for c, _ in results.values())
    for dtype in DTYPES:
        shards = sorted(
            (index, result) for (d, index), (_, result) in results.items() if d == dtype
        )
        if not shards:
            continue
        parts = [result for _, result in shards]
        merged[dtype] = parts[0] if count == 1 else merge(parts, config.max_failures)
        present = {index for index, _ in shards}
        missing[dtype] = [i for i in range(count) if i not in present]
    return merged, missing, count


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Writes the report of the dtypes that ran (the others are listed as not verified), in
    the controlling process only."""
    if _worker_input(session.config) is not None:
        return
    state = session.config.stash.get(SESSION, None)
    if state is None or not state.results or state.written is not None:
        return
    from conformance import report
    from conformance.implementations import implementation
    from conformance.profiles import PROFILES

    config = session.config.stash.get(CONFIG, None) or _read_config(session.config)
    options = config.options
    merged, missing, count = _merged(config, state.results)
    dtypes = list(merged)
    settings = {
        **options.to_json(),
        "profile": config.profile,
        "examples": PROFILES[config.profile].max_examples,
        "seed": config.seed,
        "mode": options.mode or implementation(options).default_mode,
        "dtypes": dtypes,
        "max_failures": config.max_failures,
        "jobs": count,
        "config_file": None,
    }
    features = options.spec.features
    not_verified = [
        {"feature": f, "description": features[f], "source": "--conformance-without"}
        for f in features
        if f in options.without
    ]
    not_verified += [
        {"feature": f, "description": why, "source": "--conformance-reference-path"}
        for f, why in options.unsupported.items()
        if f not in options.without
    ]
    not_verified += [
        {
            "feature": d,
            "description": f"{d} parameters are not checked",
            "source": "pytest selection",
        }
        for d in DTYPES
        if d not in dtypes
    ]
    not_verified += [
        {
            "feature": d,
            "source": "pytest selection",
            "description": f"{d}: shard(s) {', '.join(str(i + 1) for i in gone)} "
            f"of {count} did not run; their programs are not checked",
        }
        for d, gone in missing.items()
        if gone
    ]
    data = report.build(
        [merged[d] for d in dtypes], settings, state.created, not_verified=not_verified
    )
    state.written = report.write(data, state.target.parent, run_id=state.target.name)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    state = terminalreporter.config.stash.get(SESSION, None)
    if state is not None and state.written is not None:
        terminalreporter.write_line(f"sgd-conformance report: {state.written}/report.md")
