"""The implementation under test in a worker process, so that nothing it does can end a run.

A `module:Class` is imported, checked and driven in a worker process (`multiprocessing`'s
forkserver: the server imports torch and the harness once, and each worker forks from it in
milliseconds). The reference, Hypothesis and the comparisons stay in the harness's process.
One request per action: the worker synchronises its state from torch's, runs the action,
observes, and sends back numpy arrays and plain values only (the harness never unpickles an
object of the implementation's, so never imports its module).

What the worker can do and what the harness makes of it (each is a divergence, and the worker
is started afresh for the next program):
- exits (`os._exit`, `sys.exit` past the harness) or dies of a signal (a segfault, an abort,
  the kernel's OOM killer): "exited with status 0 during step()", "killed by SIGSEGV";
- hangs where Python cannot interrupt it (a C call): no answer within the per-action timeout
  plus `GRACE`, the worker is killed: "no answer after 2 s". A hang Python can interrupt is
  ended by the worker's own SIGALRM, with the traceback of where it was;
- exhausts its memory limit (RLIMIT_AS: what it started with plus `--memory-limit` MiB): the
  allocation fails with MemoryError, or the process dies, and the worker is restarted;
- returns something that cannot be sent back (a state dict holding an unpicklable object).

After a hang the worker's timeout shrinks (`SHORT_TIMEOUT`, or 4x the slowest answer so far
when that is longer) so that shrinking a hanging program does not pay the full timeout on
every attempt; the state machine also bounds how many such attempts a round makes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import torch

from conformance import families
from conformance.implementations import (
    ImplementationError,
    Observation,
    Outcome,
    Side,
    Step,
    TorchOptimizerImplementation,
    _run,
)
from conformance.options import RunOptions
from conformance.oracle import Mode
from conformance.processes import context
from conformance.program import Action, Setup

GRACE = 0.5  # seconds past the timeout before a worker that does not answer is killed
SHORT_TIMEOUT = 0.5  # the timeout after a hang (or 4x the slowest answer, when longer)


class Lost(Exception):
    """The worker gave no answer: it exited, died of a signal, did not answer in time, or
    sent something that cannot be received. The message says which, and during what."""


class HarnessError(RuntimeError):
    """The harness's own code failed in the worker (a bug of ours, not the implementation's)."""


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class Worker:
    """One worker process for one implementation, started when first needed and again after
    it was lost."""

    def __init__(self, options: RunOptions) -> None:
        self.options = options
        self.process: Any = None
        self.conn: Connection | None = None
        self.hung = False  # a hang was seen: later calls get a short timeout
        self.slowest = 0.0  # the slowest answer to an action so far, seconds
        self.described: tuple[frozenset[str], bool] | None = None  # the constructor's arguments

    def _start(self) -> None:
        ctx = context()
        parent, child = ctx.Pipe()
        process = ctx.Process(
            target=_serve,
            name="conformance-worker",
            daemon=True,
            args=(
                child,
                self.options.implementation,
                self.options.family,
                self.options.state_keys,
                self.options.memory_limit,
                list(sys.path),
                os.getcwd(),
            ),
        )
        try:
            process.start()
        finally:
            child.close()
        self.process, self.conn = process, parent

    def stop(self) -> None:
        """Kills the worker (if any); the next call starts another."""
        if self.process is not None:
            if self.process.is_alive():
                self.process.kill()
            self.process.join()
            self.process.close()
        if self.conn is not None:
            self.conn.close()
        self.process = self.conn = None

    def timeout(self, timeout: float | None) -> float | None:
        """The timeout a call gets: the run's, or after a hang a short one."""
        if not self.hung or timeout is None:
            return timeout
        return min(timeout, max(SHORT_TIMEOUT, 4 * self.slowest))

    def call(self, method: str, args: tuple[Any, ...], timeout: float | None, during: str) -> Any:
        """Sends one request and returns the worker's answer; raises Lost (and stops the
        worker) when there is none."""
        return self.receive(method, self.send(method, args), timeout, during)

    def send(self, method: str, args: tuple[Any, ...]) -> float:
        """Sends a request (starting a worker if there is none); returns when it was sent."""
        if self.process is None or not self.process.is_alive():
            self.stop()
            self._start()
        assert self.conn is not None
        with contextlib.suppress(OSError):  # it died since: receive() says how
            self.conn.send((method, args))
        return time.perf_counter()

    def receive(self, method: str, sent: float, timeout: float | None, during: str) -> Any:
        """The answer to the request sent at `sent`, waiting until `timeout` (+ GRACE) after
        it; raises Lost (and stops the worker) when there is none."""
        assert self.conn is not None and self.process is not None
        wait = None if timeout is None else max(sent + timeout + GRACE - time.perf_counter(), 0)
        if not self.conn.poll(wait):
            self.stop()
            self.hung = True
            note = (
                ""
                if timeout == self.options.timeout
                else f"; once a hang was seen the {self.options.timeout:g} s timeout is shortened"
            )
            raise Lost(
                f"no answer after {timeout:g} s during {during} (the worker was killed{note})"
            )
        try:
            status, value = self.conn.recv()
        except (EOFError, OSError):
            self.process.join(5)
            code = self.process.exitcode
            self.stop()
            raise Lost(
                f"the implementation's process {_describe_exit(code)} during {during}"
            ) from None
        except Exception as error:  # an answer that does not unpickle
            self.stop()
            raise Lost(
                f"the answer to {during} could not be received: {type(error).__name__}: {error}"
            ) from None
        if status == "unsendable":
            self.stop()
            raise Lost(f"the answer to {during} cannot be sent between processes: {value}")
        if status == "bug":
            self.stop()
            raise HarnessError(
                f"the harness failed in its worker process during {during}:\n{value}"
            )
        if status == "config":
            raise ImplementationError(value)
        if method == "act" and not value.outcome.timed_out:  # what a normal action takes
            self.slowest = max(self.slowest, time.perf_counter() - sent)
        return value


