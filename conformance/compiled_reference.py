"""`CompiledStepSGD`: a correct SGD from the documentation whose update is compiled with
`torch.compile` (see `conformance.references` for the others and the docs' algorithm they
follow). It is a module of its own because importing it compiles and warms up the update
(seconds; minutes with no inductor cache).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from conformance.references import Params, _check_hyperparameters, _run_closure

__all__ = ["COMPILE_SKIP_REASON", "COMPILE_WARMUP_SECONDS", "CompiledStepSGD"]


def _flat_update(
    p: Tensor, g: Tensor, b: Tensor, first: Tensor, hyper: Tensor, flags: Tensor
) -> tuple[Tensor, Tensor]:
    """The docs' loop body over one flat vector: returns (θ_t, b_t).

    hyper = [lr, weight_decay, momentum, 1 − dampening] in the parameters' dtype; flags =
    [maximize, λ ≠ 0, μ ≠ 0, nesterov] (bool); first marks the elements whose parameter has no
    buffer yet (t = 1; their b is a placeholder). The branches are `torch.where` selections, so
    the compiled graph does not depend on the hyperparameters' values (no recompilation per
    configuration); each selected branch is the docs' formula, computed as written.
    """
    lr, weight_decay, momentum, keep = hyper[0], hyper[1], hyper[2], hyper[3]
    maximize, decays, uses_momentum, nesterov = flags[0], flags[1], flags[2], flags[3]
    g = torch.where(maximize, -g, g)
    g = torch.where(decays, g + weight_decay * p, g)
    b = torch.where(first, g, momentum * b + keep * g)
    d = torch.where(nesterov, g + momentum * b, b)
    d = torch.where(uses_momentum, d, g)
    return p - lr * d, b


def _compile_update() -> tuple[Callable[..., tuple[Tensor, Tensor]] | None, str | None, float]:
    """Compiles `_flat_update` once for this process and runs it on every input kind a step
    can produce, so no conformance action pays a cold compile. Returns (compiled function,
    None, seconds) or (None, why not, seconds).

    The guards were measured on torch 2.13: with dynamic=True the vector's length is symbolic
    except that lengths 0 and 1 are specialised (the step pads every vector with two
    elements), so what remains is one graph per dtype and per
    `torch.get_num_threads()` (a global-state guard: the conformance runner sets one thread).
    Warm-up compiles float32 and float64 at the current thread count and at one thread: 4 of
    Dynamo's 8 allowed entries, leaving room for one more thread count before it would silently
    fall back to eager (which would still be correct, only slower).

    The kernels are single-threaded (inductor's `cpp.threads`): with OpenMP over both cores, a
    call on a few hundred float64 elements, between eager torch ops, took 20-40 ms here instead
    of 0.02 ms, which would make a program of thousands of actions run for minutes."""
    start = time.perf_counter()
    if not (shutil.which("g++") or shutil.which("c++")):
        return None, "torch.compile's inductor backend needs a C++ compiler (g++ or c++)", 0.0
    threads = torch.get_num_threads()
    try:
        compiled = torch.compile(_flat_update, dynamic=True, options={"cpp.threads": 1})
        with torch.no_grad():
            for count in dict.fromkeys((threads, 1)):
                torch.set_num_threads(count)
                for dtype in (torch.float32, torch.float64):
                    # Every product and sum here is exact, so the check holds whether or not a
                    # compiler fuses multiply-adds; every branch of the update is taken.
                    x = torch.arange(1.0, 4.0, dtype=dtype)
                    args = (
                        x,
                        x / 4,
                        x * 3,
                        torch.tensor([True, False, False]),
                        torch.tensor([0.5, 0.25, 0.75, 0.5], dtype=dtype),
                        torch.ones(4, dtype=torch.bool),
                    )
                    got, expected = compiled(*args), _flat_update(*args)
                    if not all(map(torch.equal, got, expected)):
                        return None, f"torch.compile's update differs from eager ({dtype})", 0.0
    except Exception as error:  # inductor or Dynamo could not build it here
        return None, f"torch.compile failed: {type(error).__name__}: {error}", 0.0
    finally:
        torch.set_num_threads(threads)
    return compiled, None, time.perf_counter() - start


_COMPILED_UPDATE, COMPILE_SKIP_REASON, COMPILE_WARMUP_SECONDS = _compile_update()
"""Set at import: why CompiledStepSGD cannot be used in this process (None when it can), and
how long compiling and warming up its update took."""

_PAD = 2  # elements appended to every flat vector: lengths 0 and 1 would be separate graphs


class CompiledStepSGD(torch.optim.Optimizer):
    """SGD whose update is a function over a group's tensors, compiled with `torch.compile`.

    Follows: the `torch.optim.SGD` math block (the compiled `_flat_update` is its loop body,
    each branch selected with `torch.where`) and Optimizer.step's closure contract (the closure
    runs eagerly, before and outside the compiled function, with gradients enabled). A group's
    parameters with a gradient are concatenated into one vector per dtype (the list's length
    would otherwise be a Dynamo guard), updated by the compiled function, and copied back;
    the buffers stored are new tensors each step. The arithmetic rounds every product before
    its sum (inductor's CPU code does not fuse them: measured bitwise equal to the eager
    two-rounding formulas), so it is within a few ULP of torch.

    Cost, measured on this machine (2 cores, torch 2.13.0+cpu, g++ 12): compiling and warming
    up the four graphs at import took 10-18 s with an empty inductor cache (the first import on
    a machine, or a fresh TORCHINDUCTOR_CACHE_DIR) and 3-5 s with a warm one
    (`/tmp/torchinductor_$USER`), the high ends with other jobs loading the machine; importing
    torch itself is 0.7 s of the total. `COMPILE_WARMUP_SECONDS` holds this process's figure.
    The import is where it is paid, outside any timed conformance action (the runner times the
    optimizer's construction too). After that a step costs no compilation at either thread
    count (tests/test_references.py checks it under
    `torch.compiler.set_stance("fail_on_recompile")`), and a step of a few small tensors takes
    well under a millisecond.
    Constructing one raises RuntimeError with `COMPILE_SKIP_REASON` when the update could not be
    compiled here.
    """

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        if COMPILE_SKIP_REASON is not None:
            raise RuntimeError(f"CompiledStepSGD is unavailable: {COMPILE_SKIP_REASON}")
        _check_hyperparameters(lr, momentum, dampening, weight_decay, nesterov)
        super().__init__(
            params,
            {
                "lr": lr,
                "momentum": momentum,
                "dampening": dampening,
                "weight_decay": weight_decay,
                "nesterov": nesterov,
                "maximize": maximize,
            },
        )

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = _run_closure(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for dtype in dict.fromkeys(p.dtype for p in params):
                self._step_tensors([p for p in params if p.dtype == dtype], group)
        return loss

    def _step_tensors(self, params: list[Tensor], group: dict[str, Any]) -> None:
        momentum = group["momentum"]
        dtype = params[0].dtype
        buffers = [self.state[p].get("momentum_buffer") if momentum != 0 else None for p in params]
        pad = torch.zeros(_PAD, dtype=dtype)
        p_flat = torch.cat([p.detach().reshape(-1) for p in params] + [pad])
        # step passes only parameters with a .grad
        g_flat = torch.cat([p.grad.reshape(-1) for p in params] + [pad])  # type: ignore[union-attr]
        b_flat = torch.cat(
            [
                torch.zeros(p.numel(), dtype=dtype) if b is None else b.reshape(-1).to(dtype)
                for p, b in zip(params, buffers, strict=True)
            ]
            + [pad]
        )
        first = torch.cat(
            [torch.full((p.numel(),), b is None) for p, b in zip(params, buffers, strict=True)]
            + [torch.zeros(_PAD, dtype=torch.bool)]
        )
        hyper = torch.tensor(
            [float(group["lr"]), group["weight_decay"], momentum, 1 - group["dampening"]],
            dtype=dtype,
        )
        flags = torch.tensor(
            [group["maximize"], group["weight_decay"] != 0, momentum != 0, group["nesterov"]]
        )
        assert _COMPILED_UPDATE is not None  # the constructor refused otherwise
        new_p, new_b = _COMPILED_UPDATE(p_flat, g_flat, b_flat, first, hyper, flags)
        offset = 0
        for p in params:
            n = p.numel()
            p.copy_(new_p[offset : offset + n].view(p.shape))
            if momentum != 0:
                self.state[p]["momentum_buffer"] = new_b[offset : offset + n].view(p.shape).clone()
            offset += n
