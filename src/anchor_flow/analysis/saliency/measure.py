"""Running the saliency of paper §2.1 (Eq. 1) over ICL prompts: :func:`run_saliency`.

Prompts are tokenized, sorted by length and batched; each batch gets one forward and one
backward pass with the hooks of :func:`anchor_flow.analysis.saliency.hooks.saliency_hooks`
under frozen parameters, and the per-layer edge-group sums are gathered into a
:class:`~anchor_flow.analysis.saliency.result.SaliencyResult` in the prompts' order.
Deliberately not here: the hooks' arithmetic (:mod:`anchor_flow.analysis.saliency.hooks`),
aggregating flows (:mod:`anchor_flow.analysis.flows`), plotting.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from anchor_flow.analysis.edges import FINE_GROUPS, edge_groups
from anchor_flow.analysis.saliency.hooks import (
    BatchHooks,
    Gradient,
    HeadReduction,
    Memory,
    Metric,
    label_logits,
    saliency_hooks,
)
from anchor_flow.analysis.saliency.result import SaliencyResult
from anchor_flow.errors import AnchorFlowError
from anchor_flow.icl.prompts import ICLPrompt, tokenize_prompts
from anchor_flow.icl.roles import PromptBatch
from anchor_flow.models.bos import checkpoint_prepends_bos
from anchor_flow.models.guards import check_attention_hooks_live, frozen
from anchor_flow.models.recompute import recompute_blocks
from anchor_flow.models.tl_adapter import ModelAdapter, adapt

__all__ = ["run_saliency"]


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
    text_row_sums: Tensor | None
    head_sums: Tensor | None
    head_abs_sums: Tensor | None


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
    head_flows: bool,
    memory: Memory,
    extra_hooks: Sequence[tuple[Any, Callable[..., Any]]],
) -> _BatchOutput:
    device = adapter.device
    # The [batch, pos, pos] edge groups and their counts are built where the model runs: on
    # the CPU they took ~0.3 s per batch of 8 at T=512 (issue 18), serialised with a GPU.
    groups = edge_groups(_on_device(batch, device))
    counts = torch.zeros(len(batch), len(FINE_GROUPS) + 1, dtype=torch.float64, device=device)
    counts.scatter_add_(
        1,
        (groups + 1).reshape(len(batch), -1),
        torch.ones(len(batch), groups[0].numel(), dtype=torch.float64, device=device),
    )
    recorder = saliency_hooks(
        adapter,
        groups,
        gradient=gradient,
        head_reduction=head_reduction,
        keep_maps=keep_maps,
        keep_head_maps=keep_head_maps,
        keep_head_sums=head_flows,
        memory=memory,
    )
    del groups  # the hooks keep their own index; [batch, pos, pos] int64 is large at long T
    start, *remember = recorder.fwd_hooks
    fwd_hooks = [start, *extra_hooks, *remember]
    recompute = recompute_blocks(adapter) if memory == "recompute" else contextlib.nullcontext()
    with (
        recompute,
        adapter.hooks(fwd_hooks=fwd_hooks, bwd_hooks=recorder.bwd_hooks),
        torch.enable_grad(),
    ):
        final = adapter.final_logits(batch.tokens.to(device), batch.target_position.to(device))
        value = _batch_loss(final, batch, loss, metric)
        with warnings.catch_warnings():
            # Layer 0's pattern is a leaf on purpose (see start_graph); torch warns about it.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            value.backward()
    recorder.check_complete(adapter.n_layers)
    probs = label_logits(final.detach(), batch).float().softmax(-1)
    return _BatchOutput(
        group_sums=recorder.group_sums.cpu(),
        group_counts=counts[:, 1:].cpu(),
        label_probs=probs.cpu(),
        maps=None if recorder.maps is None else recorder.maps.cpu(),
        head_maps=None if recorder.head_maps is None else recorder.head_maps.cpu(),
        text_row_sums=None if recorder.text_row_sums is None else recorder.text_row_sums.cpu(),
        head_sums=None if recorder.head_sums is None else recorder.head_sums.cpu(),
        head_abs_sums=None if recorder.head_abs_sums is None else recorder.head_abs_sums.cpu(),
    )


def _on_device(batch: PromptBatch, device: torch.device) -> PromptBatch:
    if batch.roles.device == device:
        return batch
    return dataclasses.replace(
        batch, roles=batch.roles.to(device), demo_index=batch.demo_index.to(device),
        tokens=batch.tokens.to(device), label_class=batch.label_class.to(device),
        target_position=batch.target_position.to(device), gold=batch.gold.to(device),
        label_token_ids=batch.label_token_ids.to(device),
    )  # fmt: skip


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
    head_flows: bool = False,
    memory: Memory = "keep",
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
            :class:`~anchor_flow.icl.prompts.PromptBatch` tokenized by the caller.
        loss: ``"gold"`` (paper: cross-entropy over the label-word logits vs the query's
            label) or ``"predicted"`` (vs the model's own label-restricted prediction).
        metric: instead of ``loss``, any per-row scalar of the target's full logits.
        gradient: ``"pattern"`` (Eq. 1) or ``"scores"`` (gauge-invariant variant).
        head_reduction: ``"sum_then_abs"`` (Eq. 1) or ``"abs_then_sum"`` (footnote 2).
        batch_size: prompts per forward/backward pass; results do not depend on it.
        keep_maps: keep ``[prompt, layer, pos, pos]`` maps (heatmaps).
        keep_head_maps: keep per-head maps too (large).
        head_flows: also keep per-head sums over the fine edge groups, signed and absolute
            (``head_sums``, ``head_abs_sums``: layer x head x groups per prompt, reduced in
            the same backward hooks; see :mod:`anchor_flow.analysis.heads`).
        memory: ``"keep"`` (every layer's attention pattern stays alive from the forward to
            the backward: ``layer x head x pos²`` per prompt) or ``"recompute"`` (each block's
            forward is re-run in the backward, see
            :func:`~anchor_flow.models.recompute.recompute_blocks`: about one layer's patterns
            alive at a time, for about one more forward pass). Results are equal.
        label_token_policy: how multi-token label words are handled (see
            :func:`anchor_flow.icl.prompts.tokenize_prompts`).
        prepend_bos: force a BOS token on or off (default: what the tokenizer does).
        extra_hooks: your own forward hooks, active during the measurement.
        batch_hooks: hooks that depend on the batch (e.g. a fitted
            :class:`~anchor_flow.applications.reweighting.beta.AnchorReweighting`'s
            ``batch_hooks``): called with the original prompt indices of each length-sorted batch
            and the batch itself.
        progress: show a progress bar over batches.
    """
    if batch_size < 1:
        raise AnchorFlowError(f"batch_size={batch_size!r}; expected a positive integer")
    if memory not in ("keep", "recompute"):
        raise AnchorFlowError(f"memory={memory!r}; expected 'keep' or 'recompute'")
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
            prepend_bos=checkpoint_prepends_bos(model) if prepend_bos is None else prepend_bos,
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
                head_flows=head_flows,
                memory=memory,
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

    n_pos = batch.tokens.shape[1]
    text_row_sums = torch.cat(
        [F.pad(out.text_row_sums, (0, n_pos - out.text_row_sums.shape[-1]))
         for _, out in outputs if out.text_row_sums is not None]
    )[inverse] if outputs[0][1].text_row_sums is not None else None  # fmt: skip
    settings = {
        "model": adapter.name,
        "tl_class": adapter.kind,
        "loss": "metric" if metric is not None else loss,
        "gradient": gradient,
        "head_reduction": head_reduction,
        "label_token_policy": label_token_policy,
        "prepend_bos": batch.has_bos,
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
        text_row_sums=text_row_sums,
        head_sums=gather("head_sums") if head_flows else None,
        head_abs_sums=gather("head_abs_sums") if head_flows else None,
    )
