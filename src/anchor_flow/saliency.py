"""Saliency of attention edges (paper §2.1, Eq. 1) with TransformerLens hook-point callbacks.

``I_l = |sum_h A_{h,l} ⊙ dL/dA_{h,l}|`` where ``A`` is the post-softmax pattern
(``hook_pattern``) and ``L`` the cross-entropy over the label-word logits at the target
position against the gold label (the paper). Options: the model's predicted label, any
metric on the target logits, per-head maps, the footnote's ``sum_h |·|`` reduction, and a
gauge-invariant variant that uses the gradient w.r.t. the pre-softmax scores,
``A ⊙ (G - sum_k A_ik G_ik)``, which unlike ``A ⊙ G`` does not change when value biases are
folded into the output bias (see TL_NOTES).

One forward and one backward pass per batch. The gradient graph starts at layer 0's
pattern (a leaf that requires grad) and parameters are frozen, so no parameter gradient is
ever computed. Each backward hook reduces its layer at once to sums over the fine edge
groups of :mod:`anchor_flow.edges`; full ``[layer, batch, head, pos, pos]`` tensors are
only kept when per-head maps are asked for.

This module does not aggregate flows over prompts (:mod:`anchor_flow.flows`) or plot.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from anchor_flow.edges import FINE_GROUPS, edge_groups
from anchor_flow.errors import AnchorFlowError, DeadAttentionHooksError
from anchor_flow.prompts import ICLPrompt, tokenize_prompts
from anchor_flow.roles import PromptBatch
from anchor_flow.saliency_result import SaliencyResult
from anchor_flow.tl_adapter import ModelAdapter, adapt, check_attention_hooks_live, frozen

__all__ = [
    "Metric",
    "SaliencyHooks",
    "SaliencyResult",
    "label_logits",
    "run_saliency",
    "saliency_hooks",
]

Metric = Callable[[Float[Tensor, "batch d_vocab"], PromptBatch], Float[Tensor, " batch"]]
"""A per-row loss from the full-vocabulary logits at the target position."""

Gradient = Literal["pattern", "scores"]
HeadReduction = Literal["sum_then_abs", "abs_then_sum"]
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
    """

    fwd_hooks: HookList
    bwd_hooks: HookList
    group_sums: Float[Tensor, "batch layer group"]
    maps: Float[Tensor, "batch layer pos pos"] | None
    head_maps: Float[Tensor, "batch layer head pos pos"] | None
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


def saliency_hooks(
    model: Any,
    groups: Int[Tensor, "batch pos pos"],
    *,
    gradient: Gradient = "pattern",
    head_reduction: HeadReduction = "sum_then_abs",
    keep_maps: bool = False,
    keep_head_maps: bool = False,
) -> SaliencyHooks:
    """Hook factory: per-layer saliency reduced to fine edge groups inside the hooks.

    Example:
        >>> recorder = saliency_hooks(model, edge_groups(batch))  # doctest: +SKIP

    Args:
        model: a TransformerLens model (or :class:`~anchor_flow.tl_adapter.ModelAdapter`).
        groups: fine edge group of every edge, from :func:`anchor_flow.edges.edge_groups`.
        gradient: ``"pattern"`` (paper: ``A ⊙ dL/dA``) or ``"scores"`` (gauge-invariant
            ``dL/dscores``).
        head_reduction: ``"sum_then_abs"`` (Eq. 1) or ``"abs_then_sum"`` (footnote).
        keep_maps: also keep ``[batch, layer, pos, pos]`` maps (for heatmaps).
        keep_head_maps: also keep per-head ``|A ⊙ G|`` (memory: layer x head x pos²).
    """
    if gradient not in ("pattern", "scores"):
        raise AnchorFlowError(f"gradient={gradient!r}; expected 'pattern' or 'scores'")
    if head_reduction not in ("sum_then_abs", "abs_then_sum"):
        raise AnchorFlowError(
            f"head_reduction={head_reduction!r}; expected 'sum_then_abs' or 'abs_then_sum'"
        )
    adapter = adapt(model)
    n_batch, n_pos = groups.shape[0], groups.shape[1]
    n_groups = len(FINE_GROUPS)
    device = groups.device
    # Index 0 collects non-edges (group -1) and is dropped afterwards.
    flat_groups = (groups + 1).reshape(n_batch, -1)
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
    )

    def start_graph(pattern: Tensor, hook: Any) -> Tensor:
        # Layer 0's pattern becomes the graph's only leaf: nothing upstream needs gradients.
        return pattern.detach().requires_grad_(True)

    def remember(pattern: Tensor, hook: Any) -> None:
        recorder._patterns[adapter.layer_of_hook(hook.name)] = pattern

    def reduce(grad: Tensor, hook: Any) -> None:
        layer = adapter.layer_of_hook(hook.name)
        pattern = recorder._patterns.pop(layer).float()
        grad = grad.float()
        contribution = pattern * grad
        if gradient == "scores":
            contribution = contribution - pattern * contribution.sum(-1, keepdim=True)
        if head_reduction == "sum_then_abs":
            saliency = contribution.sum(1).abs()
        else:
            saliency = contribution.abs().sum(1)
        sums = torch.zeros(n_batch, n_groups + 1, device=device, dtype=torch.float32)
        sums.scatter_add_(1, flat_groups, saliency.reshape(n_batch, -1))
        recorder.group_sums[:, layer] = sums[:, 1:]
        if recorder.maps is not None:
            recorder.maps[:, layer] = saliency
        if recorder.head_maps is not None:
            recorder.head_maps[:, layer] = contribution.abs()
        recorder.layers_seen.add(layer)

    names = [adapter.pattern_hook_name(layer) for layer in range(adapter.n_layers)]
    # start_graph goes first and remember last, so that patterns edited by the caller's own
    # forward hooks (placed between, e.g. blocking) are the ones the saliency multiplies.
    recorder.fwd_hooks.append((names[0], start_graph))
    recorder.fwd_hooks.extend((name, remember) for name in names)
    recorder.bwd_hooks.extend((name, reduce) for name in names)
    return recorder


