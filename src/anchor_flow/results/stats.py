"""Means, confidence intervals and ROC-AUC (PAPER.md §3, the deep-layer classifier).

Percentile bootstrap over the first axis, seeded, so an interval is reproducible. It works
for statistics that are not plain means (e.g. the paper's per-layer normalisation, which
divides means by their sum).

:func:`run_means` is the summary every pooled result reports: the mean over runs (seeds) of
per-run means, with the bootstrap interval over runs when there are at least two, otherwise
over prompts.

ROC-AUC is the Mann-Whitney statistic (ties count 1/2), written here so that the package
needs no scikit-learn: :func:`roc_auc` for a binary problem and :func:`roc_auc_ovo` for the
macro one-vs-one multi-class AUC of Hand & Till (2001), what scikit-learn's
``roc_auc_score(..., multi_class="ovo")`` computes. Which scores and classes the paper feeds
them is :mod:`anchor_flow.analysis.deep`'s business.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from anchor_flow.errors import AnchorFlowError

__all__ = [
    "RunMeans", "bootstrap_interval", "roc_auc", "roc_auc_columns", "roc_auc_ovo", "run_means",
    "spearman",
]  # fmt: skip


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


@dataclass(frozen=True)
class RunMeans:
    """What :func:`run_means` returns: the means and their percentile bootstrap interval.

    Attributes:
        mean: mean over runs of the per-run means (NaN-aware), shaped like one column of
            the values without the prompt axis.
        ci_low, ci_high: the interval's bounds, shaped like ``mean``.
        ci_over: the bootstrap's units, ``"runs"`` (at least two runs) or ``"prompts"``.
    """

    mean: Tensor
    ci_low: Tensor
    ci_high: Tensor
    ci_over: Literal["runs", "prompts"]

    def row(self, index: int) -> dict[str, float]:
        """``{"mean", "ci_low", "ci_high"}`` of entry ``index`` as floats, for a frame's row."""
        return {
            "mean": float(self.mean[index]),
            "ci_low": float(self.ci_low[index]),
            "ci_high": float(self.ci_high[index]),
        }


def run_means(
    values: Float[Tensor, "*outcome prompt"],
    run: Int[Tensor, " prompt"],
    n_runs: int,
    *,
    level: float = 0.95,
) -> RunMeans:
    """Mean over runs (seeds) of the per-run means of ``values``, with a bootstrap interval.

    Each run weighs the same however many prompts it has. The interval resamples the runs'
    means when there are at least two runs, otherwise the prompts; NaN values (e.g. accuracy
    where the gold label is unknown) are left out of every mean.

    Example:
        >>> summary = run_means(torch.tensor([[1.0, 0.0, 1.0, 1.0]]), torch.tensor([0, 0, 1, 1]), 2)
        >>> summary.mean.tolist(), summary.ci_over
        ([0.75], 'runs')

    Args:
        values: ``[..., prompt]`` per-prompt values.
        run: ``[prompt]`` each prompt's run index in ``0 .. n_runs - 1``.
        n_runs: the number of runs.
        level: coverage of the interval.
    """
    per_run = torch.stack([values[..., run == r].nanmean(-1) for r in range(n_runs)])
    units = per_run if n_runs >= 2 else values.movedim(-1, 0)
    low, high = bootstrap_interval(units, lambda v: v.nanmean(0), level=level)
    return RunMeans(per_run.nanmean(0), low, high, "runs" if n_runs >= 2 else "prompts")


def _average_ranks(values: Tensor) -> Tensor:
    """1-based ranks of a 1-D tensor, ties sharing their average rank."""
    sorted_values, order = torch.sort(values.double(), stable=True)
    n = values.shape[0]
    _, inverse, counts = torch.unique_consecutive(
        sorted_values, return_inverse=True, return_counts=True
    )
    ends = torch.cumsum(counts, 0).double()
    average = ends - (counts.double() - 1.0) / 2.0  # mean of the ranks end-count+1 .. end
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = average[inverse]
    return ranks


