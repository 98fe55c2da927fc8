"""The implementations under test, behind one small interface, and the `Side` that runs a
program's actions on one of them.

An `Implementation` says whose autograd computes the gradients (`lib`: torch or refimpl), how to
construct its optimizer (like its family's torch optimizer, `torch.optim.SGD` say) and how to
move torch-format state dicts in and out. Two exist: `refimpl` (refimpl's autograd and
refimpl's optimizer of the family) and any optimizer class constructed like the family's,
named `module:Class` (torch's autograd; only the optimizer is under test). The reference side
is the latter with the family's torch class (`reference`). Another framework is one more
`Implementation` (and a `Lib` for its tensors), not a change elsewhere.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import functools
import importlib
import inspect
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

import refimpl
import refimpl.optim
from conformance import families, models
from conformance.actions import ACTIONS
from conformance.bridge import (
    state_dict_to_refimpl,
    state_dict_to_torch,
    torch_capability,
    torch_sqrt,
)
from conformance.families import OptimizerFamily, load
from conformance.options import RunOptions
from conformance.oracle import Mode
from conformance.program import Action, Setup

if TYPE_CHECKING:  # the layer above: implementation() may return one
    from conformance.isolation import IsolatedImplementation

# --- tensors of either library as numpy ----------------------------------------------------------


class Lib(Protocol):
    name: str

    def numpy(self, tensor: Any) -> np.ndarray: ...
    def assign(self, tensor: Any, value: np.ndarray) -> None: ...
    def tensor(self, value: np.ndarray) -> Any: ...
    def scalar(self, value: float) -> Any: ...
    def is_tensor(self, value: Any) -> bool: ...
    def grad_enabled(self) -> Any: ...


class TorchLib:
    name = "torch"

    def numpy(self, tensor: Any) -> np.ndarray:
        array: np.ndarray = tensor.detach().numpy().copy()
        return array

    def assign(self, tensor: Any, value: np.ndarray) -> None:
        with torch.no_grad():
            tensor.copy_(torch.from_numpy(np.array(value, copy=True)))

    def tensor(self, value: np.ndarray) -> Any:
        return torch.from_numpy(np.array(value, copy=True))

    def scalar(self, value: float) -> Any:
        return torch.tensor(value, dtype=torch.float64)

    def is_tensor(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor)

    def grad_enabled(self) -> Any:
        return torch.enable_grad()


class RefimplLib:
    name = "refimpl"

    def numpy(self, tensor: Any) -> np.ndarray:
        return np.array(tensor.data, copy=True)

    def assign(self, tensor: Any, value: np.ndarray) -> None:
        tensor.data[...] = value

    def tensor(self, value: np.ndarray) -> Any:
        return refimpl.tensor(np.array(value, copy=True))

    def scalar(self, value: float) -> Any:
        return refimpl.tensor(value, dtype=refimpl.float64)

    def is_tensor(self, value: Any) -> bool:
        return isinstance(value, refimpl.Tensor)

    def grad_enabled(self) -> Any:
        return refimpl.enable_grad()


LIBS: dict[str, Lib] = {"torch": TorchLib(), "refimpl": RefimplLib()}


# --- implementations -----------------------------------------------------------------------------


class Implementation(Protocol):
    name: str  # "refimpl" or "module:Class"
    lib: str  # whose autograd computes the gradients
    default_mode: Mode  # how its optimizer's results are judged unless told otherwise
    family: OptimizerFamily
    state_keys: dict[str, str]  # torch's state key -> where its state keeps that entry

    def accepts(self, argument: str) -> bool: ...
    def optimizer(self, params: Any, **kwargs: Any) -> Any: ...
    def load_torch_state(self, state_dict: dict[str, Any]) -> dict[str, Any]: ...
    def to_torch_state(
        self, state_dict: dict[str, Any], torch_defaults: dict[str, Any] | None = None
    ) -> dict[str, Any]: ...


class RefimplImplementation:
    """refimpl end to end: its autograd computes the grads, its optimizer of the family steps
    (rounding like this process's torch, so the optimizer's arithmetic is judged bit for
    bit)."""

    name = "refimpl"
    lib = "refimpl"
    default_mode: Mode = "exact"

    def __init__(self, family: OptimizerFamily | None = None) -> None:
        self.family = family or families.get("sgd")
        self.state_keys: dict[str, str] = {}
        self.cls = load(self.family.refimpl_class)

    def accepts(self, argument: str) -> bool:
        return argument in _arguments(self.cls)[0]

    def optimizer(self, params: Any, **kwargs: Any) -> Any:
        if "sqrt" in _arguments(self.cls)[0]:  # Adam: torch's square root (bridge.torch_sqrt)
            kwargs["sqrt"] = torch_sqrt
        return self.cls(params, **kwargs, cpu_capability=torch_capability())

    def load_torch_state(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        return state_dict_to_refimpl(state_dict)

    def to_torch_state(
        self, state_dict: dict[str, Any], torch_defaults: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return state_dict_to_torch(state_dict)


class ImplementationError(ValueError):
    """A `module:Class` that cannot be an implementation under test (the message says why)."""


class TorchOptimizerImplementation:
    """Any optimizer class constructed like its family's torch optimizer (torch's autograd
    computes the grads; the class keeps torch's state entry `key` of a parameter in
    `state[p][state_keys.get(key, key)]`).

    Moving state dicts between it and torch renames those keys and, for torch, fills in a
    hyperparameter the implementation's groups lack (one it was declared not to have) with
    torch's own default, so a cross-load tests the state, not torch's reading of foreign
    groups."""

    lib = "torch"
    default_mode: Mode = "ulp"

    def __init__(
        self,
        target: str,
        state_keys: dict[str, str] | None = None,
        family: OptimizerFamily | None = None,
    ) -> None:
        self.family = family or families.get("sgd")
        self.name, self.state_keys = target, dict(state_keys or {})
        self.cls = load_class(target, self.family.name)
        self.named, self.var_keyword = _arguments(self.cls)

    def accepts(self, argument: str) -> bool:
        """Whether the constructor names `argument` (a `**kwargs` does not count: torch's
        implementation flags are passed only to a constructor that names them)."""
        return argument in self.named

    def optimizer(self, params: Any, **kwargs: Any) -> Any:
        return self.cls(params, **kwargs)

    def load_torch_state(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        state_dict = copy.deepcopy(state_dict)  # never share tensors with the other side
        for state in state_dict["state"].values():
            for torch_key, theirs in self.state_keys.items():
                if torch_key in state:
                    state[theirs] = state.pop(torch_key)
        return state_dict

    def to_torch_state(
        self, state_dict: dict[str, Any], torch_defaults: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        state_dict = copy.deepcopy(state_dict)
        for state in state_dict.get("state", {}).values():
            for torch_key, theirs in self.state_keys.items():
                if theirs in state:
                    state[torch_key] = state.pop(theirs)
        for group in state_dict.get("param_groups", []):
            for key, value in (torch_defaults or {}).items():
                group.setdefault(key, value)
        return state_dict


@functools.cache
def load_class(target: str, family: str = "sgd") -> type:
    """Imports `module:Class` (once per process) and checks that it can be constructed like
    the family's torch optimizer (torch.optim.SGD(params, lr=0.1, momentum=0.9), say)."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ImplementationError(f"expected module:Class, got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # any import failure is the user's to fix
        raise ImplementationError(f"cannot import {module_name!r}: {error}") from error
    cls: object = module
    for part in attribute.split("."):
        cls = getattr(cls, part, None)
        if cls is None:
            raise ImplementationError(f"{module_name!r} has no attribute {attribute!r}")
    if not isinstance(cls, type):
        raise ImplementationError(f"{target} is not a class")
    spec = families.get(family)
    try:
        cls([torch.zeros(1, requires_grad=True)], **spec.example)
    except Exception as error:
        call = ", ".join(f"{k}={v!r}" for k, v in spec.example.items())
        raise ImplementationError(
            f"{target} does not construct like {spec.torch_name}(params, {call}): "
            f"{type(error).__name__}: {error}"
        ) from error
    return cls