def _batch_loss(
    final_logits: Tensor,
    batch: PromptBatch,
    loss: Literal["gold", "predicted"],
    metric: Metric | None,
) -> Tensor:
    if metric is not None:
        return metric(final_logits, batch).sum()
    logits = label_logits(final_logits, batch).float()
    if loss == "gold":
        target = batch.gold.to(logits.device)
        if bool((target < 0).any()):
            raise AnchorFlowError(
                "loss='gold' needs every query's label; some prompts have query.label=None. "
                "Pass loss='predicted' to differentiate w.r.t. the model's own prediction."
            )
    else:
        target = logits.argmax(-1)
    # Summed, not averaged: a mean would scale each prompt's saliency by 1/batch.
    return F.cross_entropy(logits, target, reduction="sum")


@dataclass(frozen=True)
class _BatchOutput:
    group_sums: Tensor
    group_counts: Tensor
    label_probs: Tensor
    maps: Tensor | None
    head_maps: Tensor | None


def _saliency_of_batch(
    adapter: ModelAdapter,
    batch: PromptBatch,
    *,
    loss: Literal["gold", "predicted"],
    metric: Metric | None,
    gradient: Gradient,
    head_reduction: HeadReduction,
    keep_maps: bool,
    keep_head_maps: bool,
    extra_hooks: Sequence[tuple[Any, Callable[..., Any]]],
) -> _BatchOutput:
    device = adapter.device
    groups = edge_groups(batch).to(device)
    recorder = saliency_hooks(
        adapter,
        groups,
        gradient=gradient,
        head_reduction=head_reduction,
        keep_maps=keep_maps,
        keep_head_maps=keep_head_maps,
    )
    start, *remember = recorder.fwd_hooks
    fwd_hooks = [start, *extra_hooks, *remember]
    with adapter.hooks(fwd_hooks=fwd_hooks, bwd_hooks=recorder.bwd_hooks), torch.enable_grad():
        final = adapter.final_logits(batch.tokens.to(device), batch.target_position.to(device))
        value = _batch_loss(final, batch, loss, metric)
        with warnings.catch_warnings():
            # Layer 0's pattern is a leaf on purpose (see start_graph); torch warns about it.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            value.backward()
    recorder.check_complete(adapter.n_layers)
    counts = torch.zeros(len(batch), len(FINE_GROUPS) + 1, dtype=torch.float64)
    counts.scatter_add_(
        1,
        (groups.cpu() + 1).reshape(len(batch), -1),
        torch.ones(len(batch), groups[0].numel(), dtype=torch.float64),
    )
    probs = label_logits(final.detach(), batch).float().softmax(-1)
    return _BatchOutput(
        group_sums=recorder.group_sums.cpu(),
        group_counts=counts[:, 1:],
        label_probs=probs.cpu(),
        maps=None if recorder.maps is None else recorder.maps.cpu(),
        head_maps=None if recorder.head_maps is None else recorder.head_maps.cpu(),
    )


def _pad_square(maps: Tensor, n_pos: int) -> Tensor:
    pad = n_pos - maps.shape[-1]
    return F.pad(maps, (0, pad, 0, pad)) if pad else maps


