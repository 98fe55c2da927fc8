"""Hostile implementations under test: correct SGD (conformance.references.MinimalSGD, written
from the documentation) until their first step (or zero_grad), then they end their process,
hang, exhaust memory or wreck their own state. None may end a run without a report, or make it
exit with anything but 1. Named `tests.hostile:Class` (a worker process imports them)."""

from __future__ import annotations

import ctypes
import os
import signal
import time
from typing import Any

import numpy as np
import torch

from conformance.references import MinimalSGD


class ExitZero(MinimalSGD):
    """Exits with status 0: the status that would fake a passing gate."""

    def step(self, closure: Any = None) -> Any:
        os._exit(0)


class ExitThree(MinimalSGD):
    def step(self, closure: Any = None) -> Any:
        os._exit(3)


class Segfault(MinimalSGD):
    def step(self, closure: Any = None) -> Any:
        ctypes.string_at(0)  # reads address 0: SIGSEGV


class CSleep(MinimalSGD):
    """A C call that never returns to the interpreter (SIGALRM blocked, as a C library
    holding a lock might): only killing the process ends it."""

    def step(self, closure: Any = None) -> Any:
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
        ctypes.CDLL(None).sleep(3600)


class PythonLoop(MinimalSGD):
    def step(self, closure: Any = None) -> Any:
        while True:
            pass


class MemoryBomb(MinimalSGD):
    """Keeps allocating (address space only: the pages are never touched)."""

    def step(self, closure: Any = None) -> Any:
        hoard = []
        while True:
            hoard.append(np.empty(2**28, dtype=np.uint8))


class DeletesState(MinimalSGD):
    """zero_grad() deletes the optimizer's `state` and `param_groups`."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        del self.state
        del self.param_groups


class ChangesDtype(MinimalSGD):
    """step() turns the parameters into float16 tensors."""

    def step(self, closure: Any = None) -> Any:
        loss = super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                p.data = p.data.to(torch.float16)
        return loss


class RaisesSystemExit(MinimalSGD):
    def step(self, closure: Any = None) -> Any:
        raise SystemExit(0)


class RaisesKeyboardInterrupt(MinimalSGD):
    def step(self, closure: Any = None) -> Any:
        raise KeyboardInterrupt


class FloatLoss(MinimalSGD):
    """step(closure) returns the loss as a Python float, not the closure's tensor."""

    def step(self, closure: Any = None) -> Any:
        loss = super().step(closure)
        return None if loss is None else float(loss)


class ColdStart(MinimalSGD):
    """Correct, but its process's first step takes 5 s (a cold compile cache): a timeout that
    does not happen again when Hypothesis re-runs the program (not hostile: flaky)."""

    warm = False

    def step(self, closure: Any = None) -> Any:
        if not ColdStart.warm:
            ColdStart.warm = True
            time.sleep(5)
        return super().step(closure)


HOSTILE = [
    "ExitZero",
    "ExitThree",
    "Segfault",
    "CSleep",
    "PythonLoop",
    "MemoryBomb",
    "DeletesState",
    "ChangesDtype",
    "RaisesSystemExit",
    "RaisesKeyboardInterrupt",
    "FloatLoss",
]
