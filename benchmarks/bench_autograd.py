"""refimpl vs torch: time and peak memory of one training iteration of a small MLP.

One iteration is what an SGD loop does, written the same way for both libraries:

    for p in params: p.grad = None                                  # zero_grad(set_to_none)
    loss = cross_entropy(linear(relu(linear(x, w1, b1)), w2, b2), y)
    loss.backward()
    with no_grad():
        for p in params: p -= lr * p.grad

on MLPs in-hidden-out (ReLU) in float64: 4-8-3 (batch 2), 32-64-10 (batch 16), 784-256-10
(batch 64) and 1024-2048-1000 (batch 128). Both sides start from the same weights and data.

How it is measured
------------------
* Every (library, model, measurement) runs in its own fresh subprocess, so that each side gets
  its own process memory and the thread settings apply before numpy or torch is imported:
  OMP/OPENBLAS/MKL/... NUM_THREADS=1 in the environment, and torch.set_num_threads(1).
  The subprocesses run one after another, never concurrently.
* Time: a few warm-up iterations, then many samples, each timing (time.perf_counter) a batch of
  consecutive iterations (enough for the batch to take ~20 ms, so the small models' samples are
  not dominated by the timer); a round's value is the median over samples of the time per
  iteration. The two sides' rounds alternate (refimpl, torch, refimpl, torch, ...; 3 rounds
  each, 1 with --quick), and each side reports its fastest round: a round slowed down by another
  process on the machine is discarded, the same way for both. The garbage collector stays
  enabled on both sides, as in a real loop. The load average before and after is printed, since
  a busy machine inflates both sides (and not necessarily equally).
* Peak memory: the growth of the process's resident set over the iteration, measured the same
  way for both sides (tracemalloc cannot see torch's allocations). After setup (imports, weights,
  data) and two warm-up iterations the gradients are dropped, the kernel's high-water mark is
  reset (writing 5 to /proc/self/clear_refs) and the resident size read (VmRSS); three
  iterations later the high-water mark (VmHWM) is read. Peak = VmHWM - VmRSS at the start, so
  it covers activations, saved tensors, gradients and temporaries, not the weights or data.
  Both libraries allocate through glibc malloc, whose default would keep freed blocks mapped
  (and hide peaks after warm-up), so the memory subprocesses run with
  MALLOC_MMAP_THRESHOLD_=65536: every block of 64 KiB or more is mapped on allocation and
  returned on free, and the resident set follows the live large buffers. Timing subprocesses
  use the default allocator settings. Where ru_maxrss is all the platform offers, the script
  falls back to it (coarser: it cannot be reset).
  For the two small models every array is smaller than a page, so their peak is the allocator's
  and interpreter's noise (a few pages); the memory target is judged only where torch's peak is
  at least 1 MiB, and the table says so.

Targets: time refimpl/torch <= 0.7 for the two small models and <= 1.1 for the two large ones;
peak memory <= 1.2x torch's.

Usage: python benchmarks/bench_autograd.py [--quick] [--json PATH] [--models NAME ...] [--strict]
(--strict: exit 1 when a target is missed). Environment variables reach the measured processes,
so e.g. glibc's MALLOC_TRIM_THRESHOLD_ can be set on the command line to see its effect.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

# name, inputs, hidden, outputs, batch
MODELS = [
    ("4-8-3", 4, 8, 3, 2),
    ("32-64-10", 32, 64, 10, 16),
    ("784-256-10", 784, 256, 10, 64),
    ("1024-2048-1000", 1024, 2048, 1000, 128),
]
SMALL = {"4-8-3", "32-64-10"}
TIME_TARGET_SMALL, TIME_TARGET_LARGE, MEMORY_TARGET = 0.7, 1.1, 1.2
MEMORY_JUDGED_FROM_MIB = 1.0
LR = 0.01
SEED = 0
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "BLIS_NUM_THREADS",
)


# Worker side (runs in the subprocess) ---------------------------------------------------------


def _initial_arrays(n_in: int, n_hidden: int, n_out: int, batch: int) -> dict:
    """Weights as nn.Linear initialises them (uniform in ±1/sqrt(fan_in)), data and labels."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    bound1, bound2 = 1 / np.sqrt(n_in), 1 / np.sqrt(n_hidden)
    return {
        "w1": rng.uniform(-bound1, bound1, (n_hidden, n_in)),
        "b1": rng.uniform(-bound1, bound1, n_hidden),
        "w2": rng.uniform(-bound2, bound2, (n_out, n_hidden)),
        "b2": rng.uniform(-bound2, bound2, n_out),
        "x": rng.standard_normal((batch, n_in)),
        "y": rng.integers(0, n_out, batch),
    }