def run_saliency(
    model: Any,
    prompts: Sequence[ICLPrompt] | PromptBatch,
    *,
    loss: Literal["gold", "predicted"] = "gold",
    metric: Metric | None = None,
    gradient: Gradient = "pattern",
    head_reduction: HeadReduction = "sum_then_abs",
    batch_size: int = 8,
    keep_maps: bool = False,
    keep_head_maps: bool = False,
    label_token_policy: Literal["single", "first", "all"] = "single",
    prepend_bos: bool | None = None,
    extra_hooks: Sequence[tuple[Any, Callable[..., Any]]] = (),
    batch_hooks: BatchHooks | None = None,
    progress: bool = True,
) -> SaliencyResult:
    """Saliency ``I_l`` of every attention edge, per layer, for a set of ICL prompts.

    Example:
        >>> from anchor_flow import load_model, run_saliency, toy_prompts
        >>> model = load_model("toy-gpt2")
        >>> result = run_saliency(model, toy_prompts(4), progress=False)
        >>> result.flows().normalised().shape  # [S_wp/S_pq/S_ww, layer]
        torch.Size([3, 4])

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        prompts: ICL prompts (tokenized here with the model's tokenizer) or a
            :class:`~anchor_flow.prompts.PromptBatch` tokenized by the caller.
        loss: ``"gold"`` (paper: cross-entropy over the label-word logits vs the query's
            label) or ``"predicted"`` (vs the model's own label-restricted prediction).
        metric: instead of ``loss``, any per-row scalar of the target's full logits.
        gradient: ``"pattern"`` (Eq. 1) or ``"scores"`` (gauge-invariant variant).
        head_reduction: ``"sum_then_abs"`` (Eq. 1) or ``"abs_then_sum"`` (footnote 2).
        batch_size: prompts per forward/backward pass; results do not depend on it.
        keep_maps: keep ``[prompt, layer, pos, pos]`` maps (heatmaps).
        keep_head_maps: keep per-head maps too (large).
        label_token_policy: how multi-token label words are handled (see
            :func:`anchor_flow.prompts.tokenize_prompts`).
        prepend_bos: force a BOS token on or off (default: what the tokenizer does).
        extra_hooks: your own forward hooks, active during the measurement.
        batch_hooks: hooks that depend on the batch (e.g. a fitted
            :class:`~anchor_flow.reweighting.AnchorReweighting`'s ``batch_hooks``): called with
            the original prompt indices of each length-sorted batch and the batch itself.
        progress: show a progress bar over batches.
    """
    if batch_size < 1:
        raise AnchorFlowError(f"batch_size={batch_size!r}; expected a positive integer")
    adapter = adapt(model)
    check_attention_hooks_live(adapter)
    if isinstance(prompts, PromptBatch):
        batch = prompts
    else:
        if adapter.tokenizer is None:
            raise AnchorFlowError(
                "the model has no tokenizer; tokenize the prompts yourself and pass a PromptBatch"
            )
        batch = tokenize_prompts(
            list(prompts),
            adapter.tokenizer,
            prepend_bos=prepend_bos,
            label_token_policy=label_token_policy,
            max_length=adapter.n_ctx,
        )
    # Similar lengths share a batch (less padding); results go back to the caller's order.
    order = torch.argsort(batch.lengths, descending=True, stable=True)
    chunks = [order[i : i + batch_size] for i in range(0, len(batch), batch_size)]
    outputs: list[tuple[Tensor, _BatchOutput]] = []
    with frozen(adapter):
        for rows in tqdm(chunks, desc="saliency", unit="batch", disable=not progress):
            part = batch.select(rows.tolist())
            hooks = [*extra_hooks, *(batch_hooks(rows, part) if batch_hooks else ())]
            out = _saliency_of_batch(
                adapter,
                part,
                loss=loss,
                metric=metric,
                gradient=gradient,
                head_reduction=head_reduction,
                keep_maps=keep_maps,
                keep_head_maps=keep_head_maps,
                extra_hooks=hooks,
            )
            outputs.append((rows, out))
    inverse = torch.argsort(torch.cat([rows for rows, _ in outputs]))

    def gather(name: str) -> Tensor:
        return torch.cat([getattr(out, name) for _, out in outputs])[inverse]

    def gather_maps(name: str) -> Tensor | None:
        if getattr(outputs[0][1], name) is None:
            return None
        n_pos = batch.tokens.shape[1]
        return torch.cat([_pad_square(getattr(out, name), n_pos) for _, out in outputs])[inverse]

    settings = {
        "model": adapter.name,
        "tl_class": adapter.kind,
        "loss": "metric" if metric is not None else loss,
        "gradient": gradient,
        "head_reduction": head_reduction,
        "label_token_policy": label_token_policy,
        "batch_size": batch_size,
        "n_layers": adapter.n_layers,
        "n_heads": adapter.n_heads,
    }
    return SaliencyResult(
        group_sums=gather("group_sums"),
        group_counts=gather("group_counts"),
        label_probs=gather("label_probs"),
        gold=batch.gold.clone(),
        roles=batch.roles.clone(),
        str_tokens=batch.str_tokens,
        settings=settings,
        maps=gather_maps("maps"),
        head_maps=gather_maps("head_maps"),
    )
