"""Run under ATEN_CPU_CAPABILITY=default by tests/test_optim_bitwise.py: torch's generic CPU
kernels round `x + α·y` twice, and refimpl's SGD with cpu_capability="DEFAULT" must match them
bit for bit on the same drawn programs as the in-process test."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_optim_bitwise import PATHS, Program, programs, run_both

CASES = 0


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(program=programs(), path=st.sampled_from(list(PATHS)), tensor_lr=st.booleans())
def check(program: Program, path: str, tensor_lr: bool) -> None:
    global CASES
    CASES += 1
    run_both(program, PATHS[path], tensor_lr, "DEFAULT")


if __name__ == "__main__":
    capability = torch.backends.cpu.get_cpu_capability()
    assert capability == "DEFAULT", f"run with ATEN_CPU_CAPABILITY=default, not {capability}"
    check()
    print(f"{CASES} cases passed")