_ARGUMENTS: dict[type, tuple[frozenset[str], bool]] = {}


def _arguments(cls: type) -> tuple[frozenset[str], bool]:
    """The argument names a constructor takes by keyword, and whether it has `**kwargs`
    (read once per class and process: each program's sides ask)."""
    try:
        return _ARGUMENTS[cls]
    except Exception:  # not read yet, or a class its metaclass made unhashable
        pass
    described = _read_arguments(cls)
    with contextlib.suppress(Exception):
        _ARGUMENTS[cls] = described
    return described


def _read_arguments(cls: type) -> tuple[frozenset[str], bool]:
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # no signature to read: assume it takes anything
        return frozenset(), True
    named = frozenset(
        p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    )
    return named, any(p.kind is p.VAR_KEYWORD for p in parameters)


def check_surface(impl: Implementation | IsolatedImplementation, options: RunOptions) -> None:
    """Raises ImplementationError when the constructor cannot take an argument the programs
    will pass (one not declared absent): decided before any program runs."""
    if isinstance(impl, RefimplImplementation) or getattr(impl, "var_keyword", True):
        return
    assert hasattr(impl, "named")
    spec = options.spec
    for name in spec.example:
        if name not in impl.named:
            raise ImplementationError(f"{impl.name} does not take {name}=")
    for feature in spec.features:
        argument = spec.argument_of(feature)
        if argument is not None and options.has(feature) and argument not in impl.named:
            raise ImplementationError(
                f"{impl.name} does not take {argument}=; if it has no {feature}, declare it "
                f"with --without {feature}"
            )


