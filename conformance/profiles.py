"""Hypothesis settings for conformance runs: `ci` (the default), `dev` (quick) and `thorough`.

Counts are per state-machine test; `pytest conformance` runs one test per dtype, so the ci
profile generates 2 × 1,000 programs. The example database is Hypothesis's default directory,
`.hypothesis/` in the working directory: a failure found once is replayed first next time.
"""

from __future__ import annotations

from typing import TypedDict

from hypothesis import HealthCheck, Phase, settings


class _Settings(TypedDict):
    """The keyword arguments of `settings` that every profile sets."""

    deadline: None
    phases: list[Phase]
    suppress_health_check: list[HealthCheck]
    stateful_step_count: int


_COMMON: _Settings = {
    "deadline": None,  # the per-action timeout bounds a hang; timing belongs in benchmarks
    # no explain phase: it traces every line of each shrunk program again (minutes per failure
    # with several failures a run) for a note in Hypothesis's message, which reports never show
    "phases": [p for p in Phase if p is not Phase.explain],
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
    "stateful_step_count": 12,
}

# The target phase (hill-climbing on the closest approach to an error budget, which the state
# machine reports with `target()`) only where it helps: Hypothesis needs thousands of examples
# per label for it to pay, and in a ci run of 1,000 it took half the time for no failure
# found sooner. The thorough profile has the examples for it.
_UNTARGETED: list[Phase] = [p for p in _COMMON["phases"] if p is not Phase.target]
_UNTARGETED_SETTINGS: _Settings = {**_COMMON, "phases": _UNTARGETED}
_THOROUGH_SETTINGS: _Settings = {**_COMMON, "stateful_step_count": 30}

PROFILES: dict[str, settings] = {
    "dev": settings(max_examples=50, **_UNTARGETED_SETTINGS),
    "ci": settings(max_examples=1000, **_UNTARGETED_SETTINGS),
    "thorough": settings(max_examples=25_000, **_THOROUGH_SETTINGS),
}
