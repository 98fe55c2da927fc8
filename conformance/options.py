"""What a run checks, defined in one place: the contracts, the reference path, the declared
surface (the features an implementation claims) and the options of a run.

Two contracts:

* `semantic` (the default for a `module:Class`): what user code can observe and rely on.
  Parameters, gradients, momentum buffers and the loss `step(closure)` returns must match;
  each group must hold torch's six hyperparameters with torch's values (keys torch lacks are
  allowed; torch's implementation flags are compared only where the implementation was given
  and stores them); where one side raises so must the other, with the same exception class (a
  subclass counts; the message is reported, not compared); torch's code-path artifacts are
  never required (torch's foreach nesterov step writes g + μb into `.grad`: an implementation
  may do the same or leave `.grad` alone).
* `strict` (the default for `refimpl`, and for a drop-in replacement): every group key, exception
  messages word for word, and torch's side effects as the chosen reference path has them.

How values are judged (exact / ulp / tolerance, `conformance.oracle`) is orthogonal to the
contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from conformance.oracle import Mode

Contract = Literal["semantic", "strict"]
ReferencePath = Literal["for-loop", "foreach", "fused"]
CONTRACTS: tuple[Contract, ...] = ("semantic", "strict")
# Where the implementation under test runs: in the harness's process, or in a worker process
# the harness restarts when it exits, crashes, hangs or runs out of memory.
Isolation = Literal["none", "process"]
ISOLATIONS: tuple[Isolation, ...] = ("none", "process")
IN_PROCESS = ("refimpl", "torch.optim:SGD")  # trusted: in-process unless told otherwise
REFERENCE_PATHS: tuple[ReferencePath, ...] = ("for-loop", "foreach", "fused")

# The hyperparameters torch.optim.SGD defines, and the flags that only pick its code path.
HYPERPARAMETERS = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize")
IMPLEMENTATION_FLAGS = ("foreach", "fused", "differentiable", "capturable")

# torch.optim.SGD's constructor flags that select each reference path.
PATH_FLAGS: dict[ReferencePath, dict[str, bool]] = {
    "for-loop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}

# What an implementation may declare it does not do (`--without`), each with what is then left
# unchecked; the hyperparameter each one is passed as, where it is one.
FEATURES: dict[str, str] = {
    "maximize": "maximize=True (gradient ascent) is never drawn",
    "dampening": "nonzero dampening is never drawn",
    "nesterov": "nesterov=True is never drawn",
    "weight-decay": "nonzero weight_decay is never drawn",
    "tensor-lr": "a learning rate given as a 1-element tensor is never drawn",
    "closure": "step(closure) is never called",
    "add-param-group": "add_param_group is never called",
    "set-hyperparameter": "a group's hyperparameters are never changed between steps",
    "state-dict": "state_dict() and load_state_dict() are never called",
    "cross-load": "state dicts are never moved between torch and the implementation",
    "set-to-none-false": "zero_grad(set_to_none=False) is never called",
    "invalid-hyperparameters": "invalid hyperparameters and parameters are never passed "
                               "(validation is not checked)",
}
ARGUMENT_OF: dict[str, str] = {"maximize": "maximize", "dampening": "dampening",
                               "nesterov": "nesterov", "weight-decay": "weight_decay"}
DTYPES = ("float32", "float64")


def torch_writes_grad(group: dict[str, Any]) -> bool:
    """torch 2.13's foreach SGD step computes nesterov's g + μb in the gradient tensors
    themselves when it made no copy of them first (no maximize, no weight decay): `.grad` holds
    that value after the step. The only place this condition is written."""
    value = lambda key: group[key][1] if isinstance(group[key], tuple) else group[key]
    return bool(value("nesterov")) and value("momentum") != 0 and not value("maximize") and \
        value("weight_decay") == 0


def parse_features(text: str | list[str]) -> frozenset[str]:
    """`--without a,b` or a list (pyproject.toml); unknown names raise ValueError."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    unknown = sorted(set(names) - set(FEATURES))
    if unknown:
        raise ValueError(f"unknown feature(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(FEATURES)}")
    return frozenset(names)


@dataclass(frozen=True)
class RunOptions:
    """Everything that decides a verdict besides the programs themselves (JSON round-trippable
    through a report's settings, so a repro replays under the same options)."""

    implementation: str = "refimpl"
    contract: Contract | None = None  # None: strict for refimpl, semantic otherwise
    mode: Mode | None = None  # None: the implementation's default (exact / ulp)
    reference_path: ReferencePath = "for-loop"
    without: frozenset[str] = field(default_factory=frozenset)
    state_key: str = "momentum_buffer"
    timeout: float | None = 10.0
    isolation: Isolation | None = None  # None: in-process for refimpl and torch, else process
    memory_limit: int = 4096  # MiB of address space the worker may add to what it started with

    @property
    def resolved_isolation(self) -> Isolation:
        if self.isolation is not None:
            return self.isolation
        return "none" if self.implementation in IN_PROCESS else "process"

    @property
    def resolved_contract(self) -> Contract:
        if self.contract is not None:
            return self.contract
        return "strict" if self.implementation == "refimpl" else "semantic"

    @property
    def strict(self) -> bool:
        return self.resolved_contract == "strict"

    def has(self, feature: str) -> bool:
        """Whether programs exercise `feature` (it was not declared absent)."""
        if feature not in FEATURES:
            raise KeyError(feature)
        return feature not in self.without

    def required_group_keys(self) -> tuple[str, ...]:
        """The hyperparameters every group must hold, with torch's values."""
        absent = {ARGUMENT_OF[f] for f in self.without if f in ARGUMENT_OF}
        return tuple(k for k in HYPERPARAMETERS if k not in absent)

    def with_(self, **changes: Any) -> RunOptions:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {"optimizer": self.implementation, "contract": self.resolved_contract,
                "mode": self.mode, "reference_path": self.reference_path,
                "without": sorted(self.without), "state_key": self.state_key,
                "timeout": self.timeout, "isolation": self.resolved_isolation,
                "memory_limit": self.memory_limit}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunOptions:
        """From `to_json()` or a report's settings (which hold more keys)."""
        return cls(implementation=data["optimizer"], contract=data.get("contract"),
                   mode=data.get("mode"), reference_path=data.get("reference_path", "for-loop"),
                   without=parse_features(data.get("without", [])),
                   state_key=data.get("state_key", "momentum_buffer"),
                   timeout=data.get("timeout", 10.0), isolation=data.get("isolation"),
                   memory_limit=data.get("memory_limit", 4096))
