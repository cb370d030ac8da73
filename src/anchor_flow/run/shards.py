"""Joining the ranks' parts of a data-parallel run into the result of one process.

Each rank runs an experiment on its consecutive part of every seed's prompts
(:meth:`anchor_flow.run.distributed.Ranks.shard`), and rank 0 joins the parts in rank order:

* deep layers and isolation: :meth:`~anchor_flow.results.runs.PooledResult.join` (every
  per-prompt array concatenated; isolation's random control draws by the prompt's index in
  the whole list, ``first_prompt_id``);
* saliency: :func:`join_saliency` (the right-padded ``roles`` and ``text_row_sums`` re-padded
  to the longest part, as one process pads them);
* diagnosis: :func:`join_diagnosis` (the per-run mean anchor keys weighted by the parts'
  anchor counts; the PCA's ``M`` is checked on the joined queries);
* compression: :meth:`~anchor_flow.applications.compression.outcomes.CompressionOutcomes.join`
  before Hidden_random-top picks its trial over all prompts.

Re-weighting is shared by seeds, not prompts (each seed trains its own beta).
Deliberately not here: the exchange itself (:mod:`anchor_flow.run.distributed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from anchor_flow.errors import AnchorFlowError

__all__ = ["join_diagnosis", "join_saliency"]


def _pad(values: Tensor, width: int, fill: int | float) -> Tensor:
    return F.pad(values, (0, width - values.shape[-1]), value=fill)


def join_saliency(parts: Sequence[Any]) -> Any:
    """One :class:`~anchor_flow.analysis.saliency.result.SaliencyResult` from its parts.

    Raises:
        AnchorFlowError: no parts, or parts that kept their maps (a run never keeps them).
    """
    from anchor_flow.analysis.saliency.result import SaliencyResult
    from anchor_flow.icl.roles import Role

    if not parts or any(p.maps is not None or p.head_maps is not None for p in parts):
        raise AnchorFlowError("join_saliency needs at least one part and no kept maps")
    if len(parts) == 1:
        return parts[0]
    width = max(int(p.roles.shape[1]) for p in parts)
    rows = None
    if parts[0].text_row_sums is not None:
        rows = torch.cat([_pad(p.text_row_sums, width, 0.0) for p in parts])
    return SaliencyResult(
        group_sums=torch.cat([p.group_sums for p in parts]),
        group_counts=torch.cat([p.group_counts for p in parts]),
        label_probs=torch.cat([p.label_probs for p in parts]),
        gold=torch.cat([p.gold for p in parts]),
        roles=torch.cat([_pad(p.roles, width, int(Role.PAD)) for p in parts]),
        str_tokens=tuple(tokens for p in parts for tokens in p.str_tokens),
        settings=dict(parts[0].settings),
        text_row_sums=rows,
        **{name: torch.cat([getattr(p, name) for p in parts])
           for name in ("head_sums", "head_abs_sums") if parts[0].head_sums is not None},
    )  # fmt: skip


def join_diagnosis(parts: Sequence[tuple[Any, Tensor]], n_components: int) -> Any:
    """One run's :class:`~anchor_flow.applications.diagnosis.result.DiagnosisResult` from its
    parts, each with its anchor counts ``[layer, class]``
    (:func:`~anchor_flow.applications.diagnosis.distances.record_diagnosis`).

    Raises:
        DiagnosisError: ``n_components`` does not fit the joined queries (as
            :func:`~anchor_flow.applications.diagnosis.distances.run_diagnosis` raises).
    """
    from anchor_flow.applications.diagnosis.confusion import query_pca

    if not parts:
        raise AnchorFlowError("join_diagnosis needs at least one part")
    results = [result for result, _ in parts]
    first = results[0]
    if len(parts) > 1:
        counts = torch.stack([count for _, count in parts])  # [part, layer, class]
        sums = sum(r.keys[0] * c[..., None] for r, c in zip(results, counts, strict=True))
        first = replace(
            first,
            queries=torch.cat([r.queries for r in results]),
            keys=(sums / counts.sum(0)[..., None])[None],
            label_probs=torch.cat([r.label_probs for r in results]),
            gold=torch.cat([r.gold for r in results]),
            run=torch.cat([r.run for r in results]),
        )
    index = first.layers.index(int(first.settings["layer"]))
    query_pca(first.queries[:, index], n_components)  # as run_diagnosis checks M
    return first