def implementation(name: str | RunOptions) -> Implementation | IsolatedImplementation:
    """`refimpl` or `module:Class` (or the implementation of a run's options, with its state
    key and its declared surface checked; under process isolation, loaded and checked in a
    worker process, never in this one)."""
    options = name if isinstance(name, RunOptions) else RunOptions(name)
    if options.implementation == "refimpl":
        return RefimplImplementation(options.spec)
    impl: Implementation | IsolatedImplementation
    if options.resolved_isolation == "process":
        from conformance.isolation import IsolatedImplementation

        impl = IsolatedImplementation(options)
    else:
        impl = TorchOptimizerImplementation(
            options.implementation, options.state_keys, options.spec
        )
    check_surface(impl, options)
    return impl


def reference(options: RunOptions) -> TorchOptimizerImplementation:
    """The family's torch optimizer: the reference side."""
    return TorchOptimizerImplementation(options.spec.torch_class, family=options.spec)


# --- running the implementation's code ----------------------------------------------------------


class ActionTimeout(BaseException):
    """The implementation under test ran past the per-action timeout."""


_ARMED: list[float] = []  # the deadlines armed now, innermost last: what an alarm reports
_KEPT = [False]  # whether alarms() keeps the handler installed (a flag: getsignal costs ~5 us)


def _expire(signum: int, frame: Any) -> None:
    if _ARMED:  # an alarm that arrives once its deadline has ended is ignored
        raise ActionTimeout(f"no result after {_ARMED[-1]:.3g} s")


