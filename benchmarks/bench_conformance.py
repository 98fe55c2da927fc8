"""Throughput of a conformance run, against a bare twin loop over the same programs.

    python benchmarks/bench_conformance.py [--profile ci] [--repeat 1] [--seed 0]
                                           [--target refimpl] [--target module:Class@process]

For each target (default: refimpl in-process, and conformance.references:MinimalSGD in its
worker process), float32 only, one core (`jobs=1` where the runner has it):

1. `conformance.runner.run(target, dtypes=("float32",), settings=PROFILES[profile], seed=...)`
   runs, with `Twins.created` recording every program it executes (setup and actions) and
   where each program's time went (`Twins.seconds`).
2. A bare twin loop replays exactly those programs: two torch twins, each a model from
   `conformance.models.build(spec, dtype, "torch")` and a `torch.optim.SGD` (the for-loop
   path, as the reference), doing each action as plain torch code, and after each action
   comparing every tensor (parameters, grads, momentum buffers, the loss) with a plain
   equality check (`torch.equal`; where it says no, NaN positions count as equal).
3. Printed: programs/s, actions/s, the ratio of seconds per program of the run to the bare
   loop's, and the shares of the run's time spent in torch (the reference side doing the
   actions), in the implementation (doing the actions, measured where it runs: in a worker
   process at the same time as torch's side), building the twins, the rest of `Twins.run`
   (observing, synchronising, comparing) and outside the twins (Hypothesis drawing the
   programs, the state machine). "twins / bare" is the seconds spent in the twins (built and
   running the actions: what `conformance.machine` and the sides cost, Hypothesis left out)
   over the bare loop's. "CPU ratio" is the ratio in this process's CPU seconds (for an
   in-process implementation: what other processes on a shared machine do to the wall clock
   cancels out; a worker process's CPU seconds are not this process's, so none is given).

Each target is warmed up first (a dev-profile run, not measured: imports, Hypothesis's
strategies, the worker process); then each repeat runs the conformance run and then the bare
loop, back to back in this process (so that load from other processes hits both alike); the
fastest of each is kept.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from conformance import models  # noqa: E402
from conformance.machine import Twins  # noqa: E402
from conformance.options import RunOptions  # noqa: E402
from conformance.profiles import PROFILES  # noqa: E402
from conformance.program import Action, Setup  # noqa: E402
from conformance.runner import run  # noqa: E402

DEFAULT_TARGETS = ("refimpl", "conformance.references:MinimalSGD@process")

# --- the bare twin loop --------------------------------------------------------------------------


class _Twin:
    """One model and one torch.optim.SGD, doing a program's actions as user code does."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.model = models.build(setup.model, setup.dtype, "torch")
        self.params: dict[str, torch.Tensor] = dict(self.model.parameters)
        self.optimizer = self._sgd(
            [
                {"params": [self.params[n] for n in g.params], **self._options(g.options)}
                for g in setup.groups
            ],
            setup.defaults,
        )

    def _options(self, options: dict[str, Any]) -> dict[str, Any]:
        out = dict(options)
        lr = out.get("lr")
        if isinstance(lr, list) or (self.setup.tensor_lr and lr is not None):
            out["lr"] = torch.tensor(lr, dtype=torch.float64)
        return out

    def _sgd(self, groups: list[dict[str, Any]], defaults: dict[str, Any]) -> Any:
        return torch.optim.SGD(groups, **{**self._options(defaults), "foreach": False})

    def _flawed(self, params: list[Any], flaw: str) -> list[Any]:
        if flaw == "duplicate":
            return [*params, self.optimizer.param_groups[0]["params"][0]]
        if flaw == "non-leaf":
            leaf = torch.ones(2, dtype=getattr(torch, self.setup.dtype), requires_grad=True)
            return [*params, leaf * 2]
        return [*params, 1.0]

    def buffer(self, p: torch.Tensor) -> torch.Tensor | None:
        state = self.optimizer.state.get(p)
        return None if not state else state.get("momentum_buffer")

    def apply(self, action: Action, partner: _Twin, first: bool) -> torch.Tensor | None:
        a = action.args
        if action.kind in ("backward", "backward_twice"):
            loss = self.model.loss(a["batch"])
            if action.kind == "backward_twice":
                loss.backward(retain_graph=True)
            loss.backward()
            return loss.detach()
        if action.kind == "zero_grad":
            self.optimizer.zero_grad(set_to_none=a["set_to_none"])
        elif action.kind == "step":
            self.optimizer.step()
        elif action.kind == "step_closure":

            def closure() -> torch.Tensor:
                self.optimizer.zero_grad()
                loss = self.model.loss(a["batch"])
                loss.backward()
                return loss

            return self.optimizer.step(closure).detach()
        elif action.kind == "set_hyperparameter":
            groups = self.optimizer.param_groups
            groups[a["group"] % len(groups)][a["name"]] = self._options({a["name"]: a["value"]})[
                a["name"]
            ]
        elif action.kind == "add_param_group":
            params = [self.params[n] for n in a["params"]]
            if a.get("flaw"):
                params = self._flawed(params, a["flaw"])
            self.optimizer.add_param_group({"params": params, **self._options(a["options"])})
        elif action.kind == "construct":
            groups = [{"params": list(g["params"])} for g in self.optimizer.param_groups]
            flaw = a.get("flaw")
            if flaw == "duplicate":
                groups.append({"params": groups[0]["params"][:1]})
            elif flaw is not None:
                groups[0]["params"] = self._flawed(groups[0]["params"], flaw)
            self.optimizer = self._sgd(groups, a["options"])
        elif action.kind in ("freeze", "unfreeze"):
            self.params[a["param"]].requires_grad_(action.kind == "unfreeze")
        elif action.kind == "save_load":
            # the first twin plays torch, the second the implementation
            source = a["source"]
            other = (source == "reference" and not first) or (source == "implementation" and first)
            state = (
                copy.deepcopy(partner.optimizer.state_dict())
                if other
                else self.optimizer.state_dict()
            )
            fresh = self._sgd(
                [{"params": list(g["params"])} for g in self.optimizer.param_groups],
                self.setup.defaults,
            )
            fresh.load_state_dict(state)
            self.optimizer = fresh
        return None


