"""pytest plugin (entry point `pytest11`): options for `pytest conformance`.

    pytest conformance                                    # refimpl against torch, ci profile
    pytest conformance --optimizer mypkg.optim:MySGD      # a user's optimizer instead
    pytest conformance --conformance-mode tolerance --conformance-profile thorough
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from conformance.oracle import Mode
from conformance.profiles import PROFILES


@dataclass(frozen=True)
class Config:
    optimizer: str
    mode: Mode | None
    profile: str
    seed: int | None
    timeout: float


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("conformance", "SGD conformance against torch.optim.SGD")
    group.addoption("--optimizer", default="refimpl",
                    help="implementation under test: refimpl (default) or module:Class, a class "
                         "constructed like torch.optim.SGD")
    group.addoption("--conformance-mode", choices=["exact", "ulp", "tolerance"], default=None,
                    help="how steps are judged: exact (bitwise; refimpl's default), ulp (the "
                         "error model's budget; a module:Class's default) or tolerance "
                         "(assert_close's defaults)")
    group.addoption("--conformance-profile", choices=sorted(PROFILES), default="ci",
                    help="Hypothesis profile: dev (quick), ci (default), thorough")
    group.addoption("--conformance-seed", type=int, default=None,
                    help="Hypothesis seed (default: random; failures are saved in .hypothesis/)")
    group.addoption("--conformance-timeout", type=float, default=10.0,
                    help="seconds one action of the implementation may take (default 10)")


@pytest.fixture
def conformance_config(request: pytest.FixtureRequest) -> Config:
    option = request.config.getoption
    return Config(option("--optimizer"), option("--conformance-mode"),
                  option("--conformance-profile"), option("--conformance-seed"),
                  option("--conformance-timeout"))