class IsolatedImplementation:
    """A `module:Class` loaded and checked in a worker process (see the module docstring);
    what the harness needs of it here is its name, its constructor's argument names and
    its state keys."""

    lib = "torch"
    default_mode: Mode = "ulp"

    def __init__(self, options: RunOptions) -> None:
        self.name, self.state_keys = options.implementation, options.state_keys
        self.family = options.spec
        self.worker = _worker(options)
        if self.worker.described is None:  # once per run: a restarted worker loads it itself
            try:
                named, var_keyword = self.worker.call(
                    "load", (), options.timeout, f"loading {self.name}"
                )
            except Lost as lost:
                raise ImplementationError(f"loading it in a worker process: {lost}") from None
            self.worker.described = (frozenset(named), var_keyword)
        self.named, self.var_keyword = self.worker.described

    def accepts(self, argument: str) -> bool:
        return argument in self.named

    def side(self, setup: Setup, flags: dict[str, bool]) -> RemoteSide:
        return RemoteSide(self, setup, flags)


_WORKERS: dict[tuple[str, str, str, int], Worker] = {}


def _worker(options: RunOptions) -> Worker:
    """The process's one worker per implementation (kept across programs and rounds)."""
    key = (options.implementation, options.family, options.state_key, options.memory_limit)
    if key not in _WORKERS:
        _WORKERS[key] = Worker(options)
    worker = _WORKERS[key]
    worker.options = options
    return worker


def stop_workers() -> None:
    """Stops every worker at the end of a run (the next run starts afresh: no shortened
    timeout carries over)."""
    for worker in _WORKERS.values():
        worker.stop()
    _WORKERS.clear()


class RemoteSide:
    """The implementation's side of the twins, in its worker: the same `act` as `Side`,
    one request each."""

    def __init__(self, impl: IsolatedImplementation, setup: Setup, flags: dict[str, bool]) -> None:
        self.worker = impl.worker
        self.setup = setup
        self.flags = {k: v for k, v in flags.items() if impl.accepts(k)}

    def build(self, timeout: float | None) -> Outcome:
        """Builds the model and constructs the optimizer in the worker (raises Lost)."""
        return self.begin_build(timeout)()

    def begin_build(self, timeout: float | None) -> Callable[[], Outcome]:
        """`build`, sent: returns what waits for its outcome (raises Lost), so that the
        harness builds torch's side meanwhile."""
        timeout = self.worker.timeout(timeout)
        sent = self.worker.send("build", (self.setup, self.flags, timeout))

        def finish() -> Outcome:
            outcome: Outcome = self.worker.receive(
                "build", sent, timeout, "constructing the optimizer"
            )
            return outcome

        return finish

    def act(
        self,
        before: Observation | None,
        action: Action,
        timeout: float | None,
        closure_grads: Observation | None = None,
        state: dict[str, Any] | None = None,
        torch_defaults: dict[str, Any] | None = None,
    ) -> Step:
        """`Side.act` in the worker (raises Lost)."""
        return self.begin(before, action, timeout, closure_grads, state, torch_defaults)()

    def begin(
        self,
        before: Observation | None,
        action: Action,
        timeout: float | None,
        closure_grads: Observation | None = None,
        state: dict[str, Any] | None = None,
        torch_defaults: dict[str, Any] | None = None,
    ) -> Callable[[], Step]:
        """Sends the action to the worker and returns what waits for its Step: the harness
        runs torch's side meanwhile."""
        timeout = self.worker.timeout(timeout)
        sent = self.worker.send(
            "act", (before, action, timeout, closure_grads, to_wire(state), to_wire(torch_defaults))
        )

        def finish() -> Step:
            step: Step = self.worker.receive("act", sent, timeout, f"{action}")
            step.state = from_wire(step.state)
            if step.outcome.timed_out:
                self.worker.hung = True
            if step.outcome.error is not None and step.outcome.error[0] == "MemoryError":
                self.worker.stop()  # whatever it left behind is not the next program's
            return step

        return finish


