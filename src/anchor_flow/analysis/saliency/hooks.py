"""Saliency of attention edges (paper §2.1, Eq. 1) with TransformerLens hook-point callbacks.

``I_l = |sum_h A_{h,l} ⊙ dL/dA_{h,l}|`` where ``A`` is the post-softmax pattern
(``hook_pattern``) and ``L`` the cross-entropy over the label-word logits at the target
position against the gold label (the paper). Options: the model's predicted label, any
metric on the target logits, per-head maps, the footnote's ``sum_h |·|`` reduction, and a
gauge-invariant variant that uses the gradient w.r.t. the pre-softmax scores,
``A ⊙ (G - sum_k A_ik G_ik)``, which unlike ``A ⊙ G`` does not change when value biases are
folded into the output bias (see TL_NOTES).

One forward and one backward pass per batch. The gradient graph starts at layer 0's
pattern (made to require grad through a scalar leaf) and parameters are frozen, so no parameter
gradient is ever computed. With ``memory="recompute"`` the blocks are re-run in the backward
(:mod:`anchor_flow.models.recompute`) and a layer's pattern is kept only from its recompute
to its backward hook. Each backward hook reduces its layer at once to sums over the fine edge
groups of :mod:`anchor_flow.analysis.edges`; full ``[layer, batch, head, pos, pos]`` tensors are
only kept when per-head maps are asked for.

This module holds the hook factory (:func:`saliency_hooks`), for composing the measurement with
other hooks; running it over prompts is :mod:`anchor_flow.analysis.saliency.measure`. It does
not aggregate flows over prompts (:mod:`anchor_flow.analysis.flows`) or plot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from anchor_flow.analysis.edges import FINE_GROUPS
from anchor_flow.errors import AnchorFlowError, DeadAttentionHooksError
from anchor_flow.icl.roles import PromptBatch
from anchor_flow.models.recompute import recomputing
from anchor_flow.models.tl_adapter import adapt

__all__ = [
    "BatchHooks",
    "Gradient",
    "HeadReduction",
    "Memory",
    "Metric",
    "SaliencyHooks",
    "label_logits",
    "saliency_hooks",
]

Metric = Callable[[Float[Tensor, "batch d_vocab"], PromptBatch], Float[Tensor, " batch"]]
"""A per-row loss from the full-vocabulary logits at the target position."""

Gradient = Literal["pattern", "scores"]
HeadReduction = Literal["sum_then_abs", "abs_then_sum"]
Memory = Literal["keep", "recompute"]
HookList = list[tuple[str, Callable[..., Any]]]
BatchHooks = Callable[[Tensor, PromptBatch], Sequence[tuple[Any, Callable[..., Any]]]]


def label_logits(
    final_logits: Float[Tensor, "batch d_vocab"], batch: PromptBatch
) -> Float[Tensor, "batch n_classes"]:
    """The label words' logits at the target (the paper's restricted softmax input)."""
    return final_logits.gather(1, batch.label_token_ids.to(final_logits.device))


@dataclass
class SaliencyHooks:
    """Forward and backward hooks that record per-layer saliency of one batch.

    Use them inside TransformerLens' own context manager and run ``backward()`` *inside*
    the block (backward hooks only fire there)::

        recorder = saliency_hooks(model, batch)
        with model.hooks(fwd_hooks=recorder.fwd_hooks, bwd_hooks=recorder.bwd_hooks):
            loss_of(model(batch.tokens)).backward()
        recorder.group_sums  # [batch, layer, group]

    Attributes:
        fwd_hooks, bwd_hooks: lists of ``(hook_name, fn)``; concatenate with your own.
        group_sums: ``[batch, layer, group]`` saliency summed over each fine edge group.
        maps: ``[batch, layer, pos, pos]`` saliency maps when ``keep_maps``, else None.
        head_maps: ``[batch, layer, head, pos, pos]`` per-head ``|A ⊙ G|`` when
            ``keep_head_maps``, else None.
        text_row_sums: ``[batch, layer, pos]`` per reading position (row), saliency summed
            over its edges from text positions (the within-row comparison of claim C1).
        head_sums: ``[batch, layer, head, group]`` signed per-head sums of ``A_h ⊙ G_h`` over
            each fine group when ``keep_head_sums``, else None.
        head_abs_sums: the same of ``|A_h ⊙ G_h|`` when ``keep_head_sums``, else None.
    """

    fwd_hooks: HookList
    bwd_hooks: HookList
    group_sums: Float[Tensor, "batch layer group"]
    maps: Float[Tensor, "batch layer pos pos"] | None
    head_maps: Float[Tensor, "batch layer head pos pos"] | None
    text_row_sums: Float[Tensor, "batch layer pos"] | None = None
    head_sums: Float[Tensor, "batch layer head group"] | None = None
    head_abs_sums: Float[Tensor, "batch layer head group"] | None = None
    layers_seen: set[int] = field(default_factory=set)
    _patterns: dict[int, Tensor] = field(default_factory=dict, repr=False)

    def check_complete(self, n_layers: int) -> None:
        """Raise if some layer's backward hook never fired (the hooks are not live)."""
        missing = sorted(set(range(n_layers)) - self.layers_seen)
        if missing:
            raise DeadAttentionHooksError(
                f"no gradient reached hook_pattern of layers {missing}: were backward() and the "
                "forward pass run inside the model.hooks(...) block, and does the loss depend "
                "on the target position? Refusing to return zero saliency."
            )