def _setup(side: str, shape: tuple[int, int, int, int]):
    """(params, step): the model's parameters and a function running one training iteration."""
    arrays = _initial_arrays(*shape)
    if side == "torch":
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(1)
        lib = torch

        def make(a, requires_grad=False):
            return torch.tensor(a, requires_grad=requires_grad)
    else:
        import refimpl
        import refimpl.functional as F

        lib = refimpl

        def make(a, requires_grad=False):
            return refimpl.tensor(a, requires_grad=requires_grad)

    w1, b1, w2, b2 = (make(arrays[k], True) for k in ("w1", "b1", "w2", "b2"))
    x, y = make(arrays["x"]), make(arrays["y"])
    params = [w1, b1, w2, b2]
    assert all(p.dtype == lib.float64 for p in params) and y.dtype == lib.int64

    def step() -> None:
        for p in params:
            p.grad = None
        hidden = F.relu(F.linear(x, w1, b1))
        loss = F.cross_entropy(F.linear(hidden, w2, b2), y)
        loss.backward()
        with lib.no_grad():
            for p in params:
                p -= LR * p.grad

    return params, step


def _time(step, quick: bool) -> dict:
    warmup, samples, sample_s = (3, 7, 0.01) if quick else (5, 31, 0.02)
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    step()
    once = time.perf_counter() - start
    inner = max(1, round(sample_s / max(once, 1e-9)))
    per_iteration = []
    for _ in range(samples):
        start = time.perf_counter()
        for _ in range(inner):
            step()
        per_iteration.append((time.perf_counter() - start) / inner)
    per_iteration.sort()
    return {
        "median_ms": 1e3 * per_iteration[len(per_iteration) // 2],
        "min_ms": 1e3 * per_iteration[0],
        "max_ms": 1e3 * per_iteration[-1],
        "samples": samples,
        "iterations_per_sample": inner,
    }


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _memory(step, params) -> dict:
    import gc
    import resource

    for _ in range(2):
        step()
    for p in params:
        p.grad = None
    gc.collect()
    resettable = _reset_high_water_mark()
    baseline = _status_kib("VmRSS")
    if not resettable or baseline is None:  # coarse fallback: the process-lifetime maximum
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(3):
        step()
    peak = _status_kib("VmHWM") if resettable else None
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "peak_mib": max(0, peak - baseline) / 1024,
        "method": "VmHWM-VmRSS" if resettable else "ru_maxrss",
    }


def worker(side: str, model: str, measure: str, quick: bool) -> dict:
    shape = next(m[1:] for m in MODELS if m[0] == model)
    params, step = _setup(side, shape)
    return _time(step, quick) if measure == "time" else _memory(step, params)


# Driver side ---------------------------------------------------------------------------------