def roc_auc(scores: Tensor, positive: Tensor) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties 1/2.

    Example:
        >>> roc_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([False, False, True, True]))
        0.75

    Args:
        scores: ``[n]`` real scores (higher = more positive); must be finite.
        positive: ``[n]`` bool, True for the positive class.

    Raises:
        AnchorFlowError: shapes differ, a score is not finite, or one class is empty.
    """
    if scores.ndim != 1 or tuple(positive.shape) != tuple(scores.shape):
        raise AnchorFlowError(
            f"roc_auc expects scores [n] and positive [n]; got shapes {tuple(scores.shape)} "
            f"and {tuple(positive.shape)}"
        )
    return float(roc_auc_columns(scores[:, None], positive)[0])


def roc_auc_columns(scores: Tensor, positive: Tensor) -> Tensor:
    """:func:`roc_auc` of every column of ``scores`` ``[n, m]`` at once, as float64 ``[m]``.

    Counts, for every (positive, negative) pair, a higher positive score as 1 and a tie as
    1/2 (the Mann-Whitney U, the rank sum's integer-and-halves numerator); :func:`roc_auc` is
    its one-column case.

    Example:
        >>> scores = torch.tensor([[0.1, 1.0], [0.4, 1.0], [0.35, 1.0], [0.8, 1.0]])
        >>> roc_auc_columns(scores, torch.tensor([False, False, True, True])).tolist()
        [0.75, 0.5]
    """
    if scores.ndim != 2 or positive.shape != (scores.shape[0],):
        raise AnchorFlowError(
            f"roc_auc_columns expects scores [n, m] and positive [n]; got shapes "
            f"{tuple(scores.shape)} and {tuple(positive.shape)}"
        )
    if not bool(torch.isfinite(scores).all()):
        raise AnchorFlowError("roc_auc got a score that is NaN or infinite; expected finite scores")
    positive = positive.bool()
    pos, neg = scores[positive].double(), scores[~positive].double()
    if pos.shape[0] == 0 or neg.shape[0] == 0:
        raise AnchorFlowError(
            f"roc_auc needs both classes; got {pos.shape[0]} positives and {neg.shape[0]} negatives"
        )
    u = torch.zeros(scores.shape[1], dtype=torch.float64)
    step = max(1, 4_000_000 // max(1, neg.shape[0] * scores.shape[1]))  # bounded memory
    for block in pos.split(step):
        above = (block[:, None, :] > neg[None]).sum((0, 1))
        ties = (block[:, None, :] == neg[None]).sum((0, 1))
        u += above.double() + ties.double() / 2.0
    return u / (pos.shape[0] * neg.shape[0])


def roc_auc_ovo(scores: Tensor, labels: Tensor) -> float:
    """Macro one-vs-one multi-class AUC (Hand & Till 2001) over the classes present.

    For every pair of classes ``(a, b)`` present in ``labels``, on the samples of those two
    classes: the mean of the AUC of column ``a`` for "is a" and of column ``b`` for "is b";
    the result is the unweighted mean over pairs.

    Example:
        >>> scores = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]])
        >>> roc_auc_ovo(scores, torch.tensor([0, 1, 2]))
        1.0

    Args:
        scores: ``[n, n_classes]`` scores, column ``c`` for class ``c``.
        labels: ``[n]`` class indices in ``0..n_classes-1``; at least two classes present.
    """
    if scores.ndim != 2 or labels.ndim != 1 or labels.shape[0] != scores.shape[0]:
        raise AnchorFlowError(
            f"roc_auc_ovo expects scores [n, n_classes] and labels [n]; got shapes "
            f"{tuple(scores.shape)} and {tuple(labels.shape)}"
        )
    present = sorted(int(c) for c in torch.unique(labels))
    if present and not 0 <= present[0] <= present[-1] < scores.shape[1]:
        raise AnchorFlowError(f"labels {present} out of range for {scores.shape[1]} score columns")
    if len(present) < 2:
        raise AnchorFlowError(f"roc_auc_ovo needs at least two classes; got {present}")
    pair_scores = []
    for i, a in enumerate(present):
        for b in present[i + 1 :]:
            keep = (labels == a) | (labels == b)
            is_a = labels[keep] == a
            a_vs_b = roc_auc(scores[keep, a], is_a)
            b_vs_a = roc_auc(scores[keep, b], ~is_a)
            pair_scores.append((a_vs_b + b_vs_a) / 2.0)
    return sum(pair_scores) / len(pair_scores)


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman rank correlation: Pearson correlation of the average ranks (ties share).

    Example:
        >>> spearman(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0, 30.0, 20.0, 40.0]))
        0.8

    Returns:
        NaN when either input is constant (the correlation is undefined).

    Raises:
        AnchorFlowError: shapes differ, fewer than 2 values, or a value is not finite.
    """
    if x.ndim != 1 or tuple(x.shape) != tuple(y.shape) or x.shape[0] < 2:
        raise AnchorFlowError(
            f"spearman expects two 1-D tensors of the same length >= 2; got shapes "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    if not bool(torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise AnchorFlowError("spearman got a NaN or infinite value; expected finite values")
    rx, ry = _average_ranks(x), _average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = float((rx.square().sum() * ry.square().sum()).sqrt())
    return float("nan") if denominator == 0.0 else round(float((rx * ry).sum()) / denominator, 12)
