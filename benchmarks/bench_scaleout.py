"""Scale-out, measured: `pytest --pyargs conformance` (refimpl, seed 0, one profile) on one
process, then on N pytest-xdist workers three ways: `-n N`, N execnet popen gateways
(`--tx N*popen`) and N local execnet socket servers (`--tx socket=127.0.0.1:PORT`, each a
`python -m execnet.script.socketserver` started here, in a directory of its own, standing for
a host; they are stopped after the run).

    python benchmarks/bench_scaleout.py [--profile ci] [--workers 2] [--quick]
    python benchmarks/bench_scaleout.py --suite kill-matrix     # the mutants, minutes

Needs the [xdist] extra. Each configuration is one pytest session in a fresh process, with this
file loaded as a pytest plugin (`-p bench_scaleout`) that stamps, in the controlling process,
the session's start, the first test's start, the last test's end and the end of the session's
finish (where the conformance plugin merges the shards and writes the report, and xdist stops
its workers). The table gives, per configuration:

- wall: the whole command, interpreter start to exit;
- startup: process start to the first test (imports, starting the workers, collection);
- tests: first test start to last test end, the part that runs in parallel;
- finish: last test end to exit (merging, the report, stopping the workers);
- CPU: the CPU seconds of the session's processes (controller, workers, socket servers);
- programs: the report's `coverage.programs` (both dtypes), and programs per second of wall
  time, in all and per worker; programs per CPU second (what a worker does with a core of its
  own, whatever else the machine runs); the speed-up in wall time over one process.

The `kill-matrix` suite runs `pytest --pyargs tests.test_kill_matrix -k kills` (the mutants)
from the repository root instead (each socket server's directory holding a copy of tests/, as
a host would hold a checkout), and reports tests rather than programs. Finally the reports of the
N-worker configurations are compared (timings and creation times aside): a seed and a shard
count give one report whichever worker ran which shard.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conformance.report import timeless

ROOT = Path(__file__).resolve().parent.parent
STAMPS = "BENCH_SCALEOUT_STAMPS"  # the file the plugin half writes its time stamps into

# --- the plugin half (loaded into each pytest session with -p bench_scaleout) ----------------

_stamps: dict[str, float] = {}


def _controller(config: Any) -> bool:
    return os.environ.get(STAMPS) is not None and not hasattr(config, "workerinput")


def pytest_sessionstart(session: Any) -> None:
    if _controller(session.config):
        _stamps["session"] = time.time()


def pytest_runtest_logstart(nodeid: str, location: Any) -> None:
    _stamps.setdefault("first_test", time.time())


def pytest_runtest_logreport(report: Any) -> None:
    if report.when == "teardown":
        _stamps["last_test"] = time.time()
    if report.when == "call":
        _stamps["busy"] = _stamps.get("busy", 0.0) + report.duration
        _stamps["tests"] = _stamps.get("tests", 0) + 1


def pytest_unconfigure(config: Any) -> None:
    """After every sessionfinish (the report written, the workers stopped)."""
    if _controller(config):
        _stamps["finished"] = time.time()
        Path(os.environ[STAMPS]).write_text(json.dumps(_stamps))


# --- the benchmark -------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    workers: int
    wall: float
    stamps: dict[str, float]
    start: float  # time.time() at launch
    report: dict[str, Any] | None
    returncode: int
    cpu: float = 0.0  # CPU seconds of the session's processes (and its socket servers)


def _children_cpu() -> float:
    """CPU seconds of this process's finished (waited-for) descendants so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def socket_servers(
    count: int, env: dict[str, str], *, with_tests: bool = False
) -> Iterator[list[str]]:
    """`count` execnet socket servers on 127.0.0.1, each in a temporary directory of its own
    (a stand-in for a host with the package installed, and with a copy of tests/ for the
    kill matrix: a checkout); yields their --tx specs, whose workers start in that directory
    (xdist copies its pytest there, as it does on any host that is not a local popen)."""
    servers: list[subprocess.Popen[bytes]] = []
    specs: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-hosts-") as hosts:
        try:
            for n in range(count):
                home = Path(hosts) / f"host{n + 1}"
                home.mkdir()
                if with_tests:
                    shutil.copytree(
                        ROOT / "tests", home / "tests", ignore=shutil.ignore_patterns("__pycache__")
                    )
                port = _free_port()
                servers.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "execnet.script.socketserver", f"127.0.0.1:{port}"],
                        cwd=home,
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
                _wait_for(port)
                specs.append(f"socket=127.0.0.1:{port}//chdir={home}")
            yield specs
        finally:
            for server in servers:
                server.terminate()
            for server in servers:
                try:
                    server.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()


def _wait_for(port: int, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"no socket server on 127.0.0.1:{port} after {seconds:g} s")
        time.sleep(0.05)