# --- the wire: what crosses the process boundary besides observations ----------------------------


@dataclass
class WireTensor:
    """A torch tensor as a numpy array (the harness never unpickles a torch storage)."""

    array: np.ndarray


def to_wire(value: Any) -> Any:
    """A state dict (or any nest of dicts, lists and tuples) with tensors as WireTensors and
    every leaf a plain value (another object becomes its repr: the other side must not
    import the class of an object the implementation made)."""
    if isinstance(value, torch.Tensor):
        return WireTensor(value.detach().cpu().numpy().copy())
    if isinstance(value, dict):
        return {to_wire(k): to_wire(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return (
            type(value)(to_wire(v) for v in value)
            if type(value) in (list, tuple)
            else [to_wire(v) for v in value]
        )
    if isinstance(value, np.generic):
        return value.item()
    if value is None or type(value) in (bool, int, float, str, bytes):
        return value
    try:
        return repr(value)
    except Exception:  # a hostile __repr__
        return f"<{type(value).__name__}>"


def from_wire(value: Any) -> Any:
    if isinstance(value, WireTensor):
        return torch.from_numpy(value.array)
    if isinstance(value, dict):
        return {from_wire(k): from_wire(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(from_wire(v) for v in value)
    return value


# --- the worker process --------------------------------------------------------------------------


def _limit_memory(mebibytes: int) -> None:
    """RLIMIT_AS: the address space the worker has now plus `mebibytes` (where the platform
    has it)."""
    try:
        import resource

        with open("/proc/self/statm") as statm:
            size = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = size + mebibytes * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, OSError, ValueError):
        pass  # no /proc or no RLIMIT_AS: no limit


def _serve(
    conn: Connection,
    target: str,
    family: str,
    state_keys: dict[str, str],
    memory_limit: int,
    path: list[str],
    cwd: str,
) -> None:
    """The worker's loop: one request, one answer, until the harness closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the user's Ctrl-C is the harness's
    sys.path[:] = path
    os.chdir(cwd)
    if cwd not in sys.path:  # a module in the current directory, as `python -m` finds it
        sys.path.append(cwd)
    torch.set_num_threads(1)  # as the harness runs torch: tiny tensors
    _limit_memory(memory_limit)
    server = _Server(target, family, state_keys)
    while True:
        try:
            method, args = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        try:
            answer = server.handle(method, args)
        except ImplementationError as error:
            conn.send(("config", str(error)))
            continue
        except BaseException:  # the harness's own code failed, not the implementation's
            conn.send(("bug", traceback.format_exc()))
            continue
        try:
            conn.send(("ok", answer))
        except Exception as error:  # the implementation put something unpicklable in it
            conn.send(("unsendable", f"{type(error).__name__}: {error}"))


class _Server:
    """The worker's state: the loaded implementation and the current program's side."""

    def __init__(self, target: str, family: str, state_keys: dict[str, str]) -> None:
        self.target, self.family, self.state_keys = target, families.get(family), state_keys
        self.impl: TorchOptimizerImplementation | None = None
        self.side: Side | None = None

    def handle(self, method: str, args: tuple[Any, ...]) -> Any:
        if method == "load":
            self.impl = TorchOptimizerImplementation(self.target, self.state_keys, self.family)
            return sorted(self.impl.named), self.impl.var_keyword
        if method == "build":
            setup, flags, timeout = args
            self.side = None
            return _run(lambda: self._build(setup, flags), timeout)
        if method == "act":
            before, action, timeout, closure_grads, state, defaults = args
            assert self.side is not None
            step = self.side.act(
                before, action, timeout, closure_grads, from_wire(state), from_wire(defaults)
            )
            step.state = to_wire(step.state)
            return step
        raise ValueError(f"unknown request {method!r}")

    def _build(self, setup: Setup, flags: dict[str, bool]) -> None:
        if self.impl is None:  # a restarted worker: the class was checked in an earlier one
            self.impl = TorchOptimizerImplementation(self.target, self.state_keys, self.family)
        self.side = Side(self.impl, setup, flags)
