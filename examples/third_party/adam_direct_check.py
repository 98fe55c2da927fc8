"""Direct check of the Adam/AdamW adapters here against torch.optim.Adam/AdamW (for-loop path),
without the conformance harness: the numbers quoted in README.md's Adam sections.

    python -m examples.third_party.adam_direct_check [--steps N] [--size N] [--only NAME ...]
                                                     [--no-probes]

For each adapter, dtype (float32, float64) and configuration its constructor can take (plain,
weight decay, amsgrad, maximize, foreach=False and foreach=True with weight decay, a 0-dim
tensor lr of the parameter's dtype), N steps (default 5) on one random parameter of `--size`
elements (default 1,000) with fresh random gradients, the same for both sides: whether the
parameters are bitwise equal after every step, else the largest distance in ULP over all steps
(and the largest absolute difference); the same for each of torch's state entries (`exp_avg`,
`exp_avg_sq`, `max_exp_avg_sq`) under the name torch uses, `step` as each stores it, and
whether `step()` changed `p.grad`. Then the probes (float32): constructions torch rejects or
accepts, group keys, state keys, `step(closure)`, its own state dict round trip, state dicts
moved both ways. Prints Markdown; exit status 0.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import inspect
import io
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

MODULE = "examples.third_party"
LR, WEIGHT_DECAY = 1e-2, 0.1


@dataclass(frozen=True)
class Target:
    name: str
    target: str  # module:Class, relative to MODULE
    family: str  # "adam" or "adamw"

    def load(self) -> type:
        module, cls = self.target.split(":")
        return getattr(importlib.import_module(f"{MODULE}.{module}"), cls)


TARGETS = (
    Target("timm AdamWLegacy", "timm_adamw:TimmAdamW", "adamw"),
    Target("optimi Adam", "optimi_adam:OptimiAdam", "adam"),
    Target("optimi AdamW", "optimi_adam:OptimiAdamW", "adamw"),
    Target("transformers AdamW", "transformers_adamw:TransformersAdamW", "adamw"),
    Target("torch-optimizer Lamb(adam)", "torch_optimizer_lamb:TorchOptimizerLambAsAdam", "adam"),
    Target(
        "pytorch-optimizer FlashAdamW",
        "pytorch_optimizer_flash_adamw:PytorchOptimizerFlashAdamW",
        "adamw",
    ),
)
STATE = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def reference(family: str) -> type[torch.optim.Optimizer]:
    return torch.optim.AdamW if family == "adamw" else torch.optim.Adam


def arguments(cls: type) -> set[str]:
    return set(inspect.signature(cls).parameters)


def configurations(cls: type) -> dict[str, dict[str, Any]]:
    """The configurations this constructor can take: name -> keyword arguments (lr aside)."""
    named = arguments(cls)
    configs: dict[str, dict[str, Any]] = {"plain": {"weight_decay": 0.0}}
    if "weight_decay" in named:
        configs["weight decay"] = {"weight_decay": WEIGHT_DECAY}
    if "amsgrad" in named:
        configs["amsgrad"] = {"weight_decay": 0.0, "amsgrad": True}
    if "maximize" in named:
        configs["maximize"] = {"weight_decay": 0.0, "maximize": True}
    if "foreach" in named:
        configs["foreach=False"] = {"weight_decay": WEIGHT_DECAY, "foreach": False}
        configs["foreach=True"] = {"weight_decay": WEIGHT_DECAY, "foreach": True}
    configs["tensor lr"] = {"weight_decay": 0.0, "lr": "tensor"}
    return {
        name: {k: v for k, v in kw.items() if k in named or k == "lr"}
        for name, kw in configs.items()
    }


def ordered(a: np.ndarray) -> np.ndarray:
    """Floats as integers in the order of the floats (+0 and -0 both 0), as Python ints."""
    bits = {np.dtype(np.float32): np.int32, np.dtype(np.float64): np.int64}[a.dtype]
    i = a.view(bits).astype(object)
    top = 1 << (8 * a.itemsize - 1)
    return np.where(i < 0, -(i + top), i)


def ulp(a: torch.Tensor, b: torch.Tensor) -> int:
    x, y = a.detach().numpy(), b.detach().numpy()
    if x.shape != y.shape or x.dtype != y.dtype:
        return -1
    return int(np.max(np.abs(ordered(x) - ordered(y)))) if x.size else 0


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def value(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor({x.item():g}, {str(x.dtype).removeprefix('torch.')})"
    return f"{type(x).__name__} {x!r}"


@dataclass
class Compared:
    bitwise: bool = True
    ulp: int = 0
    abs: float = 0.0
    missing: bool = False

    def add(self, expected: torch.Tensor, actual: Any) -> None:
        if not isinstance(actual, torch.Tensor):
            self.missing, self.bitwise = True, False
            return
        distance = ulp(expected, actual)
        self.bitwise &= bool(torch.equal(expected, actual))
        self.ulp = max(self.ulp, distance) if distance >= 0 and self.ulp >= 0 else -1
        if expected.shape == actual.shape:
            self.abs = max(self.abs, float((expected.double() - actual.double()).abs().max()))

    def cell(self) -> str:
        if self.missing:
            return "missing"
        return "bitwise" if self.bitwise else f"{self.ulp:,} ULP ({self.abs:.1e})"


def run(
    target: Target, cls: type, config: dict[str, Any], dtype: torch.dtype, steps: int, size: int
) -> str:
    g = torch.Generator().manual_seed(0)
    start = torch.randn(size, generator=g, dtype=torch.float64).to(dtype)
    grads = [torch.randn(size, generator=g, dtype=torch.float64).to(dtype) for _ in range(steps)]
    kwargs = dict(config)
    tensor_lr = kwargs.pop("lr", None) == "tensor"
    ours, theirs = start.clone().requires_grad_(), start.clone().requires_grad_()
    lr: float | torch.Tensor = torch.tensor(LR, dtype=dtype) if tensor_lr else LR
    reference_kwargs = {**kwargs, "foreach": False}
    ref = reference(target.family)([theirs], lr=lr, **reference_kwargs)
    try:
        with quiet():
            opt = cls([ours], lr=lr, **kwargs)
    except Exception as error:
        return f"construction: {type(error).__name__}: {error}"
    param, grad_written = Compared(), False
    states = {key: Compared() for key in STATE}
    for grad in grads:
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        try:
            with quiet():
                opt.step()
        except Exception as error:
            return f"step: {type(error).__name__}: {error}"
        ref.step()
        param.add(theirs.detach(), ours.detach())
        grad_written |= not torch.equal(ours.grad, grad)
        for key in STATE:
            if key in ref.state[theirs]:
                states[key].add(ref.state[theirs][key], opt.state[ours].get(key))
    step = opt.state[ours].get("step", "missing")
    cells = [
        param.cell(),
        *(states[k].cell() if k in ref.state[theirs] else "—" for k in STATE),
        value(step) if step != "missing" else "missing",
        "changed" if grad_written else "kept",
    ]
    return " | ".join(cells)


def attempt(action: Callable[[], Any]) -> str:
    try:
        with quiet(), contextlib.redirect_stdout(io.StringIO()):
            action()
    except Exception as error:
        return f"{type(error).__name__}: {' '.join(str(error).split())[:110]}"
    return "ok"


def probes(target: Target, cls: type) -> list[tuple[str, str, str]]:
    """(probe, torch, the adapter) for the probes where they may differ."""
    ref_cls = reference(target.family)
    named = arguments(cls)
    p = lambda: [torch.zeros(3, requires_grad=True)]
    rows = []
    constructions: list[tuple[str, dict[str, Any]]] = [
        ("lr=0", {"lr": 0.0}),
        ("lr=-1", {"lr": -1.0}),
        ("betas=(1.0, 0.999)", {"betas": (1.0, 0.999)}),
        ("betas=(0.9, 1.0)", {"betas": (0.9, 1.0)}),
        ("eps=-1", {"eps": -1.0}),
        ("2-element tensor lr", {"lr": torch.tensor([0.1, 0.2])}),
    ]
    if "weight_decay" in named:
        constructions.append(("weight_decay=-1", {"weight_decay": -1.0}))
    for name, kw in constructions:
        rows.append(
            (
                f"construct {name}",
                attempt(lambda kw=kw: ref_cls(p(), **kw)),
                attempt(lambda kw=kw: cls(p(), **kw)),
            )
        )

    with quiet():
        ours, theirs = torch.randn(4).requires_grad_(), torch.randn(4).requires_grad_()
        opt, ref = cls([ours]), ref_cls([theirs], foreach=False)
    ref_keys, our_keys = set(ref.param_groups[0]), set(opt.param_groups[0])
    rows.append(
        (
            "group keys torch has, the adapter not",
            "",
            ", ".join(sorted(ref_keys - our_keys)) or "none",
        )
    )
    rows.append(
        ("group keys the adapter adds", "", ", ".join(sorted(our_keys - ref_keys)) or "none")
    )
    for x, o in ((ours, opt), (theirs, ref)):
        x.grad = torch.ones(4)
        with quiet():
            o.step()
    rows.append(
        ("state keys after a step", ", ".join(ref.state[theirs]), ", ".join(opt.state[ours]))
    )
    rows.append(
        (
            "group keys after a step, new",
            "",
            ", ".join(sorted(set(opt.param_groups[0]) - our_keys)) or "none",
        )
    )

    def closure_step(o: torch.optim.Optimizer, x: torch.Tensor) -> None:
        def closure() -> torch.Tensor:
            o.zero_grad()
            loss = (x * x).sum()
            loss.backward()
            return loss

        o.step(closure)

    rows.append(
        (
            "step(closure) with backward inside",
            attempt(lambda: closure_step(ref, theirs)),
            attempt(lambda: closure_step(opt, ours)),
        )
    )

    def into_adapter() -> None:
        x = torch.randn(4).requires_grad_()
        with quiet():
            o = cls([x])
        o.load_state_dict(ref.state_dict())
        x.grad = torch.ones(4)
        with quiet():
            o.step()

    def into_torch() -> None:
        x = torch.randn(4).requires_grad_()
        o = ref_cls([x], foreach=False)
        o.load_state_dict(opt.state_dict())
        x.grad = torch.ones(4)
        o.step()

    def round_trip() -> None:
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(4, generator=g).requires_grad_(), torch.zeros(4).requires_grad_()
        with quiet():
            a = cls([x])
            x.grad = torch.randn(4, generator=g)
            a.step()
            with torch.no_grad():
                y.copy_(x)
            b = cls([y])
            b.load_state_dict(copy.deepcopy(a.state_dict()))
            x.grad = torch.randn(4, generator=g)
            y.grad = x.grad.clone()
            a.step()
            b.step()
        if not torch.equal(x, y):
            raise AssertionError(
                f"after the round trip the next step differs by {float((x - y).abs().max()):.1e}"
            )

    def late_parameter() -> str:
        """A parameter without a gradient at step 1, stepped from step 2: its first update
        against torch's (torch counts steps per parameter)."""
        g = torch.Generator().manual_seed(2)
        start = [torch.randn(1000, generator=g) for _ in range(2)]
        grads = [[torch.randn(1000, generator=g) for _ in range(2)] for _ in range(2)]
        mine, torchs = ([s.clone().requires_grad_() for s in start] for _ in range(2))
        with quiet():
            o, r = cls(mine), ref_cls(torchs, foreach=False)
        for step in range(2):
            for i in range(2):
                for xs in (mine, torchs):
                    xs[i].grad = None if (i == 1 and step == 0) else grads[step][i].clone()
            with quiet():
                o.step()
            r.step()
        late = float((torchs[1] - mine[1]).detach().abs().max())
        return (
            f"{ulp(torchs[1].detach(), mine[1].detach()):,} ULP ({late:.1e}; first "
            f"parameter: {ulp(torchs[0].detach(), mine[0].detach()):,} ULP)"
        )

    rows.append(("a parameter first stepped at step 2: its param vs torch's", "", late_parameter()))
    rows.append(("own state dict round trip, then step() as without", "", attempt(round_trip)))
    rows.append(("torch's state dict loaded, then step()", "", attempt(into_adapter)))
    rows.append(("its state dict loaded into torch, then step()", attempt(into_torch), ""))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="adam_direct_check", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="a substring of an adapter's name; repeatable",
    )
    parser.add_argument("--no-probes", action="store_true")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    print(
        f"torch {torch.__version__}; {args.steps} steps, {args.size} elements, lr {LR}, "
        f"weight_decay {WEIGHT_DECAY} where on; reference: torch.optim.Adam/AdamW, "
        "foreach=False\n"
    )
    for target in TARGETS:
        if args.only and not any(o.lower() in target.name.lower() for o in args.only):
            continue
        try:
            cls = target.load()
        except Exception as error:
            print(f"## {target.name}\n\nnot loaded: {type(error).__name__}: {error}\n")
            continue
        print(f"## {target.name} ({target.family})\n")
        print("| configuration | dtype | param | " + " | ".join(STATE) + " | its step | p.grad |")
        print("| --- " * (5 + len(STATE)) + "|")
        for name, config in configurations(cls).items():
            for dtype in (torch.float32, torch.float64):
                result = run(target, cls, config, dtype, args.steps, args.size)
                print(f"| {name} | {str(dtype).removeprefix('torch.')} | {result} |")
        if not args.no_probes:
            print("\n| probe | torch | the adapter |\n| --- | --- | --- |")
            for row in probes(target, cls):
                print("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
