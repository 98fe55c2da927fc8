"""Wrong SGDs that are not in `conformance.mutants`: the realistic bugs a user writing from the
docs makes, kept out of the catalogue so that the suite's speed at finding them measures the
generators rather than a catalogue they were tuned on (tests/test_kill_speed.py,
benchmarks/bench_kill.py). Each is the docs' loop of `conformance.references.MinimalSGD`
with one thing wrong, said in its docstring; each is constructed like torch.optim.SGD.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from conformance.references import MinimalSGD


class _Loop(MinimalSGD):
    """The docs' loop with hooks where the bugs go."""

    def lr_of(self, group: dict[str, Any]) -> float:
        lr = group["lr"]
        return lr.item() if isinstance(lr, Tensor) else lr

    def direction(self, p: Tensor, group: dict[str, Any]) -> Tensor:
        assert p.grad is not None
        d_p = -p.grad if group["maximize"] else p.grad
        return d_p.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else d_p

    def state_of(self, p: Tensor, group: dict[str, Any], index: int) -> dict[str, Any]:
        return self.state[p]

    def momentum(self, d_p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> Tensor:
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = torch.clone(d_p).detach()
        else:
            buf.mul_(group["momentum"]).add_(d_p, alpha=1 - group["dampening"])
        return d_p.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for index, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                d_p = self.direction(p, group)
                if group["momentum"] != 0:
                    d_p = self.momentum(d_p, self.state_of(p, group, index), group)
                p.add_(d_p, alpha=-self.lr_of(group))
        return loss


class StaleNesterov(_Loop):
    """nesterov looks ahead with the buffer from before this step's update."""

    def momentum(self, d_p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> Tensor:
        old = state.get("momentum_buffer")
        old = None if old is None else old.clone()
        buf = super().momentum(d_p, state, {**group, "nesterov": False})
        if not group["nesterov"]:
            return buf
        return d_p.add(buf if old is None else old, alpha=group["momentum"])


class DecayStoredInBuffer(_Loop):
    """Weight decay is added to the momentum buffer after its update, and kept there."""

    def direction(self, p: Tensor, group: dict[str, Any]) -> Tensor:
        self._param = p
        if group["momentum"] == 0:
            return super().direction(p, group)
        return super().direction(p, {**group, "weight_decay": 0})

    def momentum(self, d_p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> Tensor:
        buf = super().momentum(d_p, state, {**group, "nesterov": False})
        buf.add_(self._param, alpha=group["weight_decay"])
        return d_p.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf


class DefaultsLr(_Loop):
    """Every group steps with the constructor's lr (`self.defaults`), not its own."""

    def lr_of(self, group: dict[str, Any]) -> float:
        return super().lr_of(self.defaults)


class MaximizeAfterDecay(_Loop):
    """maximize negates the gradient after weight decay was added, not before."""

    def direction(self, p: Tensor, group: dict[str, Any]) -> Tensor:
        assert p.grad is not None
        d_p = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad
        return -d_p if group["maximize"] else d_p


class StateByPosition(_Loop):
    """State is kept by a parameter's position in its group, so groups share buffers."""

    def state_of(self, p: Tensor, group: dict[str, Any], index: int) -> dict[str, Any]:
        by_position: dict[int, dict[str, Any]] = self.__dict__.setdefault("by_position", {})
        shared = by_position.setdefault(index, {})
        buf = shared.get("momentum_buffer")
        if buf is not None and buf.shape != p.shape:  # another group's parameter
            shared.clear()
        self.state[p] = shared
        return shared


OUTSIDE_CATALOGUE = [
    f"tests.outside_catalogue:{cls.__name__}"
    for cls in (StaleNesterov, DecayStoredInBuffer, DefaultsLr, MaximizeAfterDecay, StateByPosition)
]
