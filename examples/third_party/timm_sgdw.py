"""timm's `SGDW` (PyPI `timm==1.0.31`, module `timm.optim.sgdw`) constructed like
torch.optim.SGD.

timm's SGDW is "SGD with decoupled weight-decay" (timm/optim/sgdw.py:1); its functional step
says "See :class:`~torch.optim.SGD` for details." (line 162) and, with `weight_decay=0`,
`caution=False` and `corrected_weight_decay=False` (its defaults), is torch's SGD line for line
(lines 214-242 against torch's `_single_tensor_sgd`). That is the configuration checked here.

`import timm` needs torchvision (timm/__init__.py imports timm.layers, which imports
torchvision.ops), and importing `timm.optim.sgdw` runs that `__init__` first. torchvision's PyPI
wheel for torch 2.13 is a CUDA build that would replace the CPU torch, so without torchvision
`timm/optim/sgdw.py` is loaded from timm's install as a module of a private stub package: it
imports only torch and its siblings `_helpers.py` and `_types.py`, which import only torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import torch

_STUB = "_sgd_conformance_timm_optim"


def _load_sgdw() -> type:
    """timm.optim.sgdw.SGDW, through `import timm` where torchvision is installed, else from
    timm's files without running `timm/__init__.py`."""
    if importlib.util.find_spec("torchvision") is not None:
        from timm.optim.sgdw import SGDW

        return SGDW
    if _STUB not in sys.modules:
        spec = importlib.util.find_spec("timm")  # finds timm's folder without importing it
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("timm is not installed (pip install --no-deps timm==1.0.31)")
        stub = types.ModuleType(_STUB, "timm/optim/ as a package, without timm/__init__.py")
        stub.__path__ = [str(Path(next(iter(spec.submodule_search_locations))) / "optim")]
        sys.modules[_STUB] = stub
    return importlib.import_module(f"{_STUB}.sgdw").SGDW


class TimmSGDW(_load_sgdw()):  # type: ignore[misc]
    """timm's SGDW with `weight_decay=0` (and its defaults `caution=False`,
    `corrected_weight_decay=False`).

    Not taken: `weight_decay` (timm's is decoupled, `p *= 1 - lr * weight_decay`, by design).
    Takes `foreach`, which timm implements (`_multi_tensor_sgdw`). `nesterov` is keyword-only so
    that a positional call written for SGD's signature cannot bind `weight_decay` to it.
    """

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        *,
        nesterov: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=0.0,
            nesterov=nesterov,
            maximize=maximize,
            foreach=foreach,
        )
