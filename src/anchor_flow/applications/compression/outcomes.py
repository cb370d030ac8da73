"""Table 2's per-prompt outcomes, before Hidden_random-top picks its trial (paper §3.2).

:func:`compression_outcomes` runs ICL, Text_anchor, Hidden_anchor, Hidden_random and every
Hidden_random-top trial on a prompt list and keeps, per prompt, each one's prediction and word
loyalty (:class:`CompressionOutcomes`). Every outcome depends only on its own prompt (the
random positions on ``(seed, trial, prompt id)``), so the outcomes of consecutive parts of a
prompt list, joined with :meth:`CompressionOutcomes.join`, equal those of the whole list; the
choice of Hidden_random-top's trial (best mean label loyalty over all prompts) comes after
(:meth:`anchor_flow.applications.compression.baselines.CompressionResult.from_outcomes`).
A data-parallel run (:mod:`anchor_flow.run.distributed`) relies on this.

Also here: :func:`text_anchor_batch` (Text_anchor's prompts, built at the token level).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from anchor_flow.analysis.loyalty import word_loyalty
from anchor_flow.applications.compression.cache import PositionPolicy
from anchor_flow.applications.compression.engines import (
    CompressionError,
    Engine,
    anchor_positions,
    context_end,
    run_compressed_icl_trials,
)
from anchor_flow.icl.evaluation import ICLResult, prompt_batch, run_icl
from anchor_flow.icl.prompts import ICLPrompt
from anchor_flow.icl.roles import PromptBatch, Role
from anchor_flow.models.tl_adapter import adapt

__all__ = ["METHODS", "CompressionOutcomes", "compression_outcomes", "text_anchor_batch"]

METHODS = ("text_anchor", "hidden_random", "hidden_random_top", "hidden_anchor")
TOP = "hidden_random_top"


def text_anchor_batch(batch: PromptBatch) -> PromptBatch:
    """Each row reduced to its demonstrations' formatting and label words, then its query.

    Example:
        >>> from anchor_flow import tokenize_prompts, toy_prompts
        >>> from anchor_flow.testbeds.toy import build_toy_tokenizer
        >>> batch = tokenize_prompts(toy_prompts(1), build_toy_tokenizer())
        >>> text = text_anchor_batch(batch)
        >>> Role.TEXT in text.roles[0, : context_end(text)].tolist()  # the demonstrations'
        False
    """
    columns = [
        torch.cat([anchor_positions(batch, r), torch.arange(context_end(batch, r), int(n))])
        for r, n in enumerate(batch.lengths.tolist())
    ]
    width = max(len(c) for c in columns)
    pad_id = (
        int(batch.tokens[~batch.attention_mask][0]) if bool((~batch.attention_mask).any()) else 0
    )

    def take(values: Tensor, fill: int) -> Tensor:
        out = torch.full((len(batch), width), fill, dtype=values.dtype)
        for r, c in enumerate(columns):
            out[r, : len(c)] = values[r, c]
        return out

    roles = take(batch.roles, int(Role.PAD))
    return PromptBatch(
        tokens=take(batch.tokens, pad_id), roles=roles, demo_index=take(batch.demo_index, -1),
        label_class=take(batch.label_class, -1),
        target_position=(roles == Role.TARGET).long().argmax(-1),
        label_token_ids=batch.label_token_ids, gold=batch.gold,
        str_tokens=tuple(tuple(batch.str_tokens[r][i] for i in c.tolist())
                         for r, c in enumerate(columns)),
        straddling=take(batch.straddle_mask, False),
    )  # fmt: skip


@dataclass(frozen=True)
class CompressionOutcomes:
    """Per-prompt outcomes of every method and of every Hidden_random-top trial.

    Attributes:
        methods: the methods asked for, in report order.
        baseline_predictions: ICL's predicted class per prompt.
        predictions: ``[method, prompt]`` predictions of the methods other than
            Hidden_random-top (in ``methods`` order).
        word_jaccard: ``[method, prompt]`` their word loyalty (Jaccard of top-k vs ICL).
        trial_predictions: ``[trial, prompt]`` Hidden_random-top's trials 1..n (empty when
            the method was not asked for).
        trial_jaccard: ``[trial, prompt]`` their word loyalty.
        gold: the query's class, -1 when unknown.
        settings: how the outcomes were computed (JSON-safe).
    """

    methods: tuple[str, ...]
    baseline_predictions: Int[Tensor, " prompt"]
    predictions: Int[Tensor, "method prompt"]
    word_jaccard: Float[Tensor, "method prompt"]
    trial_predictions: Int[Tensor, "trial prompt"]
    trial_jaccard: Float[Tensor, "trial prompt"]
    gold: Int[Tensor, " prompt"]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def n_prompts(self) -> int:
        return int(self.gold.shape[0])

    @classmethod
    def join(cls, parts: Sequence[CompressionOutcomes]) -> CompressionOutcomes:
        """The outcomes of a prompt list from those of its consecutive parts, in order."""
        if not parts or any(p.methods != parts[0].methods for p in parts):
            raise CompressionError("join needs outcomes of the same methods; got none or mixed")
        if len(parts) == 1:
            return parts[0]

        def cat(name: str, dim: int) -> Tensor:
            return torch.cat([getattr(p, name) for p in parts], dim=dim)

        return replace(
            parts[0], baseline_predictions=cat("baseline_predictions", 0), gold=cat("gold", 0),
            predictions=cat("predictions", 1), word_jaccard=cat("word_jaccard", 1),
            trial_predictions=cat("trial_predictions", 1), trial_jaccard=cat("trial_jaccard", 1),
        )  # fmt: skip


def compression_outcomes(
    model: Any,
    prompts: Sequence[ICLPrompt] | PromptBatch,
    *,
    methods: Sequence[str] = METHODS,
    position_policy: PositionPolicy = "original",
    keep_bos: bool = True,
    seed: int = 0,
    n_top_trials: int = 20,
    top_k: int = 5,
    batch_size: int = 8,
    label_token_policy: Literal["single", "first", "all"] = "single",
    engine: Engine = "auto",
    first_prompt_id: int = 0,
    progress: bool = False,
) -> CompressionOutcomes:
    """Every method's per-prompt outcome (see the module docstring); arguments as
    :func:`~anchor_flow.applications.compression.baselines.run_compression`'s.

    ``first_prompt_id`` is the id of the first prompt in the random draws: a part of a longer
    prompt list passes the index of its first prompt, so that its draws equal the whole
    list's.
    """
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods or len(set(methods)) != len(methods):
        raise CompressionError(f"methods={list(methods)!r}; expected distinct names from {METHODS}")
    if n_top_trials < 1:
        raise CompressionError(f"n_top_trials={n_top_trials!r}; expected a positive integer")
    adapter = adapt(model)
    batch = prompt_batch(adapter, prompts, label_token_policy=label_token_policy)
    full = run_icl(adapter, batch, batch_size=batch_size, top_k=top_k, progress=progress)

    def hidden(keep: Literal["anchor", "random"], trials: list[int]) -> list[ICLResult]:
        return run_compressed_icl_trials(
            adapter, batch, trials=trials, keep=keep, position_policy=position_policy,
            keep_bos=keep_bos, seed=seed, batch_size=batch_size, top_k=top_k, engine=engine,
            first_prompt_id=first_prompt_id,
        )  # fmt: skip

    # Hidden_random is trial 0 and Hidden_random-top trials 1..n: one call shares their work.
    top = list(range(1, n_top_trials + 1)) if TOP in methods else []
    wanted = [0] * ("hidden_random" in methods) + top
    random_runs = dict(zip(wanted, hidden("random", wanted), strict=True)) if wanted else {}
    runs: dict[str, ICLResult] = {}
    for method in methods:
        if method == "text_anchor":
            runs[method] = run_icl(adapter, text_anchor_batch(batch), batch_size=batch_size,
                                   top_k=top_k, progress=False)  # fmt: skip
        elif method == "hidden_anchor":
            runs[method] = hidden("anchor", [0])[0]
        elif method == "hidden_random":
            runs[method] = random_runs[0]
    trials = [random_runs[t] for t in top]

    def stack(results: list[ICLResult]) -> tuple[Tensor, Tensor]:
        if not results:
            return torch.zeros(0, len(batch), dtype=torch.long), torch.zeros(0, len(batch))
        jaccard = [word_loyalty(full.top_tokens, r.top_tokens) for r in results]
        return torch.stack([r.predictions for r in results]), torch.stack(jaccard)

    predictions, jaccard = stack([runs[m] for m in methods if m != TOP])
    trial_predictions, trial_jaccard = stack(trials)
    settings = {"model": adapter.name, "tl_class": adapter.kind, "n_top_trials": n_top_trials,
                "label_token_policy": label_token_policy, "position_policy": position_policy,
                "keep_bos": keep_bos, "seed": seed, "batch_size": batch_size, "top_k": top_k,
                "engine": engine, "prepend_bos": batch.has_bos}  # fmt: skip
    return CompressionOutcomes(
        methods=tuple(methods), baseline_predictions=full.predictions, predictions=predictions,
        word_jaccard=jaccard, trial_predictions=trial_predictions, trial_jaccard=trial_jaccard,
        gold=batch.gold.clone(), settings=settings,
    )  # fmt: skip
