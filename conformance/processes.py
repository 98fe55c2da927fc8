"""Where the harness's other processes come from: multiprocessing's forkserver, whose server
imports torch and the harness once (torch.optim imports torch._dynamo on first use: 0.9 s a
process otherwise), so that a worker (`conformance.isolation`) or a job process
(`conformance.parallel`) starts in milliseconds; spawn where there is no forkserver
(Windows), each process then importing torch itself. Light on purpose: importing it imports
no torch, so the CLI can start the server before it imports torch itself.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

PRELOAD = ["conformance.isolation", "torch._dynamo"]


def context() -> Any:
    """The multiprocessing context every process of the harness is started from."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def start() -> None:
    """Starts the forkserver now (it imports torch in its own process, alongside this one's
    imports, instead of after them)."""
    if context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()
