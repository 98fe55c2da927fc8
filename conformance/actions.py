"""What users do to a model and its optimizer: one registry entry per kind of action.

Each `ActionKind` says what the action does to one side (`run`: a `Side` of
`conformance.implementations` and the action's arguments, all JSON values; it returns the loss
it produced, if any), which `--without` feature it needs, what it reaches for the coverage,
and how the harness judges it (a step: the error model's budgets; computing gradients: the
autograd budgets). A new action is one entry here and one `@rule` that draws its arguments in
`conformance.stateful`. Two actions need both sides at once and are run by the twins
(`conformance.machine`): a step with a closure (the closure's gradients are checked, then
replaced by torch's) and a state-dict round trip (state dicts move across).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ActionKind:
    description: str
    run: Callable[[Any, dict[str, Any], Any], Any] | None  # (side, args, closure hook)
    feature: str | None = None  # the --without feature that removes it
    counts_as: str | None = None  # the kind failures are keyed by (step with closure: step)
    steps: bool = False  # the optimizer steps: judged under the step's error model
    computes: bool = False  # gradients are computed: judged under autograd's budgets
    reaches: Callable[[dict[str, Any]], set[str]] | None = None  # features it reaches, besides
    # its own


def _backward(side: Any, args: dict[str, Any], hook: Any, twice: bool = False) -> Any:
    loss = side.loss(args["batch"])
    if twice:
        loss.backward(retain_graph=True)
    loss.backward()
    return side.lib.numpy(loss)


def _zero_grad(side: Any, args: dict[str, Any], hook: Any) -> None:
    if args["set_to_none"]:
        side.optimizer.zero_grad()  # the default, as most code calls it
    else:
        side.optimizer.zero_grad(set_to_none=False)


def _step(side: Any, args: dict[str, Any], hook: Any) -> None:
    side.optimizer.step()  # whatever it returns is not looked at: no closure, no loss


def _step_closure(side: Any, args: dict[str, Any], hook: Any) -> Any:
    def closure() -> Any:
        side.optimizer.zero_grad()
        loss = side.loss(args["batch"])
        loss.backward()
        if hook is not None:
            hook(side)
        return loss

    return side.returned(side.optimizer.step(closure))


def _set_hyperparameter(side: Any, args: dict[str, Any], hook: Any) -> None:
    group = side.optimizer.param_groups[args["group"] % len(side.optimizer.param_groups)]
    group[args["name"]] = side.options({args["name"]: args["value"]})[args["name"]]


def _add_param_group(side: Any, args: dict[str, Any], hook: Any) -> None:
    params = [side.params[n] for n in args["params"]]
    if args.get("flaw"):
        params = side.flawed(params, args["flaw"])
    side.optimizer.add_param_group({"params": params, **side.options(args["options"])})


def _construct(side: Any, args: dict[str, Any], hook: Any) -> None:
    groups = [
        {"params": [side.names[id(p)] for p in g["params"] if id(p) in side.names], "options": {}}
        for g in side.optimizer.param_groups
    ]
    side.optimizer = side.construct(groups, args["options"], args.get("flaw"))


def _requires_grad(value: bool) -> Callable[[Any, dict[str, Any], Any], None]:
    def run(side: Any, args: dict[str, Any], hook: Any) -> None:
        side.params[args["param"]].requires_grad_(value)

    return run


def _flawed(args: dict[str, Any]) -> set[str]:
    return {"invalid-hyperparameters"} if args.get("flaw") else set()


ACTIONS: dict[str, ActionKind] = {
    "backward": ActionKind(
        "forward on a fresh batch, then loss.backward(); grads accumulate if not cleared",
        _backward,
        computes=True,
    ),
    "backward_twice": ActionKind(
        "loss.backward(retain_graph=True), then loss.backward() again",
        lambda side, args, hook: _backward(side, args, hook, twice=True),
        counts_as="backward",
        computes=True,
    ),
    "zero_grad": ActionKind(
        "optimizer.zero_grad(set_to_none=...)",
        _zero_grad,
        reaches=lambda args: set() if args.get("set_to_none", True) else {"set-to-none-false"},
    ),
    "step": ActionKind("optimizer.step()", _step, steps=True),
    "step_closure": ActionKind(
        "optimizer.step(closure): the closure zeroes grads, runs forward/backward and returns "
        "the loss",
        _step_closure,
        feature="closure",
        counts_as="step",
        steps=True,
        computes=True,
    ),
    "set_hyperparameter": ActionKind(
        "param_groups[group][name] = value, as a scheduler does",
        _set_hyperparameter,
        feature="set-hyperparameter",
    ),
    "add_param_group": ActionKind(
        "optimizer.add_param_group with parameters in no group yet; with a 'flaw', also one "
        "torch rejects: 'duplicate' (already in a group), 'non-leaf' or 'non-tensor'",
        _add_param_group,
        feature="add-param-group",
        reaches=_flawed,
    ),
    "construct": ActionKind(
        "a new optimizer over the current groups' parameters from these hyperparameters (which "
        "may be invalid, or made invalid by a 'flaw' as for add_param_group); where it is "
        "built, it replaces the old one",
        _construct,
        feature="invalid-hyperparameters",
    ),
    "freeze": ActionKind("parameter.requires_grad_(False)", _requires_grad(False)),
    "unfreeze": ActionKind("parameter.requires_grad_(True)", _requires_grad(True)),
    "save_load": ActionKind(
        "state_dict() loaded into a fresh optimizer; source 'self' (each side its own), "
        "'reference' (torch's state loaded into the implementation too) or 'implementation' "
        "(the implementation's state loaded into torch too)",
        None,
        feature="state-dict",
        reaches=lambda args: set() if args.get("source") == "self" else {"cross-load"},
    ),
}


def reached(kind: str, args: dict[str, Any]) -> set[str]:
    """The features an action of `kind` with `args` exercises (for the coverage)."""
    entry = ACTIONS[kind]
    return ({entry.feature} if entry.feature else set()) | (
        entry.reaches(args) if entry.reaches else set()
    )


def counts_as(kind: str) -> str:
    """The kind of action failures are keyed by (a step with a closure is a step)."""
    return ACTIONS[kind].counts_as or kind
