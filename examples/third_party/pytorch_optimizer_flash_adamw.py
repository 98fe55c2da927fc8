"""pytorch-optimizer's `FlashAdamW` (PyPI `pytorch-optimizer==4.1.0`) with its 8-bit states
off, constructed like torch.optim.AdamW.

pytorch_optimizer/optimizer/flash_adamw.py:163: "AdamW with grouped 8-bit optimizer states and
optional master weight error correction."; line 167: "Float64 parameters retain their
precision, with float64 arithmetic for unquantized moments."; line 177: "quantize: Store Adam
moments as grouped 8-bit values plus fp16 scales."; line 175: "decouple_lr: Scale weight decay
by `lr / initial_lr` instead of `lr`." With `quantize=False` (moments kept as tensors of
the parameter's dtype), `decouple_lr=False` (AdamW's lr·weight_decay) and `master_weight_bits=
None` (no error bits: float32 and float64 parameters need none) what is left is AdamW. The
package itself is not changed.
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_optimizer import FlashAdamW


class PytorchOptimizerFlashAdamW(FlashAdamW):
    """`pytorch_optimizer.FlashAdamW` with `quantize=False`, `decouple_lr=False`,
    `master_weight_bits=None`.

    Takes AdamW's arguments but `amsgrad` (none), `maximize`, `capturable`, `differentiable`
    and `fused` (`fused=True` raises NotImplementedError in this backend). Not `maximize`
    because FlashAdamW keeps it on the optimizer (`self.maximize`), not in the groups, like
    pytorch-optimizer's SGDW (see pytorch_optimizer_sgdw.py). Takes `foreach`, which FlashAdamW
    implements for float32 parameters (`_step_foreach`; `None` uses it on the CPU too).
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
            decouple_lr=False,
            quantize=False,
            master_weight_bits=None,
            eps=eps,
            foreach=foreach,
        )
