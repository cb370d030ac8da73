"""The CPU thread policy of a run: one intra-op thread for small models.

Why: PyTorch's default intra-op pool has one OpenMP thread per core, and OpenMP workers
spin-wait between operations. A small model (the built-in ones, a few million parameters)
runs thousands of tiny operations per query, each too small to gain from threads, so on a
busy CPU every operation waits for workers that other processes have pre-empted, and the
spinning workers slow those processes in turn: the default run took 63 s on an idle 2-core
machine and 389 s under load, while ``OMP_NUM_THREADS=1`` gave identical results several
times faster under load. ``benchmarks/contention.py`` measures it.

Large models (whose matrix products do gain from threads), a user who set ``OMP_NUM_THREADS``
and ``ANCHOR_FLOW_THREADS=default`` (torch's default, for comparison) are left alone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

__all__ = ["SMALL_MODEL_PARAMETERS", "thread_policy"]

#: Below this many parameters a run uses one intra-op thread on the CPU.
SMALL_MODEL_PARAMETERS = 50_000_000


@contextlib.contextmanager
def thread_policy(model: Any) -> Iterator[int]:
    """Use one intra-op CPU thread inside the block for a small model; yields the count used.

    Example:
        >>> import torch
        >>> with thread_policy(torch.nn.Linear(2, 2)) as threads:  # doctest: +SKIP
        ...     threads
        1
    """
    import torch

    before = torch.get_num_threads()
    n_parameters = sum(p.numel() for p in model.parameters())
    chosen = "OMP_NUM_THREADS" in os.environ or os.environ.get("ANCHOR_FLOW_THREADS") == "default"
    if chosen or n_parameters >= SMALL_MODEL_PARAMETERS:
        chosen = True
    if chosen or before == 1:
        yield before
        return
    torch.set_num_threads(1)
    try:
        yield 1
    finally:
        torch.set_num_threads(before)
