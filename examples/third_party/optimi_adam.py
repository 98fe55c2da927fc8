"""torch-optimi's `Adam` and `AdamW` (PyPI `torch-optimi==0.3.3`, package `optimi`)
constructed like torch.optim.Adam and torch.optim.AdamW.

optimi/adam.py:4 and optimi/adamw.py:4: "Based on PyTorch Optimizers"; adam.py:31: "Adam
optimizer. Optionally with decoupled weight decay (AdamW)."; adam.py:37-38: "weight_decay:
Weight decay coefficient. If `decouple_wd` and `decouple_lr` are False, applies L2 penalty".
The package's README (its PyPI description), section "Differences from PyTorch", lists what is
not torch's: "optimi optimizers do not support compilation, differentiation, complex numbers,
or have capturable versions. optimi Adam optimizers do not support AMSGrad [...]. Optimizers
which debias updates (Adam optimizers and Adan) calculate the debias term per parameter group,
not per parameter." Outside that list, the claim is torch's Adam: with `decouple_wd=False` and
`decouple_lr=False` for Adam, `decouple_lr=False` for AdamW, `kahan_sum=False` (the default
only turns it on for float16/bfloat16 parameters) and `triton=False` (the CPU has none; said so
that a machine with triton installed runs the same code). The package itself is not changed.
"""

from __future__ import annotations

from typing import Any

import torch
from optimi import Adam, AdamW


class OptimiAdam(Adam):
    """`optimi.Adam` with L2 weight decay (`decouple_wd=False`, `decouple_lr=False`).

    Takes Adam's arguments but `amsgrad`, `maximize`, `capturable`, `differentiable` and
    `fused` (optimi has none of them), and `foreach`, which optimi implements (`_foreach_adam`;
    passing `foreach=True` also warns that it is deprecated). torch's default betas and eps are
    passed: optimi's own are (0.9, 0.99) and 1e-6.
    """

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        *,
        foreach: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            weight_decay=weight_decay,
            eps=eps,
            decouple_wd=False,
            decouple_lr=False,
            kahan_sum=False,
            foreach=foreach,
            triton=False,
        )


class OptimiAdamW(AdamW):
    """`optimi.AdamW` with torch's decoupled weight decay (`decouple_lr=False`).

    Takes AdamW's arguments but `amsgrad`, `maximize`, `capturable`, `differentiable` and
    `fused`, and `foreach` (see OptimiAdam).
    """

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        foreach: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            weight_decay=weight_decay,
            eps=eps,
            decouple_lr=False,
            kahan_sum=False,
            foreach=foreach,
            triton=False,
        )