@contextlib.contextmanager
def alarms() -> Iterator[None]:
    """Keeps the deadlines' SIGALRM handler installed across the deadlines inside (an action
    arms several, and installing a handler costs ~5x arming a timer); the previous handler
    is back afterwards."""
    if _KEPT[0] or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGALRM, _expire)
    _KEPT[0] = True
    try:
        yield
    finally:
        _KEPT[0] = False
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raises ActionTimeout in this thread after `seconds` (SIGALRM; main thread only, where
    Hypothesis, pytest and a worker's loop run; elsewhere no limit applies). Code that never
    returns to the interpreter (a C call) is not interrupted: a worker process is killed.
    The handler is installed for the deadline (and the previous one restored) unless
    `alarms()` keeps it installed already."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return
    kept = _KEPT[0]
    previous = None if kept else signal.signal(signal.SIGALRM, _expire)
    _ARMED.append(seconds)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _ARMED.pop()
        if not kept:
            signal.signal(signal.SIGALRM, previous)


@dataclass
class Outcome:
    """What one call of the implementation's (or torch's) code did: the loss it returned, or
    the exception it raised (its class, message, traceback and the qualified names of its
    class and bases, which is what a semantic comparison of classes needs across processes)."""

    loss: np.ndarray | None = None
    error: tuple[str, str] | None = None  # exception type name, message
    error_mro: tuple[str, ...] = ()
    returned: str | None = None  # a step(closure) result that is not a tensor, described
    # The raised exception's traceback, formatted when first asked for (formatting costs
    # ~80 us a frame stack, and most tracebacks are never shown: torch's never are); pickling
    # (a worker's answer) formats it and drops the exception.
    _raised: tuple[type[BaseException], BaseException, TracebackType | None] | None = field(
        default=None, repr=False, compare=False
    )
    _traceback: str | None = field(default=None, repr=False, compare=False)

    @property
    def timed_out(self) -> bool:
        return self.error is not None and self.error[0] == ActionTimeout.__name__

    @property
    def traceback(self) -> str | None:
        """The traceback of the exception raised (None where none was), as
        `traceback.format_exc()` gave it where it was caught."""
        if self._raised is not None:
            try:
                self._traceback = "".join(traceback.format_exception(*self._raised))
            except BaseException:  # a hostile exception: its class and message say enough
                assert self.error is not None
                self._traceback = f"{self.error[0]}: {self.error[1]}\n"
            self._raised = None  # frees the frames it holds
        return self._traceback

    def __getstate__(self) -> dict[str, Any]:
        _ = self.traceback  # as text: the exception itself need not unpickle elsewhere
        return dict(self.__dict__)


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _run(call: Callable[[], Any], timeout: float | None) -> Outcome:
    """Runs `call` under `timeout`; whatever it raises becomes the Outcome (a faulty
    implementation must never crash the harness). A Ctrl-C of the user's still stops the run
    in-process; a worker process ignores SIGINT, so there a KeyboardInterrupt is the
    implementation's."""
    try:
        if timeout:
            with deadline(timeout):
                result = call()
        else:  # torch's side: no deadline to arm
            result = call()
    except KeyboardInterrupt:
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
        ):
            raise
        return _raised()
    except BaseException:
        return _raised()
    if isinstance(result, Returned):
        return Outcome(returned=str(result))
    return Outcome(loss=result)


class Returned(str):
    """What step(closure) returned where it is not a tensor, described."""


def _raised() -> Outcome:
    error = sys.exc_info()[1]
    assert error is not None
    try:
        message = str(error)
    except BaseException:  # a hostile __str__: the exception was still raised
        message = f"<{type(error).__name__} whose str() raised>"
    # the triple, not the exception alone: a later raise of the same object would add frames
    return Outcome(
        error=(type(error).__name__, message),
        error_mro=tuple(_qualified(c) for c in type(error).__mro__),
        _raised=(type(error), error, error.__traceback__),
    )


@dataclass
class Step:
    """One action on one side, as the harness sees it: synchronising the state from
    torch's, the action itself, what the closure saw after each backward (step with
    closure), the state afterwards (None where observing it raised: `observed` says how) and
    for a state-dict round trip from the implementation, its state dict in torch's format."""

    synced: Outcome
    outcome: Outcome = field(default_factory=Outcome)
    closure: list[Observation] = field(default_factory=list)
    after: Observation | None = None
    observed: Outcome = field(default_factory=Outcome)
    state: dict[str, Any] | None = None
    seconds: float = 0.0  # the whole of act: synchronising, the action, observing
    applied: float = 0.0  # the action itself (where it ran)


