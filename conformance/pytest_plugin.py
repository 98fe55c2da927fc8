"""pytest plugin (entry point `pytest11`): options for `pytest conformance`.

    pytest conformance                                    # refimpl against torch, ci profile
    pytest conformance --optimizer mypkg.optim:MySGD      # a user's optimizer instead
    pytest conformance --optimizer mypkg.optim:MySGD --conformance-without maximize,closure
    pytest conformance --conformance-mode tolerance --conformance-profile thorough
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from conformance.options import CONTRACTS, FEATURES, REFERENCE_PATHS, RunOptions, parse_features
from conformance.profiles import PROFILES


@dataclass(frozen=True)
class Config:
    options: RunOptions
    profile: str
    seed: int | None
    max_failures: int


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("conformance", "SGD conformance against torch.optim.SGD")
    group.addoption("--optimizer", default="refimpl",
                    help="implementation under test: refimpl (default) or module:Class, a class "
                         "constructed like torch.optim.SGD")
    group.addoption("--conformance-contract", choices=CONTRACTS, default=None,
                    help="semantic (default for a module:Class) or strict (default for "
                         "refimpl); see conformance.options")
    group.addoption("--conformance-reference-path", choices=REFERENCE_PATHS,
                    default="for-loop", help="torch's code path used as the reference")
    group.addoption("--conformance-without", default="",
                    help=f"features the optimizer does not claim: {', '.join(FEATURES)}")
    group.addoption("--conformance-state-key", default="momentum_buffer",
                    help="the state key of the momentum buffer")
    group.addoption("--conformance-mode", choices=["exact", "ulp", "tolerance"], default=None,
                    help="how values are judged: exact (bitwise; refimpl's default), ulp (the "
                         "error model's budget; a module:Class's default) or tolerance "
                         "(assert_close's defaults, gradients included)")
    group.addoption("--conformance-profile", choices=sorted(PROFILES), default="ci",
                    help="Hypothesis profile: dev (quick), ci (default), thorough")
    group.addoption("--conformance-seed", type=int, default=None,
                    help="Hypothesis seed (default: random; failures are saved in .hypothesis/)")
    group.addoption("--conformance-timeout", type=float, default=10.0,
                    help="seconds one action of the implementation may take (default 10)")
    group.addoption("--conformance-max-failures", type=int, default=5,
                    help="distinct failures to find and shrink per dtype (default 5)")


@pytest.fixture
def conformance_config(request: pytest.FixtureRequest) -> Config:
    option = request.config.getoption
    try:
        without = parse_features(option("--conformance-without"))
    except ValueError as error:
        raise pytest.UsageError(f"--conformance-without: {error}") from error
    options = RunOptions(implementation=option("--optimizer"),
                         contract=option("--conformance-contract"),
                         mode=option("--conformance-mode"),
                         reference_path=option("--conformance-reference-path"),
                         without=without, state_key=option("--conformance-state-key"),
                         timeout=option("--conformance-timeout"))
    return Config(options, option("--conformance-profile"), option("--conformance-seed"),
                  option("--conformance-max-failures"))