def _equal(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is b
    return torch.equal(a, b) or bool(((a == b) | (a.isnan() & b.isnan())).all())


def bare_loop(programs: list[tuple[Setup, list[Action]]]) -> tuple[float, float, int]:
    """Runs the programs through two torch twins, comparing after every action; returns
    the seconds, the CPU seconds and how many actions found the twins unequal (0: torch is
    deterministic)."""
    unequal = 0
    batches = getattr(models, "_batch", None)  # the batches' cache, warm from the run:
    if hasattr(batches, "cache_clear"):  # the twins compute them too, as the run's did
        batches.cache_clear()
    start, cpu = time.perf_counter(), time.process_time()
    for setup, actions in programs:
        try:
            twins = (_Twin(setup), _Twin(setup))
        except Exception:  # torch rejects the construction: so does the run
            continue
        for action in actions:
            results: list[tuple[torch.Tensor | None, str | None]] = []
            for i, twin in enumerate(twins):
                try:
                    results.append((twin.apply(action, twins[1 - i], i == 0), None))
                except Exception as error:
                    results.append((None, type(error).__name__))
            (loss_a, error_a), (loss_b, error_b) = results
            same = error_a == error_b and _equal(loss_a, loss_b)
            a, b = twins
            for name, p in a.params.items():
                q = b.params[name]
                same &= _equal(p, q) and _equal(p.grad, q.grad) and _equal(a.buffer(p), b.buffer(q))
            unequal += not same
    return time.perf_counter() - start, time.process_time() - cpu, unequal


# --- the conformance run -------------------------------------------------------------------------


@dataclass
class Measured:
    target: str
    programs: int  # the run's, as its coverage counts them
    actions: int
    seconds: float
    cpu: float  # CPU seconds of this process (not a worker's)
    recorded: list[tuple[Setup, list[Action]]]  # every program the twins ran
    shares: dict[str, float]  # seconds: reference, implementation, build, twins, outside
    twins: float  # seconds in the twins: built, and running actions


def conformance_run(target: str, isolation: str | None, profile: str, seed: int) -> Measured:
    twins: list[Twins] = []
    options = RunOptions(target, isolation=isolation)  # type: ignore[arg-type]
    extra = {"jobs": 1} if "jobs" in inspect.signature(run).parameters else {}
    Twins.created = twins.append
    cpu = time.process_time()
    try:
        result = run(options, dtypes=("float32",), settings=PROFILES[profile], seed=seed, **extra)
    finally:
        Twins.created = None
    cpu = time.process_time() - cpu
    if not result.passed:
        raise SystemExit(
            f"{target} failed, a throughput benchmark needs a correct optimizer: "
            f"{result.divergence}"
        )
    seconds = {
        key: sum(t.seconds[key] for t in twins)
        for key in ("build", "run", "reference", "implementation")
    }
    shares = {
        "reference": seconds["reference"],
        "implementation": seconds["implementation"],
        "build": seconds["build"],
        "twins": seconds["run"]
        - seconds["reference"]
        - (0.0 if isolation == "process" else seconds["implementation"]),
        "outside": result.seconds - seconds["run"] - seconds["build"],
    }
    return Measured(
        target if isolation is None else f"{target}@{isolation}",
        result.coverage.programs,
        result.coverage.actions,
        result.seconds,
        cpu,
        [(t.setup, list(t.actions)) for t in twins],
        shares,
        seconds["build"] + seconds["run"],
    )


def measure(spec: str, profile: str, seed: int, repeat: int) -> None:
    target, _, isolation = spec.partition("@")
    # warm-up, not measured: imports (torch._dynamo on a first step), Hypothesis's strategies
    # and the worker process, as any run after the first in a process has them
    run(
        RunOptions(target, isolation=isolation or None),  # type: ignore[arg-type]
        dtypes=("float32",),
        settings=PROFILES["dev"],
        seed=seed + 1,
        **({"jobs": 1} if "jobs" in inspect.signature(run).parameters else {}),
    )
    best: Measured | None = None
    bare = bare_cpu = float("inf")
    unequal = 0
    for _ in range(repeat):
        measured = conformance_run(target, isolation or None, profile, seed)
        if best is None or measured.seconds < best.seconds:
            best = measured
        seconds, cpu, unequal = bare_loop(measured.recorded)
        bare, bare_cpu = min(bare, seconds), min(bare_cpu, cpu)
    assert best is not None
    per_program = best.seconds / best.programs
    bare_per_program = bare / len(best.recorded)
    # in CPU seconds, where the implementation runs in this process (a worker's are not here)
    cpu_ratio = (
        "-"
        if isolation == "process"
        else f"{best.cpu / best.programs / (bare_cpu / len(best.recorded)):.2f}"
    )
    share = lambda key: f"{100 * best.shares[key] / best.seconds:.0f}%"
    print(
        f"| {best.target} | {best.programs} | {best.actions} | {best.seconds:.2f} | "
        f"{best.programs / best.seconds:.1f} | {best.actions / best.seconds:.0f} | "
        f"{bare:.2f} | **{per_program / bare_per_program:.2f}** | {cpu_ratio} | "
        f"{best.twins / bare:.2f} | {share('reference')} | "
        f"{share('implementation')} | {share('build')} | {share('twins')} | "
        f"{share('outside')} |",
        flush=True,
    )
    if len(best.recorded) != best.programs or unequal:
        print(
            f"  ({len(best.recorded)} programs recorded; the bare loop saw {unequal} "
            f"action(s) with unequal twins)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="ci", choices=sorted(PROFILES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per target, the fastest kept (default 1)"
    )
    parser.add_argument(
        "--target",
        action="append",
        help="refimpl or module:Class, @process or @none for its isolation "
        f"(repeatable; default {' '.join(DEFAULT_TARGETS)})",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # as a run does
    print(f"profile {args.profile}, float32, seed {args.seed}, fastest of {args.repeat}\n")
    print(
        "| target | programs | actions | seconds | programs/s | actions/s | bare loop s | "
        "ratio | CPU ratio | twins / bare | torch | implementation | build | "
        "twins' overhead | outside twins |"
    )
    print("| --- " * 15 + "|")
    for spec in args.target or DEFAULT_TARGETS:
        measure(spec, args.profile, args.seed, args.repeat)


if __name__ == "__main__":
    main()
