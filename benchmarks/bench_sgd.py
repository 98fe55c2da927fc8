"""refimpl's SGD step against torch's for-loop and foreach steps, in the same run.

Cases: 10, 100 and 1,000 parameter tensors of mixed sizes (log-uniform, 10⁷ elements in total
for every count), float32 and float64, with and without momentum / nesterov / weight decay.
Each side runs one thread (set before numpy and torch are imported). A step's time is the
median of several timed steps after a warm-up; the gradients are fixed, so every step does the
same work.

Also measured: refimpl's step with its exact rounding (`refimpl.rounding.add_scaled`) replaced
by plain numpy arithmetic (`a + alpha * b`, two roundings, no emulation), so the cost of exact
rounding is visible on its own.

Targets: refimpl ≤ 1.5× torch foreach on the largest case; exact rounding ≤ 3× the plain numpy
update.

Usage: python benchmarks/bench_sgd.py [--quick] [--elements N] [--dtype float32|float64|both]
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from itertools import product  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import refimpl  # noqa: E402
import refimpl.optim as ref_optim  # noqa: E402
from conformance.bridge import torch_capability  # noqa: E402

CONFIGS = {
    "plain": {},
    "momentum": {"momentum": 0.9, "dampening": 0.1},
    "nesterov+decay": {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-4},
}


def sizes(count: int, total: int, rng: np.random.Generator) -> list[int]:
    """`count` log-uniform sizes summing to about `total`."""
    raw = np.exp(rng.uniform(0, np.log(total), count))
    return [max(1, int(s)) for s in raw / raw.sum() * total]


def timed(step: Callable[[], None], repeats: int) -> float:
    step()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


def measure(count: int, total: int, config: dict, repeats: int, dtype: type) -> dict[str, float]:
    rng = np.random.default_rng(count)
    arrays = [rng.standard_normal(n).astype(dtype) for n in sizes(count, total, rng)]
    grads = [rng.standard_normal(a.size).astype(dtype) for a in arrays]
    times = {}
    for path in ("for-loop", "foreach"):
        params = [torch.tensor(a, requires_grad=True) for a in arrays]
        for p, g in zip(params, grads, strict=True):
            p.grad = torch.from_numpy(g)
        opt = torch.optim.SGD(params, lr=0.01, foreach=path == "foreach", **config)
        times[f"torch {path}"] = timed(opt.step, repeats)
    params = [refimpl.tensor(a, requires_grad=True) for a in arrays]
    for p, g in zip(params, grads, strict=True):
        p.grad = refimpl.tensor(g)
    opt = ref_optim.SGD(params, lr=0.01, cpu_capability=torch_capability(), **config)
    times["refimpl"] = timed(opt.step, repeats)
    exact = ref_optim.add_scaled
    ref_optim.add_scaled = lambda a, b, alpha, rounding: a + alpha * b  # type: ignore[assignment]
    try:
        times["refimpl plain numpy"] = timed(opt.step, repeats)
    finally:
        ref_optim.add_scaled = exact
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument(
        "--elements", type=int, default=10_000_000, help="total elements per case (default 10^7)"
    )
    parser.add_argument("--dtype", choices=["float32", "float64", "both"], default="both")
    args = parser.parse_args()
    torch.set_num_threads(1)
    repeats = 3 if args.quick else 7
    print(f"torch CPU capability: {torch_capability()}; {args.elements:,} elements per case")
    header = (
        f"{'dtype':7} {'params':>6} {'config':15} {'torch loop':>10} {'foreach':>9}"
        f" {'refimpl':>9} {'plain np':>9} {'ref/foreach':>11} {'exact/plain':>11}"
    )
    print(header)
    print("-" * len(header))
    dtypes = ["float32", "float64"] if args.dtype == "both" else [args.dtype]
    for dtype, count, (name, config) in product(dtypes, (10, 100, 1000), CONFIGS.items()):
        t = measure(count, args.elements, config, repeats, getattr(np, dtype))
        loop, foreach = t["torch for-loop"], t["torch foreach"]
        print(
            f"{dtype:7} {count:>6} {name:15} {loop:>10.1f} {foreach:>9.1f}"
            f" {t['refimpl']:>9.1f} {t['refimpl plain numpy']:>9.1f}"
            f" {t['refimpl'] / t['torch foreach']:>11.2f}"
            f" {t['refimpl'] / t['refimpl plain numpy']:>11.2f}"
        )
    print(
        "(ms per step, median; targets: ref/foreach <= 1.5 on the largest case, exact/plain <= 3)"
    )


if __name__ == "__main__":
    main()
