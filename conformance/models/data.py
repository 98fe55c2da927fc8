"""The numbers a model starts from and is fed, drawn with numpy, the same for both libraries:
`initial_values` (from a seed and each parameter's name) and `batch` (inputs and targets from
a batch seed), drawn to land on the kinks: exact zeros, ties, targets on smooth_l1's (huber's)
boundary."""

from __future__ import annotations

import functools
import math
import zlib

import numpy as np
import torch
import torch.nn.functional as TF

from conformance.models.forward import layers_forward
from conformance.models.spec import CLASS_LOSSES, ModelSpec, Shape


def seeded_rng(*words: int) -> np.random.Generator:
    """numpy's generator seeded with `words` (each taken modulo 2**64)."""
    return np.random.default_rng([w % 2**64 for w in words])


def initial_values(spec: ModelSpec, dtype: str, seed: int | None = None) -> dict[str, np.ndarray]:
    """The initial parameters: normal × 0.5 (× min(1, 2 / sqrt(fan_in)) for Linear and conv
    weights) from (seed, name), sometimes with exact zeros; biases (a graph's "b<i>") all
    zero in a quarter of the draws (a graph's: in half). `seed` defaults to spec.seed."""
    out = {}
    for name, shape in spec.parameter_shapes().items():
        rng = seeded_rng(spec.seed if seed is None else seed, zlib.crc32(name.encode()), 0x9A7A)
        scale = 0.5
        if spec.kind != "graph" and name.endswith(".weight") and len(shape) >= 2:
            # Linear / conv weights: at most 1/sqrt(fan_in), so that wide layers do not
            # saturate softmax or sigmoid (whose gradient p - 1 then cancels).
            scale = min(scale, 1 / math.sqrt(math.prod(shape[1:])))
        values = np.array(rng.standard_normal(shape) * scale)
        draw = rng.random()
        if draw < 0.25:
            values[rng.random(shape) < 0.3] = 0.0
        elif draw < (0.5 if spec.kind != "graph" else 0.75) and (
            name.endswith(".bias") if spec.kind != "graph" else name.startswith("b")
        ):
            values[...] = 0.0  # zero-initialised, as biases often are
        out[name] = np.array(values, dtype=dtype)
    return out


# Few distinct values, for ties. No two are opposite: odd functions (tanh, x itself) of a
# symmetric set sum to exactly zero, a gradient the libraries compute as different noise.
_TIES = np.array([-1.5, -1.0, -0.25, 0.0, 0.5, 1.25, 2.0])


def _floats(rng: np.random.Generator, shape: Shape, mode: int) -> np.ndarray:
    """mode 0: normal values; 1: with exact zeros (both signs; the last of several samples all
    zero); 2: few distinct values (ties);
    3: repeats (elements and rows copied from others)."""
    values = np.array(rng.standard_normal(shape))
    if mode == 1:
        zeros = rng.random(shape) < 0.35
        values[zeros] = np.copysign(0.0, rng.standard_normal(shape))[zeros]
        if len(shape) >= 2 and shape[0] > 1:
            values[-1] = 0.0  # an all-zero sample (padding): layers see exactly their bias
    elif mode == 2:
        values = np.array(rng.choice(_TIES, size=shape))
    elif mode == 3:
        flat = values.reshape(-1)
        flat[rng.random(flat.size) < 0.4] = flat[rng.integers(flat.size)]
        if len(shape) >= 1 and shape[0] > 1:
            values[rng.integers(1, shape[0])] = values[0]
    return values


@functools.lru_cache(maxsize=1024)
def cached_batch(spec: ModelSpec, dtype: str, batch_seed: int) -> dict[str, np.ndarray]:
    """`batch`'s arrays themselves: cached and read-only."""
    rng = seeded_rng(spec.seed, batch_seed, 0xBA7C)
    mode = int(rng.integers(4))
    if spec.kind == "graph":  # zeros and ties a third of the time each, for the kinked ops
        mode = (0, 1, 1, 2, 2, 3)[int(rng.integers(6))]
    if spec.kind == "embedding":
        x = rng.integers(0, spec.vocab, size=spec.input_shape).astype(np.int64)
    else:
        x = np.array(_floats(rng, spec.input_shape, mode), dtype=dtype)
    out = spec.output_shape()
    if spec.kind == "graph":
        y = _targets(spec, rng, out, 0, dtype)
    else:
        # Each sample's target is drawn from its input's bytes: tied input rows (equal outputs)
        # get tied targets, so their loss gradients add up instead of cancelling exactly.
        target_mode = int(rng.integers(3))
        rows = [
            _targets(
                spec,
                seeded_rng(spec.seed, batch_seed, zlib.crc32((row + 0).tobytes())),
                out[1:],
                target_mode,
                dtype,
            )
            for row in x
        ]
        y = np.stack(rows)
        if spec.loss in ("smooth_l1", "huber") and rng.random() < 0.25:
            y = _on_boundary(spec, dtype, rng, x, y)
    for array in (x, y):
        array.flags.writeable = False
    return {"x": x, "y": y}


def _on_boundary(
    spec: ModelSpec, dtype: str, rng: np.random.Generator, x: np.ndarray, y: np.ndarray
) -> np.ndarray:
    """y with one target moved to where the initial model's output (torch's) minus it is
    exactly ±beta (±delta), so the first forward sits on smooth_l1's (huber's) boundary; in
    every row whose input ties with that row's, so that tied rows keep tied targets."""
    params = {k: torch.from_numpy(v) for k, v in initial_values(spec, dtype).items()}
    with torch.no_grad():
        out = layers_forward(spec, TF, params, torch.from_numpy(x.copy())).numpy()
    i, j = int(rng.integers(out.shape[0])), int(rng.integers(out.shape[1]))
    for sign in (rng.choice([-1.0, 1.0]), 1.0, -1.0):
        target = out[i, j] - out.dtype.type(sign * spec.loss_param)
        if out[i, j] - target == sign * spec.loss_param:
            y = y.copy()
            tied = [r for r in range(len(x)) if (x[r] + 0).tobytes() == (x[i] + 0).tobytes()]
            y[tied, j] = target
            break
    return y


def _targets(
    spec: ModelSpec, rng: np.random.Generator, shape: Shape, mode: int, dtype: str
) -> np.ndarray:
    if spec.loss in CLASS_LOSSES:
        classes = spec.output_shape()[1]
        return np.array(
            rng.integers(0, classes, size=shape[:-1] if spec.kind == "graph" else ()),
            dtype=np.int64,
        )
    if spec.loss == "bce_with_logits":
        return np.array(rng.integers(0, 2, size=shape), dtype=dtype)
    return np.array(_floats(rng, shape, mode), dtype=dtype)


def batch(spec: ModelSpec, dtype: str, batch_seed: int) -> dict[str, np.ndarray]:
    """The inputs "x" and targets "y" for `batch_seed`: deterministic, fresh writable copies.
    "y" is int64 class indices for cross_entropy / nll, {0, 1} floats for bce_with_logits,
    floats otherwise ("sum" ignores it); "x" is int64 token indices for embedding models."""
    return {k: v.copy() for k, v in cached_batch(spec, dtype, batch_seed).items()}
