"""torch-optimizer's `SGDW` (PyPI `torch-optimizer==0.3.0`) constructed like torch.optim.SGD.

SGDW "Implements SGDW algorithm", from "Decoupled Weight Decay Regularization"
(torch_optimizer/sgdw.py:10-12); it documents SGD's arguments in SGD's words (lines 15-21:
"weight_decay: weight decay (L2 penalty)", "nesterov: enables Nesterov momentum"), names
torch's SGD pull request as its source (line 33: "Reference code:
https://github.com/pytorch/pytorch/pull/22466"), and its step with `weight_decay=0` is SGD's
(lines 102-117). That is the configuration checked here; the package itself is not changed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch_optimizer import SGDW


class TorchOptimizerSGDW(SGDW):
    """`torch_optimizer.SGDW` with `weight_decay=0`.

    Not taken: `weight_decay` (SGDW's is decoupled by design, not SGD's L2 term) and `maximize`
    (SGDW has none). `nesterov` is keyword-only so that a positional call written for SGD's
    signature cannot bind SGD's `weight_decay` to it.
    """

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        *,
        nesterov: bool = False,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=0.0,
            nesterov=nesterov,
        )
