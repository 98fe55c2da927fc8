"""What a run checks, defined in one place: the contracts, the reference path, the declared
surface (the features an implementation claims) and the options of a run.

Two contracts:

* `semantic` (the default for a `module:Class`): what user code can observe and rely on.
  Parameters, gradients, the optimizer's state (SGD's momentum buffers, Adam's moments and
  step counts) and the loss `step(closure)` returns must match; each group must hold the
  family's hyperparameters with torch's values (keys torch lacks are
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

from conformance import families
from conformance.oracle import Mode

Contract = Literal["semantic", "strict"]
ReferencePath = Literal["for-loop", "foreach", "fused"]
CONTRACTS: tuple[Contract, ...] = ("semantic", "strict")
# Where the implementation under test runs: in the harness's process, or in a worker process
# the harness restarts when it exits, crashes, hangs or runs out of memory.
Isolation = Literal["none", "process"]
ISOLATIONS: tuple[Isolation, ...] = ("none", "process")
# refimpl and torch's own optimizers are trusted: in-process unless told otherwise
IN_PROCESS = ("refimpl", "torch.optim:")
REFERENCE_PATHS: tuple[ReferencePath, ...] = ("for-loop", "foreach", "fused")

# torch's constructor flags that select each reference path (every family has the three).
PATH_FLAGS: dict[ReferencePath, dict[str, bool]] = {
    "for-loop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}
DTYPES = ("float32", "float64")


def parse_features(text: str | list[str], family: str = "sgd") -> frozenset[str]:
    """`--without a,b` or a list (pyproject.toml); a name the family does not know raises
    ValueError."""
    known = families.get(family).features
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"unknown feature(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return frozenset(names)


def parse_state_keys(text: str, family: str = "sgd") -> dict[str, str]:
    """`--state-key`: where the implementation keeps torch's state entries, as
    `torch_key=its_key,...`, or one name for the family's first key (SGD's momentum buffer);
    "" keeps torch's names. Unknown torch keys raise ValueError."""
    keys = [k.name for k in families.get(family).state]
    text = text.strip()
    if not text:
        return {}
    if "=" not in text:
        return {} if text == keys[0] else {keys[0]: text}
    mapping = {}
    for item in text.split(","):
        torch_key, sep, theirs = (part.strip() for part in item.partition("="))
        if not sep or not torch_key or not theirs:
            raise ValueError(f"expected torch_key=their_key, got {item.strip()!r}")
        if torch_key not in keys:
            raise ValueError(
                f"{torch_key!r} is not a state key of {family}; choose from {', '.join(keys)}"
            )
        if theirs != torch_key:
            mapping[torch_key] = theirs
    return mapping


@dataclass(frozen=True)
class RunOptions:
    """Everything that decides a verdict besides the programs themselves (JSON round-trippable
    through a report's settings, so a repro replays under the same options)."""

    implementation: str = "refimpl"
    family: str = "sgd"  # conformance.families: which torch optimizer is the reference
    contract: Contract | None = None  # None: strict for refimpl, semantic otherwise
    mode: Mode | None = None  # None: the implementation's default (exact / ulp)
    reference_path: ReferencePath = "for-loop"
    without: frozenset[str] = field(default_factory=frozenset)
    state_key: str = ""  # see parse_state_keys ("": torch's names)
    timeout: float | None = 10.0
    isolation: Isolation | None = None  # None: in-process for refimpl and torch, else process
    memory_limit: int = 4096  # MiB of address space the worker may add to what it started with

    @property
    def resolved_isolation(self) -> Isolation:
        if self.isolation is not None:
            return self.isolation
        return (
            "none"
            if self.implementation == IN_PROCESS[0] or self.implementation.startswith(IN_PROCESS[1])
            else "process"
        )

    @property
    def resolved_contract(self) -> Contract:
        if self.contract is not None:
            return self.contract
        return "strict" if self.implementation == "refimpl" else "semantic"

    @property
    def strict(self) -> bool:
        return self.resolved_contract == "strict"

    @property
    def spec(self) -> families.OptimizerFamily:
        """The family's declaration (`conformance.families`)."""
        return families.get(self.family)

    @property
    def state_keys(self) -> dict[str, str]:
        """torch's state key -> the implementation's, where they differ."""
        return parse_state_keys(self.state_key, self.family)

    @property
    def unsupported(self) -> dict[str, str]:
        """The features torch's reference path rejects (Adam's foreach path, a tensor lr),
        with why: never drawn on that path."""
        return dict(self.spec.unsupported.get(self.reference_path, {}))

    @property
    def excluded(self) -> frozenset[str]:
        """What programs never exercise: the features declared absent and those torch's
        reference path rejects."""
        return self.without | frozenset(self.unsupported)

    def has(self, feature: str) -> bool:
        """Whether programs exercise `feature` (neither declared absent nor rejected by the
        reference path)."""
        if feature not in self.spec.features:
            raise KeyError(feature)
        return feature not in self.excluded

    def required_group_keys(self) -> tuple[str, ...]:
        """The hyperparameters every group must hold, with torch's values."""
        return tuple(h.name for h in self.spec.drawn(self.without))

    def with_(self, **changes: Any) -> RunOptions:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "optimizer": self.implementation,
            "family": self.family,
            "contract": self.resolved_contract,
            "mode": self.mode,
            "reference_path": self.reference_path,
            "without": sorted(self.without),
            "state_key": self.state_key,
            "timeout": self.timeout,
            "isolation": self.resolved_isolation,
            "memory_limit": self.memory_limit,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunOptions:
        """From `to_json()` or a report's settings (which hold more keys)."""
        family = data.get("family", "sgd")
        return cls(
            implementation=data["optimizer"],
            family=family,
            contract=data.get("contract"),
            mode=data.get("mode"),
            reference_path=data.get("reference_path", "for-loop"),
            without=parse_features(data.get("without", []), family),
            state_key=data.get("state_key", ""),
            timeout=data.get("timeout", 10.0),
            isolation=data.get("isolation"),
            memory_limit=data.get("memory_limit", 4096),
        )