class _GraphStart(torch.autograd.Function):
    """Identity on a pattern whose output requires grad through a scalar leaf.

    A leaf pattern (``detach().requires_grad_()``) would be kept by its AccumulateGrad node
    until the backward ends: one layer's patterns alive for nothing with memory="recompute".
    """

    @staticmethod
    def forward(ctx: Any, pattern: Tensor, anchor: Tensor) -> Tensor:
        return pattern.view_as(pattern)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, None]:
        return None, None


REDUCE_CHUNK_BYTES = 2**28
"""Float32 bytes of ``[batch, heads, pos, pos]`` the backward hook reduces at once (256 MiB)."""


def _head_chunks(n_heads: int, bytes_per_head: int) -> list[slice]:
    step = max(1, min(n_heads, REDUCE_CHUNK_BYTES // max(1, bytes_per_head)))
    return [slice(start, min(start + step, n_heads)) for start in range(0, n_heads, step)]


def saliency_hooks(
    model: Any,
    groups: Int[Tensor, "batch pos pos"],
    *,
    gradient: Gradient = "pattern",
    head_reduction: HeadReduction = "sum_then_abs",
    keep_maps: bool = False,
    keep_head_maps: bool = False,
    keep_head_sums: bool = False,
    memory: Memory = "keep",
) -> SaliencyHooks:
    """Hook factory: per-layer saliency reduced to fine edge groups inside the hooks.

    Example:
        >>> recorder = saliency_hooks(model, edge_groups(batch))  # doctest: +SKIP

    Args:
        model: a TransformerLens model (or :class:`~anchor_flow.models.tl_adapter.ModelAdapter`).
        groups: fine edge group of every edge, from :func:`anchor_flow.analysis.edges.edge_groups`.
        gradient: ``"pattern"`` (paper: ``A ⊙ dL/dA``) or ``"scores"`` (gauge-invariant
            ``dL/dscores``).
        head_reduction: ``"sum_then_abs"`` (Eq. 1) or ``"abs_then_sum"`` (footnote).
        keep_maps: also keep ``[batch, layer, pos, pos]`` maps (for heatmaps).
        keep_head_maps: also keep per-head ``|A ⊙ G|`` (memory: layer x head x pos²).
        keep_head_sums: also keep per-head signed and absolute sums over the fine groups
            (memory: layer x head x groups per prompt; see the module docstring).
        memory: ``"keep"`` (each layer's pattern is kept from the forward until its backward
            hook) or ``"recompute"`` (kept only while
            :func:`~anchor_flow.models.recompute.recompute_blocks` re-runs its block in the
            backward: run the forward and backward inside that context).
    """
    if gradient not in ("pattern", "scores"):
        raise AnchorFlowError(f"gradient={gradient!r}; expected 'pattern' or 'scores'")
    if head_reduction not in ("sum_then_abs", "abs_then_sum"):
        raise AnchorFlowError(
            f"head_reduction={head_reduction!r}; expected 'sum_then_abs' or 'abs_then_sum'"
        )
    if memory not in ("keep", "recompute"):
        raise AnchorFlowError(f"memory={memory!r}; expected 'keep' or 'recompute'")
    adapter = adapt(model)
    n_batch, n_pos = groups.shape[0], groups.shape[1]
    n_groups = len(FINE_GROUPS)
    device = groups.device
    # Index 0 collects non-edges (group -1) and is dropped afterwards.
    flat_groups = (groups + 1).reshape(n_batch, -1)
    groups_on: dict[torch.device, Tensor] = {device: flat_groups}
    text_groups = [g for g, name in enumerate(FINE_GROUPS) if " <- text" in name]
    # Boolean (1 byte per edge): with the int64 index, the [batch, pos, pos] tensors kept for
    # the whole pass (at long contexts their bytes rival a layer's patterns).
    text_edges = torch.isin(groups, torch.tensor(text_groups, device=device))
    recorder = SaliencyHooks(
        fwd_hooks=[],
        bwd_hooks=[],
        group_sums=torch.zeros(
            n_batch, adapter.n_layers, n_groups, device=device, dtype=torch.float32
        ),
        maps=torch.zeros(
            n_batch, adapter.n_layers, n_pos, n_pos, device=device, dtype=torch.float32
        )
        if keep_maps
        else None,
        head_maps=(
            torch.zeros(
                n_batch,
                adapter.n_layers,
                adapter.n_heads,
                n_pos,
                n_pos,
                device=device,
                dtype=torch.float32,
            )
            if keep_head_maps
            else None
        ),
        text_row_sums=torch.zeros(
            n_batch, adapter.n_layers, n_pos, device=device, dtype=torch.float32
        ),
    )
    if keep_head_sums:
        shape = (n_batch, adapter.n_layers, adapter.n_heads, n_groups)
        recorder.head_sums = torch.zeros(shape, device=device, dtype=torch.float32)
        recorder.head_abs_sums = torch.zeros(shape, device=device, dtype=torch.float32)

    def reduce_heads(contribution: Tensor, layer: int, heads: slice) -> None:
        # Both sums in one scatter: [signed | absolute] along the head axis.
        assert recorder.head_sums is not None
        assert recorder.head_abs_sums is not None
        here, n_chunk = contribution.device, contribution.shape[1]
        if here not in groups_on:
            groups_on[here] = flat_groups.to(here)
        both = torch.cat([contribution, contribution.abs()], 1).reshape(n_batch, 2 * n_chunk, -1)
        index = groups_on[here][:, None, :].expand(-1, 2 * n_chunk, -1)
        sums = torch.zeros(n_batch, 2 * n_chunk, n_groups + 1, device=here, dtype=torch.float32)
        sums.scatter_add_(2, index, both)
        recorder.head_sums[:, layer, heads] = sums[:, :n_chunk, 1:].to(device)
        recorder.head_abs_sums[:, layer, heads] = sums[:, n_chunk:, 1:].to(device)

    def start_graph(pattern: Tensor, hook: Any) -> Tensor:
        # The graph starts at layer 0's pattern: nothing upstream needs gradients.
        anchor = torch.ones((), device=pattern.device, requires_grad=True)
        return _GraphStart.apply(pattern.detach(), anchor)

    def remember(pattern: Tensor, hook: Any) -> None:
        # With memory="recompute" the forward's pattern is dropped: the backward re-runs the
        # block and this hook keeps the recomputed (equal) pattern until reduce frees it.
        if memory == "keep" or recomputing():
            recorder._patterns[adapter.layer_of_hook(hook.name)] = pattern

    def reduce(grad: Tensor, hook: Any) -> None:
        layer = adapter.layer_of_hook(hook.name)
        if layer not in recorder._patterns:
            raise AnchorFlowError(
                f"memory='recompute': layer {layer}'s block was not recomputed in the backward; "
                "run the forward and backward inside anchor_flow.models.recompute."
                "recompute_blocks(model), or use memory='keep'"
            )
        pattern = recorder._patterns.pop(layer)
        saliency = torch.zeros(n_batch, n_pos, n_pos, device=grad.device, dtype=torch.float32)
        # A few heads at a time: float32 copies of a whole layer's pattern and gradient would
        # be 3-4x the layer's bf16 pattern at long contexts. One chunk below the budget.
        for heads in _head_chunks(adapter.n_heads, n_batch * n_pos * n_pos * 4):
            part = pattern[:, heads].float()
            contribution = part * grad[:, heads].float()
            if gradient == "scores":
                contribution = contribution - part * contribution.sum(-1, keepdim=True)
            if head_reduction == "sum_then_abs":
                saliency += contribution.sum(1)
            else:
                saliency += contribution.abs().sum(1)
            if recorder.head_maps is not None:
                recorder.head_maps[:, layer, heads] = contribution.abs().to(device)
            if recorder.head_sums is not None:
                reduce_heads(contribution, layer, heads)
        del pattern, part, contribution
        if head_reduction == "sum_then_abs":
            saliency = saliency.abs()
        # Reduce where the layer lives (a split model), then move the small result to the one
        # accumulation device.
        here = saliency.device
        if here not in groups_on:
            groups_on[here] = flat_groups.to(here)
        sums = torch.zeros(n_batch, n_groups + 1, device=here, dtype=torch.float32)
        sums.scatter_add_(1, groups_on[here], saliency.reshape(n_batch, -1))
        recorder.group_sums[:, layer] = sums[:, 1:].to(device)
        if recorder.text_row_sums is not None:
            recorder.text_row_sums[:, layer] = (saliency * text_edges.to(here)).sum(-1).to(device)
        if recorder.maps is not None:
            recorder.maps[:, layer] = saliency.to(device)
        recorder.layers_seen.add(layer)

    names = [adapter.pattern_hook_name(layer) for layer in range(adapter.n_layers)]
    # start_graph goes first and remember last, so that patterns edited by the caller's own
    # forward hooks (placed between, e.g. blocking) are the ones the saliency multiplies.
    recorder.fwd_hooks.append((names[0], start_graph))
    recorder.fwd_hooks.extend((name, remember) for name in names)
    recorder.bwd_hooks.extend((name, reduce) for name in names)
    return recorder
