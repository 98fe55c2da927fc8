"""`pytest conformance`: the state machine against torch, one test per dtype (see
conformance.pytest_plugin for the options)."""

from __future__ import annotations

import json

import pytest

from conformance.profiles import PROFILES
from conformance.pytest_plugin import Config
from conformance.runner import run


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sgd_conformance(conformance_config: Config, dtype: str) -> None:
    config = conformance_config
    result = run(config.optimizer, mode=config.mode, dtypes=(dtype,),
                 settings=PROFILES[config.profile], seed=config.seed, timeout=config.timeout)
    print(f"{config.optimizer} {dtype}: {result.coverage.programs} programs, "
          f"{result.coverage.actions} actions in {result.seconds:.1f} s")
    if result.divergence is not None:
        assert result.case is not None
        pytest.fail(f"{result.divergence}\n\nshrunk case (JSON, replay with "
                    f"conformance.machine.replay):\n{json.dumps(result.case.to_json())}",
                    pytrace=False)