def _session(
    name: str,
    workers: int,
    args: list[str],
    suite_args: list[str],
    cwd: Path,
    env: dict[str, str],
    *,
    report: bool,
) -> Row:
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp:
        stamps, reports = Path(tmp) / "stamps.json", Path(tmp) / "reports"
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "bench_scaleout",
            *suite_args,
            *args,
        ]
        start, cpu = time.time(), _children_cpu()
        done = subprocess.run(
            command + (["--conformance-report-dir", str(reports)] if report else []),
            cwd=cwd,
            env={**env, STAMPS: str(stamps)},
            capture_output=True,
            text=True,
        )
        wall = time.time() - start
        if done.returncode not in (0, 1):
            sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
            raise SystemExit(f"{name}: pytest exited {done.returncode}")
        found = sorted(reports.glob("*/report.json"))
        return Row(
            name,
            workers,
            wall,
            json.loads(stamps.read_text()),
            start,
            json.loads(found[0].read_text()) if found else None,
            done.returncode,
            _children_cpu() - cpu,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--profile",
        choices=["dev", "ci", "thorough"],
        default="ci",
        help="the conformance profile (default ci)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="workers of the distributed configurations (default 2)",
    )
    parser.add_argument("--quick", action="store_true", help="the dev profile")
    parser.add_argument(
        "--suite",
        choices=["conformance", "kill-matrix"],
        default="conformance",
        help="pytest --pyargs conformance (default), or the mutants of "
        "tests/test_kill_matrix.py from the repository root",
    )
    parser.add_argument(
        "--select",
        default="kills",
        metavar="EXPR",
        help="pytest -k expression of the kill-matrix suite (default: kills, every mutant)",
    )
    args = parser.parse_args(argv)
    try:
        import xdist  # noqa: F401
    except ImportError:
        parser.error("needs pytest-xdist: pip install -e '.[xdist]'")
    profile = "dev" if args.quick else args.profile
    n = args.workers
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "benchmarks"), *filter(None, [env.get("PYTHONPATH")]), str(ROOT)]
    )
    conformance = args.suite == "conformance"
    with contextlib.ExitStack() as stack:
        if conformance:
            suite = [
                "--pyargs",
                "conformance",
                "--optimizer",
                "refimpl",
                "--conformance-seed",
                "0",
                "--conformance-profile",
                profile,
            ]
            cwd = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-cwd-")))
        else:  # a module name, not a path: xdist sends a path to a host only under rsync
            suite, cwd = ["--pyargs", "tests.test_kill_matrix", "-k", args.select], ROOT
        print(
            f"pytest {' '.join(suite)}: 1 process, then {n} workers ({os.cpu_count()} cores here)",
            flush=True,
        )
        configurations = [
            ("1 process (no xdist)", 1, ["-p", "no:xdist"]),
            (f"-n {n}", n, ["-n", str(n)]),
            (f"--tx {n}*popen", n, ["--tx", f"{n}*popen", "--dist", "load"]),
        ]
        rows = []
        for name, workers, options in configurations:
            rows.append(_session(name, workers, options, suite, cwd, env, report=conformance))
            _show(rows[-1])
        cpu = _children_cpu()
        with socket_servers(n, env, with_tests=not conformance) as specs:
            tx = [a for spec in specs for a in ("--tx", spec)]
            rows.append(
                _session(
                    f"{n} socket servers",
                    n,
                    [*tx, "--dist", "load"],
                    suite,
                    cwd,
                    env,
                    report=conformance,
                )
            )
        rows[-1].cpu = _children_cpu() - cpu  # the servers ran the workers
        _show(rows[-1])
    print()
    _table(rows, suite=args.suite)
    reports = [timeless(r.report) for r in rows[1:] if r.report is not None]
    if len(reports) > 1:
        same = all(r == reports[0] for r in reports)
        print(
            f"\nthe {n}-worker reports are {'identical' if same else 'DIFFERENT'} "
            f"(creation time and durations aside)"
        )
        if not same:
            return 1
    return 0


def _show(row: Row) -> None:
    print(
        f"  {row.name}: {row.wall:.1f} s, {row.cpu:.1f} CPU s (exit {row.returncode})", flush=True
    )


def _table(rows: list[Row], *, suite: str) -> None:
    what = "programs" if suite == "conformance" else "tests"
    print(
        f"| configuration | workers | wall (s) | startup (s) | tests (s) | finish (s) | "
        f"CPU (s) | {what} | {what}/s | {what}/s per worker | {what} per CPU s | speed-up |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    base = rows[0]
    for row in rows:
        s = row.stamps
        startup = s["first_test"] - row.start
        tests = s["last_test"] - s["first_test"]
        finish = row.start + row.wall - s["last_test"]
        count = (
            row.report["coverage"]["programs"] if row.report is not None else int(s.get("tests", 0))
        )
        rate = count / row.wall
        print(
            f"| {row.name} | {row.workers} | {row.wall:.1f} | {startup:.1f} | {tests:.1f} | "
            f"{finish:.1f} | {row.cpu:.1f} | {count} | {rate:.1f} | "
            f"{rate / row.workers:.1f} | {count / row.cpu:.1f} | "
            f"{base.wall / row.wall:.2f}× |"
        )


if __name__ == "__main__":
    raise SystemExit(main())
