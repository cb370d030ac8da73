"""Per-head flows and the anchor heads' rankings (issue 24; paper §2.1, Eq. 1 per head).

The paper's layer saliency ``I_l = |sum_h A_h ⊙ dL/dA_h|`` hides which heads carry a flow.
One saliency pass with ``run_saliency(head_flows=True)`` also keeps, per prompt, layer and
head, the sums of ``A_h ⊙ G_h`` (signed) and of ``|A_h ⊙ G_h|`` over every fine edge group
(:mod:`anchor_flow.analysis.edges`), reduced in the same backward hooks: memory
``layer x head x groups`` per prompt. What adds up: the signed per-head sums of a group, summed
over the heads, equal the signed layer sum ``sum_e (sum_h A_h ⊙ G_h)_e``: the layer value
*before* Eq. 1 takes the absolute value edge by edge. The layer value itself lies between
``|sum_h signed_h|`` and ``sum_h abs_h`` and equals the latter with the footnote's
``head_reduction="abs_then_sum"``.

Two kinds of anchor head (:data:`HEAD_KINDS`):

* **gathering**: a head's share of its layer's text -> label-word saliency (``|A_h ⊙ G_h|``
  summed over the edges ``label <- text``, same demonstration and earlier), per prompt;
* **reading**: a head's share of its layer's label-word -> target saliency (``S_pq``'s edges).

Shares are per prompt (NaN where the layer has none of the flow), averaged over prompts per
run and over runs, with a percentile bootstrap interval (:func:`anchor_flow.results.stats.
run_means`). A share says nothing about whether the layer has the flow at all (a layer with
1e-26 of it still splits it into shares): the *enrichment* of a head is its mean saliency per
edge of the kind over its mean saliency per edge of all its edges (a ratio of means over
prompts, bootstrap interval), which a gathering head must clear as well
(:func:`anchor_flow.analysis.findings.heads.anchor_heads_frame` applies the margins).

Deliberately not here: blocking heads (:mod:`anchor_flow.analysis.heads.causal`), verdicts
(:mod:`anchor_flow.analysis.findings.heads`), plotting.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from anchor_flow.analysis.edges import FINE_GROUPS, fine_group_flow
from anchor_flow.analysis.saliency.measure import run_saliency
from anchor_flow.analysis.saliency.result import SaliencyResult
from anchor_flow.errors import AnchorFlowError
from anchor_flow.icl.prompts import ICLPrompt
from anchor_flow.icl.roles import PromptBatch
from anchor_flow.results.runs import PooledResult
from anchor_flow.results.stats import bootstrap_interval

__all__ = ["HEAD_KINDS", "HeadFlows", "HeadKind", "kind_groups", "run_head_flows"]

SCHEMA = "anchor_flow.head_flows/1"
HeadKind = Literal["gathering", "reading"]
HEAD_KINDS: dict[str, str] = {
    "gathering": "share of the layer's text -> label-word saliency",
    "reading": "share of the layer's label-word -> target saliency",
}


def kind_groups(kind: str) -> list[int]:
    """The fine edge groups (indices into ``FINE_GROUPS``) of a kind of anchor head.

    Example:
        >>> [FINE_GROUPS[g] for g in kind_groups("reading")]
        ['target <- label (same demo)', 'target <- label (earlier)']
    """
    prefix = {"gathering": "label <- text", "reading": "target <- label ("}.get(kind)
    if prefix is None:
        raise AnchorFlowError(f"kind={kind!r}; expected one of {', '.join(HEAD_KINDS)}")
    return [g for g, name in enumerate(FINE_GROUPS) if name.startswith(prefix)]


@dataclass(frozen=True)
class HeadFlows(PooledResult):
    """Per-head saliency summed over each fine edge group, per prompt.

    Example:
        >>> flows = run_head_flows(model, prompts)  # doctest: +SKIP
        >>> flows.top_heads("gathering", k=1, layers=[0])  # doctest: +SKIP
        [(0, 0)]

    Attributes:
        head_sums: ``[prompt, layer, head, group]`` signed sums of ``A_h ⊙ G_h``.
        head_abs_sums: ``[prompt, layer, head, group]`` sums of ``|A_h ⊙ G_h|``.
        group_counts: ``[prompt, group]`` edges per fine group.
        run: index into ``run_names`` of each prompt's run (seed).
        run_names: one name per run, e.g. ``"seed-42"``.
        settings: how the saliency was computed (JSON-safe).
    """

    head_sums: Float[Tensor, "prompt layer head group"]
    head_abs_sums: Float[Tensor, "prompt layer head group"]
    group_counts: Float[Tensor, "prompt group"]
    run: Int[Tensor, " prompt"]
    run_names: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)

    _STEM, _SCHEMA, _WHAT = "head_flows", SCHEMA, "a per-head flow result"
    _ARRAYS = ("head_sums", "head_abs_sums", "group_counts", "run")

    def __post_init__(self) -> None:
        shape = tuple(self.head_sums.shape)
        n = shape[0] if shape else 0
        if (len(shape) != 4 or shape[-1] != len(FINE_GROUPS) or n == 0
                or tuple(self.head_abs_sums.shape) != shape
                or tuple(self.group_counts.shape) != (n, len(FINE_GROUPS))
                or tuple(self.run.shape) != (n,)):  # fmt: skip
            raise AnchorFlowError(
                f"head_sums {shape}, head_abs_sums {tuple(self.head_abs_sums.shape)}, "
                f"group_counts {tuple(self.group_counts.shape)}, run {tuple(self.run.shape)}; "
                f"expected [prompt, layer, head, {len(FINE_GROUPS)}] twice, [prompt, "
                f"{len(FINE_GROUPS)}] and [prompt] with at least one prompt"
            )
        self._check_run_indices()
        self._detach_arrays()

    @classmethod
    def from_saliency(cls, result: SaliencyResult, run_name: str = "run") -> HeadFlows:
        """The per-head flows of a saliency result computed with ``head_flows=True``."""
        if result.head_sums is None or result.head_abs_sums is None:
            raise AnchorFlowError(
                "this saliency result has no per-head sums; run run_saliency(..., head_flows=True)"
            )
        return cls(head_sums=result.head_sums, head_abs_sums=result.head_abs_sums,
                   group_counts=result.group_counts,
                   run=torch.zeros(result.n_prompts, dtype=torch.long),
                   run_names=(run_name,), settings=dict(result.settings))  # fmt: skip

    @property
    def n_prompts(self) -> int:
        return int(self.head_sums.shape[0])

    @property
    def n_layers(self) -> int:
        return int(self.head_sums.shape[1])

    @property
    def n_heads(self) -> int:
        return int(self.head_sums.shape[2])

    def signed_layer_sums(self) -> Float[Tensor, "prompt layer group"]:
        """Per-head signed sums added over the heads: the layer's signed group sums."""
        return self.head_sums.double().sum(2)

    def kind_sums(self, kind: str) -> Float[Tensor, "prompt layer head"]:
        """``|A_h ⊙ G_h|`` summed over the kind's edges (see :func:`kind_groups`)."""
        return self.head_abs_sums[..., kind_groups(kind)].double().sum(-1)

    def shares(self, kind: str) -> Float[Tensor, "prompt layer head"]:
        """Each head's share of its layer's flow of the kind, per prompt (NaN: no flow)."""
        sums = self.kind_sums(kind)
        total = sums.sum(-1, keepdim=True)
        return sums / total.where(total > 0, math.nan)

    def enrichment_parts(self, kind: str) -> Float[Tensor, "prompt layer head 2"]:
        """Per prompt: mean ``|A_h ⊙ G_h|`` per edge of the kind, and per edge of any group."""
        counts = self.group_counts.double()
        kind_edges = counts[:, kind_groups(kind)].sum(-1)[:, None, None]
        all_edges = counts.sum(-1)[:, None, None]
        own = self.kind_sums(kind) / kind_edges.where(kind_edges > 0, math.nan)
        overall = self.head_abs_sums.double().sum(-1) / all_edges
        return torch.stack([own, overall], -1)

    def ranking(
        self,
        kind: str,
        layers: Sequence[int] | None = None,
        *,
        level: float = 0.95,
        seed: int = 0,
    ) -> pd.DataFrame:
        """Every head of ``layers`` (default: all) by its mean share, largest first.

        Columns: ``kind``, ``rank`` (1-based), ``layer``, ``head``, ``share``, ``ci_low``,
        ``ci_high`` (mean over runs of the per-run mean share, percentile bootstrap over runs
        when there are two or more, else over prompts), ``enrichment``,
        ``enrichment_ci_low``, ``enrichment_ci_high`` (ratio of means over prompts, bootstrap
        over prompts) and ``n_prompts``. Heads whose share is undefined (no flow in their
        layer in any prompt) come last.
        """
        chosen = self._layers(layers)
        shares = self.shares(kind)[:, chosen]  # [prompt, layer, head]
        n_prompts, n_layers, n_heads = shares.shape
        flat = shares.reshape(n_prompts, -1)
        per_run = torch.stack([flat[self.run == r].nanmean(0) for r in range(self.n_runs)])
        units = per_run if self.n_runs >= 2 else flat
        low, high = bootstrap_interval(units, lambda v: v.nanmean(0), level=level, seed=seed)
        parts = self.enrichment_parts(kind)[:, chosen].reshape(n_prompts, -1, 2)

        def ratio(v: Tensor) -> Tensor:
            return v[..., 0].nanmean(0) / v[..., 1].nanmean(0)

        e_low, e_high = bootstrap_interval(parts, ratio, level=level, seed=seed)
        layer_of = np.repeat(np.array(chosen), n_heads)
        frame = pd.DataFrame({
            "kind": kind, "layer": layer_of, "head": np.tile(np.arange(n_heads), n_layers),
            "share": per_run.nanmean(0).numpy(), "ci_low": low.numpy(), "ci_high": high.numpy(),
            "enrichment": ratio(parts).numpy(), "enrichment_ci_low": e_low.numpy(),
            "enrichment_ci_high": e_high.numpy(), "n_prompts": self.n_prompts,
        })  # fmt: skip
        frame = frame.sort_values(["share", "enrichment"], ascending=False, na_position="last",
                                  kind="stable").reset_index(drop=True)  # fmt: skip
        frame.insert(1, "rank", np.arange(1, len(frame) + 1))
        return frame

    def top_heads(
        self, kind: str, k: int = 1, layers: Sequence[int] | None = None
    ) -> list[tuple[int, int]]:
        """The ``k`` heads of ``layers`` with the largest mean share, as ``(layer, head)``.

        The pairs index TransformerLens directly: ``utils.get_act_name("z", layer)`` with
        ``[:, :, head]``, or ``hook_pattern``'s head axis.
        """
        if not isinstance(k, int) or k < 1:
            raise AnchorFlowError(f"k={k!r}; expected a positive integer")
        frame = self.ranking(kind, layers).dropna(subset=["share"]).head(k)
        return [(int(a), int(b)) for a, b in zip(frame["layer"], frame["head"], strict=True)]

    def to_frame(self) -> pd.DataFrame:
        """Long form: one row per (prompt, layer, head, fine group): signed and absolute
        sums, the group's flow (S_wp, S_pq, S_ww) and its edge count."""
        n_prompts, n_layers, n_heads, n_groups = self.head_sums.shape
        prompt, layer, head, group = np.meshgrid(
            np.arange(n_prompts), np.arange(n_layers), np.arange(n_heads), np.arange(n_groups),
            indexing="ij",
        )  # fmt: skip
        counts = self.group_counts[:, None, None, :].expand(-1, n_layers, n_heads, -1)
        return pd.DataFrame({
            "run": np.array(self.run_names)[self.run.numpy()[prompt.ravel()]],
            "prompt": prompt.ravel(), "layer": layer.ravel(), "head": head.ravel(),
            "group": np.array(FINE_GROUPS)[group.ravel()],
            "flow": np.array(fine_group_flow())[group.ravel()],
            "signed_sum": self.head_sums.numpy().ravel(),
            "abs_sum": self.head_abs_sums.numpy().ravel(), "n_edges": counts.numpy().ravel(),
        })  # fmt: skip

    def _layers(self, layers: Sequence[int] | None) -> list[int]:
        chosen = list(range(self.n_layers)) if layers is None else [int(x) for x in layers]
        if not chosen or any(not 0 <= x < self.n_layers for x in chosen):
            raise AnchorFlowError(
                f"layers={chosen}; expected at least one layer in 0..{self.n_layers - 1}"
            )
        return chosen

    @classmethod
    def _check_concat(cls, results: Sequence[HeadFlows], names: tuple[str, ...]) -> None:
        shapes = {tuple(r.head_sums.shape[1:]) for r in results}
        if len(shapes) != 1:
            raise AnchorFlowError(f"cannot concat per-head flows of shapes {sorted(shapes)}")
        cls._check_unique_run_names(names)

    def _meta(self) -> dict[str, Any]:
        return {**super()._meta(), "groups": list(FINE_GROUPS)}

    @classmethod
    def _fields_from_meta(cls, meta: Mapping[str, Any]) -> dict[str, Any]:
        if meta.get("groups") != list(FINE_GROUPS):
            raise AnchorFlowError("stored per-head flows use other edge groups than this version")
        return super()._fields_from_meta(meta)


def run_head_flows(
    model: Any,
    prompts: Sequence[ICLPrompt] | PromptBatch,
    *,
    run_name: str | None = None,
    **saliency_options: Any,
) -> HeadFlows:
    """One saliency pass with per-head flows (:func:`run_saliency` with ``head_flows=True``).

    Example:
        >>> from anchor_flow import load_model, toy_prompts
        >>> flows = run_head_flows(load_model("toy-gpt2"), toy_prompts(4), progress=False)
        >>> flows.head_sums.shape  # [prompt, layer, head, fine group]
        torch.Size([4, 4, 4, 27])

    Args:
        model: a TransformerLens model.
        prompts: ICL prompts or a PromptBatch.
        run_name: the run's name in pooled results (default ``"run"``).
        saliency_options: passed on to :func:`run_saliency` (loss, batch_size, memory, ...).
    """
    result = run_saliency(model, prompts, head_flows=True, **saliency_options)
    return HeadFlows.from_saliency(result, run_name or "run")
