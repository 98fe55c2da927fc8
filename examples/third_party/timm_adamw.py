"""timm's `AdamWLegacy` (PyPI `timm==1.0.31`, module `timm.optim.adamw`) constructed like
torch.optim.AdamW.

timm/optim/adamw.py:1-2: "AdamW Optimizer / Impl copied from PyTorch master"; line 8: "NOTE:
This impl has been deprecated in favour of torch.optim.AdamW and remains as a reference". With
its defaults `caution=False`, `corrected_weight_decay=False` and `clipping_threshold=None`, its
for-loop step (lines 277-358) is torch's `_single_tensor_adam` with `decoupled_weight_decay`
(one difference: `param.mul_(1 - lr * weight_decay)` runs with weight_decay 0 too, a multiply by
1.0). That is the configuration checked here; the package itself is not changed.

`import timm` needs torchvision (see timm_sgdw.py), so without torchvision
`timm/optim/adamw.py` is loaded from timm's install as a module of the same private stub package
timm_sgdw.py uses: it imports only torch and its siblings `_helpers.py` and `_types.py`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import torch

_STUB = "_sgd_conformance_timm_optim"  # shared with timm_sgdw.py: one copy of timm's helpers


def _load_adamw() -> type:
    """timm.optim.adamw.AdamWLegacy, through `import timm` where torchvision is installed, else
    from timm's files without running `timm/__init__.py`."""
    if importlib.util.find_spec("torchvision") is not None:
        from timm.optim.adamw import AdamWLegacy

        return AdamWLegacy
    if _STUB not in sys.modules:
        spec = importlib.util.find_spec("timm")  # finds timm's folder without importing it
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("timm is not installed (pip install --no-deps timm==1.0.31)")
        stub = types.ModuleType(_STUB, "timm/optim/ as a package, without timm/__init__.py")
        stub.__path__ = [str(Path(next(iter(spec.submodule_search_locations))) / "optim")]
        sys.modules[_STUB] = stub
    return importlib.import_module(f"{_STUB}.adamw").AdamWLegacy


class TimmAdamW(_load_adamw()):  # type: ignore[misc]
    """timm's AdamWLegacy with its defaults `caution=False`, `corrected_weight_decay=False`,
    `clipping_threshold=None`.

    Takes AdamW's arguments but `differentiable` and `fused` (timm has neither). `foreach`,
    `maximize` and `capturable` are timm's own (`_multi_tensor_adamw`, `maximize`, the capturable
    branches). They are keyword-only, as in torch, so that a positional call written for
    AdamW's signature cannot bind them to timm's `caution` and `corrected_weight_decay`, which
    follow `amsgrad` in its signature.
    """

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
        )
