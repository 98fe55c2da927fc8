"""pytorch-optimizer's `SGDW` (PyPI `pytorch-optimizer==4.1.0`) constructed like
torch.optim.SGD.

SGDW is "SGD with optional decoupled weight decay" (pytorch_optimizer/optimizer/sgd.py:163);
`weight_decouple=False` means "adding it to the gradient" (line 170), which is SGD's L2 term.
With it, SGD's arguments map one to one, but for `maximize`; the package itself is not
changed.
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_optimizer import SGDW


class PytorchOptimizerSGDW(SGDW):
    """`pytorch_optimizer.SGDW` with `weight_decouple=False` (coupled, SGD-style weight decay).

    Takes SGD's arguments but `maximize`, and `foreach`, which SGDW implements (its for-loop
    and foreach paths are separate code). Not taken: `maximize`, because SGDW keeps it on the
    optimizer (`self.maximize`), not in the groups: a group's own or changed `maximize`, as SGD
    has it, is ignored.
    """

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        foreach: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            weight_decouple=False,
            dampening=dampening,
            nesterov=nesterov,
            foreach=foreach,
        )
