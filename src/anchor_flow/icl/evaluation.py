"""Vanilla in-context-learning evaluation (PAPER.md §0.3 "Prediction", §7 accuracies).

The model reads each prompt once; at the target position (the query's final ``:``) the
label words' logits, in class order, go through a softmax (the paper's ``probs``, no
calibration) and the prediction is their argmax. The top-k tokens of the full-vocabulary
softmax at the target are kept too: word loyalty (§2.2) compares them with and without an
intervention. Batches are length-sorted and right-padded; with causal attention no real
position reads a pad, so the results do not depend on the batch size.

:func:`run_icl` accepts ``extra_hooks`` (forward hooks active during the pass) and
``batch_hooks`` (a factory of hooks for each length-sorted batch, given the batch's original
row indices), so the same function measures an intervened model (isolation, re-weighting,
reading the attention of the deep layers) against the vanilla baseline.

Deliberately not here: calibration, sampling prompts (:mod:`anchor_flow.icl.sampling`), loyalty
metrics and any intervention (their own modules), gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from anchor_flow.errors import AnchorFlowError
from anchor_flow.icl.prompts import ICLPrompt, tokenize_prompts
from anchor_flow.icl.roles import PromptBatch
from anchor_flow.models.bos import checkpoint_prepends_bos
from anchor_flow.models.guards import check_attention_hooks_live, frozen
from anchor_flow.models.tl_adapter import ModelAdapter, adapt
from anchor_flow.results.files import StoredResult

__all__ = ["BatchHooks", "ICLResult", "prompt_batch", "run_icl"]

SCHEMA = "anchor_flow.icl/1"
BatchHooks = Callable[[Tensor, PromptBatch], Sequence[tuple[Any, Callable[..., Any]]]]
"""``f(rows, batch) -> hooks``: forward hooks for one batch of :func:`run_icl`."""


@dataclass(frozen=True)
class ICLResult(StoredResult):
    """Label-word probabilities and top tokens at the target position of each prompt.

    Example:
        >>> result = ICLResult(torch.tensor([[0.2, 0.8]]), torch.tensor([1]),
        ...                    torch.tensor([[7]]), torch.tensor([[0.5]]))
        >>> result.predictions.tolist(), result.accuracy()
        ([1], 1.0)

    Attributes:
        label_probs: softmax over the label words' logits at the target, in class order.
        gold: the query's class, -1 when unknown.
        top_tokens: the ``k`` most probable full-vocabulary token ids at the target,
            most probable first.
        top_probs: their full-vocabulary probabilities.
        settings: how the result was computed (JSON-safe).
    """

    label_probs: Float[Tensor, "prompt n_classes"]
    gold: Int[Tensor, " prompt"]
    top_tokens: Int[Tensor, "prompt k"]
    top_probs: Float[Tensor, "prompt k"]
    settings: dict[str, Any] = field(default_factory=dict)

    _STEM, _SCHEMA, _WHAT = "icl", SCHEMA, "an ICL result"
    _ARRAYS = ("label_probs", "gold", "top_tokens", "top_probs")

    def __post_init__(self) -> None:
        if self.label_probs.ndim != 2 or self.top_tokens.ndim != 2 or self.gold.ndim != 1:
            raise AnchorFlowError(
                f"ICLResult expects label_probs [prompt, n_classes], gold [prompt] and "
                f"top_tokens [prompt, k]; got shapes {tuple(self.label_probs.shape)}, "
                f"{tuple(self.gold.shape)}, {tuple(self.top_tokens.shape)}"
            )
        n = self.label_probs.shape[0]
        sizes = {"gold": self.gold.shape[0], "top_tokens": self.top_tokens.shape[0]}
        bad = {name: size for name, size in sizes.items() if size != n}
        if bad:
            raise AnchorFlowError(
                f"label_probs has {n} prompts but {bad}; expected one row per prompt"
            )
        if self.top_probs.shape != self.top_tokens.shape:
            raise AnchorFlowError(
                f"top_probs has shape {tuple(self.top_probs.shape)}; expected the shape of "
                f"top_tokens {tuple(self.top_tokens.shape)}"
            )

    @property
    def n_prompts(self) -> int:
        return int(self.label_probs.shape[0])

    @property
    def n_classes(self) -> int:
        return int(self.label_probs.shape[1])

    @property
    def predictions(self) -> Int[Tensor, " prompt"]:
        """The predicted class of each prompt: argmax of the label-restricted softmax."""
        return self.label_probs.argmax(-1)

    def accuracy(self) -> float:
        """Share of prompts with a known label whose prediction is right.

        Raises:
            AnchorFlowError: when every query label is unknown (-1).
        """
        known = self.gold >= 0
        if not bool(known.any()):
            raise AnchorFlowError(
                "accuracy needs query labels; every query label is unknown (gold = -1)"
            )
        return float((self.predictions[known] == self.gold[known]).double().mean())

    def to_frame(self) -> pd.DataFrame:
        """Long form: one row per (prompt, class) with its probability, gold and prediction.

        Example:
            >>> ICLResult(torch.tensor([[0.2, 0.8]]), torch.tensor([1]), torch.tensor([[7]]),
            ...           torch.tensor([[0.5]])).to_frame()["label_prob"].tolist()
            [0.20000000298023224, 0.800000011920929]
        """
        n_prompts, n_classes = self.label_probs.shape
        grid = np.meshgrid(np.arange(n_prompts), np.arange(n_classes), indexing="ij")
        prompt, label = grid[0].ravel(), grid[1].ravel()
        return pd.DataFrame(
            {
                "prompt": prompt,
                "class": label,
                "label_prob": self.label_probs.numpy().ravel(),
                "gold": self.gold.numpy()[prompt],
                "prediction": self.predictions.numpy()[prompt],
            }
        )


def _touches_attention(adapter: ModelAdapter, hooks: Sequence[tuple[Any, Any]]) -> bool:
    """Whether any hook is on an attention pattern or scores hook point."""
    names = [
        name
        for layer in range(adapter.n_layers)
        for name in (adapter.pattern_hook_name(layer), adapter.scores_hook_name(layer))
    ]
    for key, _ in hooks:
        if isinstance(key, str) and key in names:
            return True
        if callable(key) and any(key(name) for name in names):
            return True
    return False


def run_icl(
    model: Any,
    prompts: Sequence[ICLPrompt] | PromptBatch,
    *,
    batch_size: int = 8,
    top_k: int = 10,
    label_token_policy: Literal["single", "first", "all"] = "single",
    prepend_bos: bool | None = None,
    extra_hooks: Sequence[tuple[Any, Callable[..., Any]]] = (),
    batch_hooks: BatchHooks | None = None,
    progress: bool = True,
) -> ICLResult:
    """Label-word probabilities and top-k tokens at the target of every prompt.

    Example:
        >>> from anchor_flow import load_model, toy_prompts
        >>> result = run_icl(load_model("toy-gpt2"), toy_prompts(4), progress=False)
        >>> result.label_probs.shape, result.top_tokens.shape
        (torch.Size([4, 2]), torch.Size([4, 10]))

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        prompts: ICL prompts (tokenized here with the model's tokenizer) or a
            :class:`~anchor_flow.icl.prompts.PromptBatch` tokenized by the caller.
        batch_size: prompts per forward pass; results do not depend on it.
        top_k: full-vocabulary tokens kept per prompt (word loyalty: the paper uses 5, its
            isolation notebook 10).
        label_token_policy: how multi-token label words are handled (see
            :func:`anchor_flow.icl.prompts.tokenize_prompts`).
        prepend_bos: force a BOS token on or off (default: what the tokenizer does).
        extra_hooks: your own forward hooks ``(hook_name_or_filter, fn)``, active during the
            pass. Hooks on attention patterns are only accepted when those hooks are live.
        batch_hooks: ``f(rows, batch) -> hooks``, called before each forward pass with the
            original indices of the batch's prompts (``Int[Tensor, " batch"]``, positions in
            ``prompts``) and the right-padded :class:`PromptBatch` that is run; its hooks are
            active for that pass only, after ``extra_hooks``. Batch-specific interventions
            (e.g. :func:`anchor_flow.analysis.blocking.isolation_hooks`) and recorders use it.
        progress: show a progress bar over batches.

    Raises:
        AnchorFlowError: a bad ``batch_size`` or ``top_k``, no prompts, or no tokenizer.
        DeadAttentionHooksError: ``extra_hooks`` edit attention patterns the model ignores.
    """
    for name, value in (("batch_size", batch_size), ("top_k", top_k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AnchorFlowError(f"{name}={value!r}; expected a positive integer")
    adapter = adapt(model)
    if top_k > adapter.d_vocab:
        raise AnchorFlowError(
            f"top_k={top_k} is larger than the vocabulary ({adapter.d_vocab} tokens); expected "
            f"1 <= top_k <= {adapter.d_vocab}"
        )
    extra_hooks = list(extra_hooks)
    if extra_hooks and _touches_attention(adapter, extra_hooks):
        check_attention_hooks_live(adapter)
    batch = _as_batch(adapter, prompts, label_token_policy, prepend_bos)
    # Similar lengths share a batch (less padding); results go back to the caller's order.
    order = torch.argsort(batch.lengths, descending=True, stable=True)
    chunks = [order[i : i + batch_size] for i in range(0, len(batch), batch_size)]
    outputs: list[tuple[Tensor, Tensor, Tensor]] = []
    device = adapter.device
    with frozen(adapter), torch.no_grad():
        for rows in tqdm(chunks, desc="icl", unit="batch", disable=not progress):
            part = batch.select(rows.tolist())
            hooks = [*extra_hooks, *(batch_hooks(rows, part) if batch_hooks else ())]
            if batch_hooks is not None and _touches_attention(adapter, hooks):
                check_attention_hooks_live(adapter)
            with adapter.hooks(fwd_hooks=hooks):
                final = adapter.final_logits(
                    part.tokens.to(device), part.target_position.to(device)
                ).float()
            # A split model unembeds on its last device, not the embedding's.
            label = final.gather(1, part.label_token_ids.to(final.device)).softmax(-1)
            top = final.softmax(-1).topk(top_k, dim=-1)
            outputs.append((label.cpu(), top.indices.cpu(), top.values.cpu()))
    inverse = torch.argsort(order)
    settings = {
        "model": adapter.name,
        "tl_class": adapter.kind,
        "label_token_policy": label_token_policy,
        "prepend_bos": batch.has_bos,
        "batch_size": batch_size,
        "top_k": top_k,
        "n_extra_hooks": len(extra_hooks),
        "batch_hooks": batch_hooks is not None,
    }
    return ICLResult(
        label_probs=torch.cat([o[0] for o in outputs])[inverse],
        gold=batch.gold.clone().cpu(),
        top_tokens=torch.cat([o[1] for o in outputs])[inverse],
        top_probs=torch.cat([o[2] for o in outputs])[inverse],
        settings=settings,
    )


def prompt_batch(
    model: Any,
    prompts: Sequence[ICLPrompt] | PromptBatch,
    *,
    label_token_policy: Literal["single", "first", "all"] = "single",
    prepend_bos: bool | None = None,
) -> PromptBatch:
    """``prompts`` tokenized with the model's tokenizer (a PromptBatch is returned as is).

    Example:
        >>> batch = prompt_batch(load_model("toy-gpt2"), toy_prompts(2))  # doctest: +SKIP
    """
    return _as_batch(adapt(model), prompts, label_token_policy, prepend_bos)


def _as_batch(
    adapter: ModelAdapter,
    prompts: Sequence[ICLPrompt] | PromptBatch,
    label_token_policy: Literal["single", "first", "all"],
    prepend_bos: bool | None,
) -> PromptBatch:
    if isinstance(prompts, PromptBatch):
        if len(prompts) == 0:
            raise AnchorFlowError("run_icl got an empty PromptBatch; expected at least one row")
        return prompts
    if len(prompts) == 0:
        raise AnchorFlowError("run_icl got no prompts; expected at least one ICLPrompt")
    if adapter.tokenizer is None:
        raise AnchorFlowError(
            "the model has no tokenizer; tokenize the prompts yourself and pass a PromptBatch"
        )
    if prepend_bos is None:
        prepend_bos = checkpoint_prepends_bos(adapter.model)
    return tokenize_prompts(
        list(prompts),
        adapter.tokenizer,
        prepend_bos=prepend_bos,
        label_token_policy=label_token_policy,
        max_length=adapter.n_ctx,
    )
