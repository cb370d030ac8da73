"""Means and confidence intervals over prompts (or seeds).

Percentile bootstrap over the first axis, seeded, so an interval is reproducible. It works
for statistics that are not plain means (e.g. the paper's per-layer normalisation, which
divides means by their sum).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from anchor_flow.errors import AnchorFlowError

__all__ = ["bootstrap_interval"]


def bootstrap_interval(
    values: Tensor,
    statistic: Callable[[Tensor], Tensor] = lambda v: v.mean(0),
    *,
    level: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Percentile bootstrap interval of ``statistic`` over resamples of ``values``' first axis.

    Example:
        >>> low, high = bootstrap_interval(torch.arange(10.0)[:, None])
        >>> bool(low[0] < 4.5 < high[0])
        True

    Args:
        values: ``[n, ...]``; rows are the independent units (prompts, seeds).
        statistic: maps a ``[n, ...]`` resample to the statistic (default: the mean).
        level: coverage of the interval.
        n_resamples: number of bootstrap resamples.
        seed: seed of the resampling generator.

    Returns:
        ``(low, high)``, each shaped like ``statistic(values)``. With one row both equal the
        statistic (no spread can be estimated).
    """
    if not 0.0 < level < 1.0:
        raise AnchorFlowError(f"level={level!r}: expected a coverage strictly between 0 and 1")
    n = values.shape[0]
    if n == 0:
        raise AnchorFlowError("cannot compute an interval over 0 rows; expected at least one")
    point = statistic(values)
    if n == 1:
        return point.clone(), point.clone()
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(0, n, (n_resamples, n), generator=generator)
    samples = torch.stack([statistic(values[row]) for row in index])
    alpha = (1.0 - level) / 2.0
    quantiles = torch.tensor([alpha, 1.0 - alpha], dtype=samples.dtype)
    low, high = torch.nanquantile(samples, quantiles, dim=0)
    return low, high
