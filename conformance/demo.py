"""Trains the same small MLP with refimpl and with torch, step by step, and prints how far apart
they are: `python -m conformance.demo` (also `make run`).

The model is Linear(4, 8) -> ReLU -> Linear(8, 3) with cross-entropy on one fixed synthetic
batch, trained by plain SGD (`p -= lr * p.grad` under no_grad, then zero_grad), in float64 and
float32. The torch model is a twin: it starts from the refimpl model's weights. Each step prints
both losses and the largest absolute and ULP differences of the gradients and of the updated
parameters. ULP distances are largest for gradients near zero: a sum that cancels to a tiny
value keeps rounding errors the size of its terms, and the two libraries sum in different
orders.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

import refimpl
import refimpl.nn as rnn

STEPS = 20
LR = 0.1
BATCH, FEATURES, HIDDEN, CLASSES = 16, 4, 8, 3


def ulp_distance(a: np.ndarray, b: np.ndarray) -> int:
    """Largest number of representable floats between matching elements of a and b."""
    widths: dict[np.dtype, type[np.int32] | type[np.int64]] = {
        np.dtype(np.float32): np.int32,
        np.dtype(np.float64): np.int64,
    }
    bits = widths[a.dtype]
    low = int(np.iinfo(bits).min)

    def ordered(x: np.ndarray) -> np.ndarray:
        # Maps floats to integers in the same order (adjacent floats differ by one).
        i = x.view(bits).astype(object)
        return np.where(i < 0, low - i, i)

    return int(np.max(np.abs(ordered(a) - ordered(b)), initial=0))


@dataclass
class Gap:
    """How far refimpl's arrays are from torch's: largest absolute difference and ULPs."""

    abs: float = 0.0
    ulp: int = 0

    def add(self, ours: np.ndarray, theirs: np.ndarray) -> None:
        self.abs = max(self.abs, float(np.max(np.abs(ours - theirs), initial=0.0)))
        self.ulp = max(self.ulp, ulp_distance(ours, theirs))


def models(dtype: np.dtype) -> tuple[rnn.Module, torch.nn.Module]:
    """A refimpl MLP and its torch twin, loaded with the refimpl model's initial weights."""
    ours = rnn.Sequential(
        rnn.Linear(FEATURES, HIDDEN, dtype=dtype, rng=np.random.default_rng(1)),
        rnn.ReLU(),
        rnn.Linear(HIDDEN, CLASSES, dtype=dtype, rng=np.random.default_rng(2)),
    )
    theirs = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, CLASSES)
    ).to(getattr(torch, dtype.name))
    theirs.load_state_dict(
        {name: torch.from_numpy(t.data.copy()) for name, t in ours.state_dict().items()}
    )
    return ours, theirs


def train(dtype: np.dtype) -> tuple[Gap, Gap]:
    """Runs STEPS of SGD on both models, printing one line per step; returns the worst gaps."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, FEATURES)).astype(dtype)
    y = rng.integers(0, CLASSES, size=BATCH)
    ours, theirs = models(dtype)
    loss_ours, loss_theirs = rnn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    x_ours, y_ours = refimpl.tensor(x), refimpl.tensor(y)
    x_theirs, y_theirs = torch.from_numpy(x), torch.from_numpy(y)

    print(
        f"\n{dtype.name}: {'step':>4} {'loss refimpl':>20} {'loss torch':>20} "
        f"{'|d grad|':>9} {'ulp':>4} {'|d param|':>9} {'ulp':>4}"
    )
    worst_grad, worst_param = Gap(), Gap()
    for step in range(1, STEPS + 1):
        a = loss_ours(ours(x_ours), y_ours)
        b = loss_theirs(theirs(x_theirs), y_theirs)
        a.backward()
        b.backward()
        grad, param = Gap(), Gap()
        pairs = list(zip(ours.parameters(), theirs.parameters(), strict=True))
        for p, q in pairs:
            assert p.grad is not None and q.grad is not None  # both models ran backward
            grad.add(p.grad.data, q.grad.numpy())
        with refimpl.no_grad():
            for p in ours.parameters():
                assert p.grad is not None
                p.sub_(LR * p.grad)  # the same in-place update as torch's `q -= LR * q.grad`
        with torch.no_grad():
            for q in theirs.parameters():
                assert q.grad is not None
                # in place, -= gives q itself; torch's stubs type it as a Tensor, not q's Parameter
                q -= LR * q.grad  # type: ignore[misc]
        ours.zero_grad()
        theirs.zero_grad()
        for p, q in pairs:
            param.add(p.data, q.detach().numpy())
        print(
            f"{'':9}{step:>4} {a.item():20.15g} {b.item():20.15g} "
            f"{grad.abs:9.2e} {grad.ulp:4d} {param.abs:9.2e} {param.ulp:4d}"
        )
        worst_grad = Gap(max(worst_grad.abs, grad.abs), max(worst_grad.ulp, grad.ulp))
        worst_param = Gap(max(worst_param.abs, param.abs), max(worst_param.ulp, param.ulp))
    return worst_grad, worst_param


def main() -> None:
    summary = []
    for dtype in (refimpl.float64, refimpl.float32):
        grad, param = train(dtype)
        summary.append(
            f"{dtype.name}: grads within {grad.ulp} ulp ({grad.abs:.1e}), "
            f"params within {param.ulp} ulp ({param.abs:.1e})"
        )
    print(f"\nrefimpl vs torch after {STEPS} SGD steps: " + "; ".join(summary))


if __name__ == "__main__":
    main()
