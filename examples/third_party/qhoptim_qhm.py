"""qhoptim's `QHM` (PyPI `qhoptim==1.1.0`, `qhoptim.pyt.QHM`) as momentum SGD: ν = 1.

QHM's buffer is dampened, g ← β·g + (1 − β)·∇ (qhoptim/pyt/qhm.py:56-63), so "when converting
from plain momentum to QHM, the learning rate must be scaled by 1/(1 − β)" (lines 72-78). With
ν = 1 the step is θ ← θ − α·g, and g = (1 − β)·b for SGD's buffer b (no dampening), so
α = lr/(1 − β) gives SGD's step. qhoptim has no SGD-to-QHM helper by that name; its
`QHM.from_synthesized_nesterov(alpha, beta1, beta2)` (lines 172-198, common/param_conv.py:31-35)
with `beta2=0` (heavy-ball momentum) returns exactly lr/(1 − β), ν = 1, β, and is used here.
Weight decay uses `weight_decay_type="grad"`: "accumulation in the gradient (same as
:class:`torch.optim.SGD`)" (lines 33-38).
"""

from __future__ import annotations

from typing import Any

from qhoptim.pyt import QHM


def qhm_hyperparameters(lr: float, momentum: float) -> dict[str, float]:
    """SGD's (lr, momentum) as QHM's (lr, momentum, nu), by qhoptim's own conversion.

    momentum 0 is QHM(lr, 0, ν) for any ν (g = ∇), but the conversion divides by β there; at
    β = 1 it divides by zero (ZeroDivisionError) and above 1 it gives a negative lr, which QHM
    rejects: both are qhoptim's limits, left to show.
    """
    if momentum == 0:
        return {"lr": lr, "momentum": momentum, "nu": 1.0}
    return QHM.from_synthesized_nesterov(alpha=lr, beta1=momentum, beta2=0.0)


class QHMAsSGD(QHM):
    """QHM with ν = 1 and lr scaled by 1/(1 − momentum), per group.

    Not taken: `dampening` (QHM's buffer has its own, 1 − β, from the first step), `nesterov`
    (another ν), `maximize` (QHM has none). Groups and state stay QHM's: a group's `lr` is QHM's
    α, and the buffer is (1 − β) times SGD's.
    """

    def __init__(
        self, params: Any, lr: float = 1e-3, momentum: float = 0, *, weight_decay: float = 0
    ) -> None:
        self._sgd_defaults = {"lr": lr, "momentum": momentum}
        super().__init__(
            params,
            weight_decay=weight_decay,
            weight_decay_type="grad",
            **qhm_hyperparameters(lr, momentum),
        )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Maps a group's own SGD lr or momentum (the constructor's groups come through here)."""
        if "lr" in param_group or "momentum" in param_group:
            sgd = {k: param_group.get(k, self._sgd_defaults[k]) for k in ("lr", "momentum")}
            param_group.update(qhm_hyperparameters(**sgd))
        super().add_param_group(param_group)