# --- one side of the comparison ------------------------------------------------------------------


@dataclass
class Observation:
    """Everything the oracle compares, as numpy arrays and plain values."""

    params: dict[str, np.ndarray]
    grads: dict[str, np.ndarray | None]
    # the family's state entries (torch's key), each parameter's as an array (a number as a
    # 0-dim array of its type) or None where the optimizer holds none
    state: dict[str, dict[str, np.ndarray | None]]
    requires_grad: dict[str, bool]
    groups: list[dict[str, Any]]  # hyperparameters; `params` as names; tensors as ("tensor", x)


_PLAIN = frozenset({bool, int, float, str, type(None)})  # a group's values kept as they are
_DICTS = frozenset({dict, collections.defaultdict})


class Side:
    """A model and an optimizer of one implementation, driven by actions. `flags` are torch's
    implementation flags of the reference path; the optimizer gets those its constructor
    names."""

    def __init__(
        self, impl: Implementation, setup: Setup, flags: dict[str, bool] | None = None
    ) -> None:
        self.impl, self.setup = impl, setup
        self.lib = LIBS[impl.lib]
        self.state_keys = [(k.name, impl.state_keys.get(k.name, k.name)) for k in impl.family.state]
        self.flags = {k: v for k, v in (flags or {}).items() if impl.accepts(k)}
        self.model = models.build(setup.model, setup.dtype, impl.lib)
        self.params: dict[str, Any] = dict(self.model.parameters)
        self.names = {id(p): name for name, p in self.params.items()}
        self.optimizer = self.construct([g.to_json() for g in setup.groups], setup.defaults)

    def construct(
        self, groups: list[dict[str, Any]], defaults: dict[str, Any], flaw: str | None = None
    ) -> Any:
        """The optimizer over `groups` (names and options, as in the program's JSON);
        `flaw` makes the parameter list invalid (see `_flawed`)."""
        built = [
            {"params": [self.params[n] for n in g["params"]], **self.options(g["options"])}
            for g in groups
        ]
        if flaw == "duplicate":  # a parameter in two groups
            built.append({"params": built[0]["params"][:1]})
        elif flaw is not None:
            built[0]["params"] = self.flawed(built[0]["params"], flaw)
        return self.impl.optimizer(built, **{**self.options(defaults), **self.flags})

    def flawed(self, params: list[Any], flaw: str) -> list[Any]:
        """A parameter list torch rejects: one of the optimizer's parameters again
        ("duplicate": added as a group, it is then in two groups), a tensor computed from a
        leaf ("non-leaf") or a Python number ("non-tensor")."""
        if flaw == "duplicate":
            grouped = [p for g in self.optimizer.param_groups for p in g["params"]]
            return [*params, grouped[0]]
        if flaw == "non-leaf":
            with self.lib.grad_enabled():
                leaf = self.lib.tensor(np.ones(2, dtype=self.setup.dtype)).requires_grad_()
                return [*params, leaf * 2]
        if flaw == "non-tensor":
            return [*params, 1.0]
        raise ValueError(f"unknown flaw {flaw!r}")

    def options(self, options: dict[str, Any]) -> dict[str, Any]:
        """Hyperparameters as the program states them, with lr as a tensor where the setup
        says so (a list is a tensor lr of several elements, which torch rejects)."""
        out: dict[str, Any] = {
            k: tuple(v) if type(v) is list and k != "lr" else v for k, v in options.items()
        }  # betas, from JSON
        lr = out.get("lr")
        if isinstance(lr, list):
            out["lr"] = self.lib.tensor(np.array(lr, dtype=np.float64))
        elif self.setup.tensor_lr and lr is not None:
            out["lr"] = self.lib.scalar(lr)
        return out

    def loss(self, batch: int) -> Any:
        return self.model.loss(batch)

    def apply(self, action: Action, closure_hook: Any = None) -> np.ndarray | Returned | None:
        """Runs one action (`conformance.actions`); returns the loss it produced (as an
        array), if any. `closure_hook(side)` runs inside step's closure after backward (the
        harness checks and synchronises the closure's gradients there)."""
        run = ACTIONS[action.kind].run
        if run is None:
            raise ValueError(f"{action.kind} is run by the twins, not one side")
        result = run(self, action.args, closure_hook)
        return result if isinstance(result, np.ndarray | Returned) else None

    def returned(self, result: Any) -> np.ndarray | Returned | None:
        """What step(closure) returned, as the harness compares it: the loss as an array,
        None, or a `Returned` description of anything else."""
        if result is None or self.lib.is_tensor(result):
            return None if result is None else self.lib.numpy(result)
        return Returned(f"a {type(result).__name__}, not a tensor")

    def act(
        self,
        before: Observation | None,
        action: Action,
        timeout: float | None,
        closure_grads: Observation | None = None,
        state: dict[str, Any] | None = None,
        torch_defaults: dict[str, Any] | None = None,
    ) -> Step:
        """Synchronises from torch's state `before` (None: this side is in it already, as
        the harness saw after the last action), applies `action` and observes, all
        within `timeout` (one deadline for the three). A closure records what it sees after
        each backward and then takes `closure_grads` (torch's closure's grads), so the step
        is judged on torch's inputs. A state-dict round trip loads `state` (torch's state
        dict, source "reference") or the optimizer's own; from source "implementation" the
        Step carries the optimizer's state dict in torch's format (filled with
        `torch_defaults`)."""
        with alarms():
            return self._act(before, action, timeout, closure_grads, state, torch_defaults)

    def _act(
        self,
        before: Observation | None,
        action: Action,
        timeout: float | None,
        closure_grads: Observation | None,
        state: dict[str, Any] | None,
        torch_defaults: dict[str, Any] | None,
    ) -> Step:
        start = time.perf_counter()
        end = None if not timeout else start + timeout
        left: Callable[[], float | None] = lambda: (
            None if end is None else max(end - time.perf_counter(), 1e-3)
        )
        step = Step(Outcome() if before is None else _run(lambda: self.synchronise(before), left()))
        if step.synced.error is not None:
            return step
        applying = time.perf_counter()
        if action.kind == "save_load":
            own: dict[str, Any] = {}
            step.outcome = _run(lambda: self._save_load(action.args["source"], state, own), left())
            if "state" in own and action.args["source"] == "implementation":
                converted: dict[str, Any] = {}
                _run(
                    lambda: converted.update(
                        state=self.impl.to_torch_state(own["state"], torch_defaults)
                    ),
                    left(),
                )
                step.state = converted.get("state")
        elif action.kind == "step_closure":

            def seen(side: Side) -> None:
                step.closure.append(side.observe())
                if closure_grads is not None:
                    side.synchronise(closure_grads, grads_only=True)

            step.outcome = _run(lambda: self.apply(action, seen), left())
        else:
            step.outcome = _run(lambda: self.apply(action), left())
        step.applied = time.perf_counter() - applying
        observed: list[Observation] = []
        step.observed = _run(lambda: observed.append(self.observe()), left())
        step.after = observed[0] if observed else None
        step.seconds = time.perf_counter() - start
        return step

    def begin(
        self, before: Observation | None, action: Action, timeout: float | None
    ) -> Callable[[], Step]:
        """`act`, deferred: what a worker process runs while the harness runs torch's side,
        run here when its result is asked for."""
        return lambda: self.act(before, action, timeout)

    def _save_load(self, source: str, state: dict[str, Any] | None, own: dict[str, Any]) -> None:
        """state_dict(), then a fresh optimizer over the same groups that loads torch's state
        dict (source "reference") or its own."""
        own["state"] = self.optimizer.state_dict()
        fresh = self.fresh_optimizer()
        if source == "reference":
            assert state is not None
            fresh.load_state_dict(self.impl.load_torch_state(state))
        else:
            fresh.load_state_dict(own["state"])
        self.optimizer = fresh

    def fresh_optimizer(self) -> Any:
        """A new optimizer over the same parameter groups, built from the setup's defaults."""
        groups = [{"params": list(g["params"])} for g in self.optimizer.param_groups]
        return self.impl.optimizer(groups, **{**self.options(self.setup.defaults), **self.flags})

    def held(self, p: Any) -> dict[str, Any]:
        """The optimizer's state of `p` (empty where it holds none)."""
        states = self.optimizer.state
        if type(states) in _DICTS:  # get() adds nothing to a defaultdict
            state = states.get(p)
        else:  # another mapping: never call what might add an entry
            state = states.get(p) if p in states else None
        return state or {}

    def _array(self, value: Any) -> np.ndarray | None:
        """A state entry as numpy: a tensor's values, a number as a 0-dim array."""
        if value is None:
            return None
        if self.lib.is_tensor(value):
            return self.lib.numpy(value)
        return np.asarray(value)

    def observe(self) -> Observation:
        params, grads, requires_grad = {}, {}, {}
        state: dict[str, dict[str, np.ndarray | None]] = {k: {} for k, _ in self.state_keys}
        for name, p in self.params.items():
            params[name] = self.lib.numpy(p)
            grads[name] = None if p.grad is None else self.lib.numpy(p.grad)
            requires_grad[name] = bool(p.requires_grad)
            held = self.held(p)
            for key, theirs in self.state_keys:
                state[key][name] = self._array(held.get(theirs))
        groups = []
        names, plain = self.names, self._plain
        for group in self.optimizer.param_groups:
            observed: dict[str, Any] = {}
            for key, value in group.items():
                if key == "params":
                    observed[key] = [names.get(id(p), "?") for p in value]
                elif type(value) in _PLAIN:
                    observed[key] = value
                else:
                    observed[key] = plain(value)
            groups.append(observed)
        return Observation(params, grads, state, requires_grad, groups)

    def _plain(self, value: Any) -> Any:
        """A group's value as plain data: a tensor as ("tensor", its first element); numbers,
        strings, None and their tuples and lists as they are; any other object as
        ("object", its repr), which no class of the implementation's is needed to read."""
        if type(value) in _PLAIN:
            return value
        if self.lib.is_tensor(value):
            return ("tensor", float(self.lib.numpy(value).reshape(-1)[0]))
        if isinstance(value, np.generic):
            return value.item()
        if value is None or type(value) in (bool, int, float, str):
            return value
        if type(value) in (tuple, list):
            return type(value)(self._plain(v) for v in value)
        return ("object", repr(value))

    def synchronise(self, reference: Observation, grads_only: bool = False) -> None:
        """Sets parameters, grads and the optimizer's state to the reference's values, in
        place where the tensors exist (so aliasing between them is kept, as a faulty
        implementation made it; a number the implementation holds is replaced by torch's, of
        its own type)."""
        for name, p in self.params.items():
            expected = reference.grads[name]
            if expected is None:
                p.grad = None
            elif p.grad is not None and tuple(p.grad.shape) == expected.shape:
                self.lib.assign(p.grad, expected)
            else:
                p.grad = self.lib.tensor(expected)
            if grads_only:
                continue
            self.lib.assign(p, reference.params[name])
            held = self.held(p)
            for key, theirs in self.state_keys:
                value, expected = held.get(theirs), reference.state[key][name]
                if value is None or expected is None:
                    continue
                if self.lib.is_tensor(value):
                    self.lib.assign(value, expected)
                elif type(value) in (int, float):
                    held[theirs] = type(value)(expected.reshape(-1)[0])