def _run_worker(side: str, model: str, measure: str, quick: bool) -> dict:
    env = dict(os.environ)
    env.update({name: "1" for name in THREAD_VARIABLES})
    if measure == "memory":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, os.path.abspath(__file__), "--worker", side, model, measure]
    if quick:
        command.append("--quick")
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"{side} worker for {model} ({measure}) failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("yes" if met else "NO")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer warm-ups and samples")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--models", nargs="+", choices=[m[0] for m in MODELS], help="only these models"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--worker", nargs=3, metavar=("SIDE", "MODEL", "MEASURE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker, args.quick)))
        return 0

    load_before = os.getloadavg()
    rows = []
    for name, *_ in MODELS:
        if args.models and name not in args.models:
            continue
        result: dict = {"model": name}
        rounds: dict[str, list[dict]] = {"refimpl": [], "torch": []}
        for _ in range(1 if args.quick else 3):
            for side in ("refimpl", "torch"):
                rounds[side].append(_run_worker(side, name, "time", args.quick))
        for side in ("refimpl", "torch"):
            fastest = min(rounds[side], key=lambda r: r["median_ms"])
            result[side] = {
                "time": {**fastest, "round_medians_ms": [r["median_ms"] for r in rounds[side]]},
                "memory": _run_worker(side, name, "memory", args.quick),
            }
        ref_ms = result["refimpl"]["time"]["median_ms"]
        torch_ms = result["torch"]["time"]["median_ms"]
        ref_mib = result["refimpl"]["memory"]["peak_mib"]
        torch_mib = result["torch"]["memory"]["peak_mib"]
        time_target = TIME_TARGET_SMALL if name in SMALL else TIME_TARGET_LARGE
        result["time_ratio"] = ref_ms / torch_ms
        result["time_target"] = time_target
        result["time_met"] = result["time_ratio"] <= time_target
        judged = torch_mib >= MEMORY_JUDGED_FROM_MIB
        result["memory_ratio"] = ref_mib / torch_mib if torch_mib > 0 else None
        result["memory_target"] = MEMORY_TARGET
        result["memory_met"] = (ref_mib <= MEMORY_TARGET * torch_mib) if judged else None
        rows.append(result)
        print(f"measured {name}", file=sys.stderr, flush=True)

    header = (
        f"{'model':<16}{'refimpl ms':>12}{'torch ms':>11}{'ratio':>8}{'target':>8}{'met':>5}"
        f"{'ref MiB':>10}{'torch MiB':>11}{'ratio':>8}{'target':>8}{'met':>5}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        memory_ratio = "-" if r["memory_ratio"] is None else f"{r['memory_ratio']:.2f}"
        print(
            f"{r['model']:<16}{r['refimpl']['time']['median_ms']:>12.4f}"
            f"{r['torch']['time']['median_ms']:>11.4f}{r['time_ratio']:>8.3f}"
            f"{'<=' + str(r['time_target']):>8}{_verdict(r['time_met']):>5}"
            f"{r['refimpl']['memory']['peak_mib']:>10.2f}{r['torch']['memory']['peak_mib']:>11.2f}"
            f"{memory_ratio:>8}{'<=' + str(MEMORY_TARGET):>8}{_verdict(r['memory_met']):>5}"
        )
    load_after = os.getloadavg()
    print(
        f"(ms per iteration: fastest round's median; peak = resident-set growth over the "
        f"iteration; memory 'n/a' where torch's peak is under {MEMORY_JUDGED_FROM_MIB} MiB, "
        f"i.e. page noise)"
    )
    print(
        f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
        f"{os.cpu_count()} CPUs; {_cpu_name()}"
    )
    if args.json:
        import numpy
        import torch

        meta = {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpu": _cpu_name(),
            "cpus": os.cpu_count(),
            "numpy": numpy.__version__,
            "torch": torch.__version__,
            "quick": args.quick,
            "threads": 1,
            "load_average_before": load_before,
            "load_average_after": load_after,
        }
        with open(args.json, "w") as out:
            json.dump({"meta": meta, "results": rows}, out, indent=2)
    missed = not all(r["time_met"] and r["memory_met"] is not False for r in rows)
    return 1 if args.strict and missed else 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
