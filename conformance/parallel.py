"""`conformance run --jobs N`: one run's programs on N processes.

Each dtype's run is cut into N shards (`runner.run(..., shard=(i, N))`: a share of the budget
and of the canonical cases, a seed of its own), the shards of every dtype go to a pool of N
job processes, and each dtype's shards are merged in shard order (`runner.merge`), so the
result for a given seed and N is the same whichever process ran which shard, and when. The
job processes come from the same forkserver as the implementation's workers
(`conformance.isolation`: torch is imported once); an implementation run in a worker process
gets one per job. Unseeded, every shard uses Hypothesis's example database in the working
directory (`.hypothesis/`, safe for concurrent use): one shared database.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from hypothesis import settings as Settings

from conformance import runner
from conformance.options import RunOptions
from conformance.processes import context

_PROGRESS: Any = None  # in a job process: where it reports each program started


def cores() -> int:
    """The cores this process may run on (the default of --jobs)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run(
    options: RunOptions,
    *,
    dtypes: tuple[str, ...],
    settings: Settings,
    seed: int | None,
    max_failures: int,
    jobs: int,
    on_program: Callable[[str, int], None] | None = None,
) -> list[runner.RunResult]:
    """One result per dtype, each dtype's run done by `jobs` shards on `jobs` processes (in
    this process, one after the other, for jobs=1). `on_program(dtype, n)` is called in this
    process as the dtype's n-th program starts (progress)."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}")
    if jobs == 1:
        return [
            runner.run(
                options,
                dtypes=(dtype,),
                settings=settings,
                seed=seed,
                max_failures=max_failures,
                on_program=None if on_program is None else functools.partial(on_program, dtype),
            )
            for dtype in dtypes
        ]
    # The database resolved here: a settings object left at the default holds a sentinel
    # that does not survive pickling. The one `.hypothesis/` every shard shares.
    settings = Settings(settings, database=settings.database)
    pool_context = context()
    progress = pool_context.SimpleQueue()

    def relay() -> None:  # each shard's count of programs, added up per dtype
        counts: dict[str, dict[int, int]] = {dtype: {} for dtype in dtypes}
        while True:
            message = progress.get()
            if message is None:
                return
            dtype, index, programs = message
            counts[dtype][index] = programs
            if on_program is not None:
                on_program(dtype, sum(counts[dtype].values()))

    relaying = threading.Thread(target=relay, daemon=True)
    relaying.start()
    shards: dict[str, list[Any]] = {dtype: [] for dtype in dtypes}
    try:
        with ProcessPoolExecutor(
            max_workers=jobs, mp_context=pool_context, initializer=_start, initargs=(progress,)
        ) as pool:
            for dtype in dtypes:
                shards[dtype] = [
                    pool.submit(_shard, options, dtype, settings, seed, max_failures, (index, jobs))
                    for index in range(jobs)
                ]
            results = [
                runner.merge([future.result() for future in shards[dtype]], max_failures)
                for dtype in dtypes
            ]
    except BrokenProcessPool as error:
        raise RuntimeError(
            f"a job process died while running {options.implementation} (with --isolation "
            "none, an implementation that crashes takes its job process with it)"
        ) from error
    finally:
        progress.put(None)
        relaying.join(timeout=5)
    return results


def _start(progress: Any) -> None:
    global _PROGRESS
    _PROGRESS = progress


def _shard(
    options: RunOptions,
    dtype: str,
    settings: Settings,
    seed: int | None,
    max_failures: int,
    shard: tuple[int, int],
) -> runner.RunResult:
    return runner.run(
        options,
        dtypes=(dtype,),
        settings=settings,
        seed=seed,
        max_failures=max_failures,
        shard=shard,
        on_program=lambda n: _PROGRESS.put((dtype, shard[0], n)),
    )
