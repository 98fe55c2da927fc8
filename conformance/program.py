"""A conformance case as plain data: the setup (model, dtype, optimizer groups and
hyperparameters) and the program (the user's actions, in order). JSON round-trippable, so a
failing case can be stored in a report and replayed exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from conformance.actions import ACTIONS
from conformance.models import ModelSpec


@dataclass(frozen=True)
class Group:
    params: tuple[str, ...]  # parameter names, in order
    options: dict[str, Any] = field(default_factory=dict)  # overrides of the defaults

    def to_json(self) -> dict[str, Any]:
        return {"params": list(self.params), "options": dict(self.options)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Group:
        return cls(tuple(data["params"]), dict(data["options"]))


@dataclass(frozen=True)
class Setup:
    model: ModelSpec
    dtype: str  # "float32" | "float64"
    defaults: dict[str, Any]  # the optimizer's constructor keyword arguments
    groups: tuple[Group, ...]
    tensor_lr: bool = False  # every lr (defaults, groups, changes) as a 1-element tensor

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model.to_json(),
            "dtype": self.dtype,
            "defaults": dict(self.defaults),
            "groups": [g.to_json() for g in self.groups],
            "tensor_lr": self.tensor_lr,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Setup:
        return cls(
            ModelSpec.from_json(data["model"]),
            data["dtype"],
            dict(data["defaults"]),
            tuple(Group.from_json(g) for g in data["groups"]),
            bool(data["tensor_lr"]),
        )


@dataclass(frozen=True)
class Action:
    kind: str
    args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ACTIONS:
            raise ValueError(f"unknown action {self.kind!r}")

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.args.items())
        return f"{self.kind}({args})"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "args": dict(self.args)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Action:
        return cls(data["kind"], dict(data["args"]))


@dataclass(frozen=True)
class Case:
    setup: Setup
    actions: tuple[Action, ...]

    def to_json(self) -> dict[str, Any]:
        return {"setup": self.setup.to_json(), "actions": [a.to_json() for a in self.actions]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Case:
        return cls(
            Setup.from_json(data["setup"]), tuple(Action.from_json(a) for a in data["actions"])
        )
