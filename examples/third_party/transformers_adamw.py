"""transformers' `AdamW` (PyPI `transformers==4.49.0`, module `transformers.optimization`)
constructed like torch.optim.AdamW.

transformers/optimization.py:609-610: "Implements Adam algorithm with weight decay fix as
introduced in [Decoupled Weight Decay Regularization]" (the AdamW paper); lines 623-624:
"correct_bias (`bool`, *optional*, defaults to `True`): Whether or not to correct bias in Adam
(for instance, in Bert TF repository they use `False`)."; lines 640-644, the warning every
construction gives: "This implementation of AdamW is deprecated and will be removed in a future
version. Use the PyTorch implementation torch.optim.AdamW instead". The configuration checked
is `correct_bias=True` (Adam's bias correction, as torch's). 4.49.0 is the last release with
this class (4.50.0 removed it). The package itself is not changed.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.optimization import AdamW


class TransformersAdamW(AdamW):
    """`transformers.optimization.AdamW` with `correct_bias=True`, without its
    FutureWarning (`no_deprecation_warning=True`: the warning is the claim, see above).

    Takes AdamW's arguments but `amsgrad`, `maximize`, `foreach`, `capturable`,
    `differentiable` and `fused`: it has none of them. torch's default eps and weight_decay
    are passed: transformers' own are 1e-6 and 0.
    """

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            correct_bias=True,
            no_deprecation_warning=True,
        )
