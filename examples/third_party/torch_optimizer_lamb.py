"""torch-optimizer's `Lamb` (PyPI `torch-optimizer==0.3.0`) in the configuration its docstring
says is Adam, constructed like torch.optim.Adam.

torch_optimizer/lamb.py:28-30: "adam: always use trust ratio = 1, which turns this into Adam.
Useful for comparison purposes. (default: False)" and "debias: debias adam by (1 - beta**step)
(default: False)"; line 129: "# Paper v3 does not use debiasing." Adam debiases, so the
configuration checked is `adam=True, debias=True, weight_decay=0`. The package itself is not
changed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch_optimizer import Lamb


class TorchOptimizerLambAsAdam(Lamb):
    """`torch_optimizer.Lamb` with `adam=True` (trust ratio 1), `debias=True` and
    `weight_decay=0`.

    Takes Adam's `params`, `lr`, `betas` and `eps` only. Not taken: `weight_decay` (Lamb adds
    `weight_decay * p` to the Adam ratio m / (sqrt(v) + eps) and scales the sum by the bias
    correction, lines 141-143 and 156: neither Adam's L2 term, which enters m and v, nor
    AdamW's `p *= 1 - lr * weight_decay`), `amsgrad`, `maximize`, `foreach`, `capturable`,
    `differentiable` and `fused` (Lamb has none of them). `clamp_value` keeps its default: with
    a trust ratio of 1 the clamped weight norm is computed and stored, never used.
    """

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        super().__init__(
            params, lr=lr, betas=betas, eps=eps, weight_decay=0, adam=True, debias=True
        )
