"""Anchor-only context compression, Hidden_anchor (paper §3.2; PAPER.md §5.1).

The demonstrations run once; every layer's keys and values are kept only at the
**formatting and label-word positions** of each demonstration (the input prefix
``Review:``, the label prefix ``\\nSentiment:`` whose ``\\n`` ends the text line, the label
word's token(s) and the trailing separator: roles ``FORMAT``, ``LABEL`` and ``LABEL_REST`` with
``demo_index < n_demos``), and each query is answered against that pruned cache
(:func:`run_compressed_icl`; the cache itself,
:func:`~anchor_flow.applications.compression.cache.compress_context` and
:func:`~anchor_flow.applications.compression.cache.compressed_logits`, and the query's position ids,
``position_policy``, are in :mod:`anchor_flow.applications.compression.cache`). Keeping every
layer's keys/values equals keeping the hidden states "at the front in each layer".

Δ BOS: the official code kept only the listed strings (GPT-2 and GPT-J prompts have no BOS).
``keep_bos=True`` (default) keeps a BOS token too, because models with a BOS use it as the
attention sink; it changes nothing for tokenizers without one. Pass ``keep_bos=False`` for
the literal official set.

Engines of :func:`run_compressed_icl` (``engine=``), equal in result (the oracle test):

* ``"cache"``: one context run per **distinct** context, pruned, then batched queries
  against it. Cheap when queries share a context (scheme "fixed"); per-prompt contexts cost
  two batch-1 forwards per prompt.
* ``"mask"``: the full prompts, batched, their query rows blocked from every dropped context
  key in every layer and renormalised at ``hook_pattern`` (:func:`compression_mask`): what
  the cache computes under ``position_policy="original"`` (that policy only; live hooks
  needed). ``extra_hooks`` then see the whole prompt's forward.
* ``"auto"`` (default): ``"mask"`` for contexts no other prompt shares, if the policy is
  ``"original"``, no ``extra_hooks`` are given and the hooks are live; else ``"cache"``.
* ``"fast"``: the ``"cache"`` engine with every query run hook-free
  (:class:`~anchor_flow.models.fast_forward.FastForward`: a bridge's own Hugging Face modules,
  a HookedTransformer's plain forward): no per-module hook overhead, every position policy,
  no ``extra_hooks``. The context runs stay TL forwards.

Hidden_random-top's trials (:func:`run_compressed_icl_trials`) share the trial-independent work
(tokenising, grouping, each shared context's forward, the engine choice). The mask engine
still re-runs each trial's full prompts: their context rows do not depend on the trial, but
a plain forward cannot skip them.

The kept positions are pure logic in :mod:`anchor_flow.applications.compression.positions` and the
pruned cache is :mod:`anchor_flow.applications.compression.cache` (the positions re-exported here).
Baselines, Table-2 metrics and the result object are in
:mod:`anchor_flow.applications.compression.baselines`; timing (Table 3) in
:mod:`anchor_flow.applications.compression.speed`. Not here: plotting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from anchor_flow.analysis.blocking import block_edges_hooks
from anchor_flow.applications.compression.cache import (
    POSITION_POLICIES,
    CompressedContext,
    PositionPolicy,
    compressed_final_logits,
)
from anchor_flow.applications.compression.positions import (
    CompressionError,
    anchor_positions,
    compression_mask,
    context_end,
    context_groups,
    query_batch,
    random_anchor_positions,
)
from anchor_flow.errors import DeadAttentionHooksError
from anchor_flow.icl.evaluation import ICLResult, prompt_batch
from anchor_flow.icl.prompts import ICLPrompt
from anchor_flow.icl.roles import PromptBatch
from anchor_flow.models.fast_forward import FastForward
from anchor_flow.models.guards import check_attention_hooks_live, frozen
from anchor_flow.models.tl_adapter import ModelAdapter, adapt

__all__ = [
    "ENGINES",
    "CompressionError",
    "Engine",
    "anchor_positions",
    "compression_mask",
    "context_end",
    "query_batch",
    "random_anchor_positions",
    "run_compressed_icl",
    "run_compressed_icl_trials",
]

Engine = Literal["auto", "cache", "mask", "fast"]
ENGINES: tuple[str, ...] = ("auto", "cache", "mask", "fast")
KeepSet = Literal["anchor", "random", "all"]
HookList = Sequence[tuple[Any, Callable[..., Any]]]


def _kept(
    batch: PromptBatch, row: int, keep: str, keep_bos: bool, seed: int, trial: int, first: int
) -> Tensor:
    if keep == "anchor":
        return anchor_positions(batch, row, keep_bos=keep_bos)
    if keep == "random":
        return random_anchor_positions(
            batch, row, seed=seed, trial=trial, prompt_id=first + row, keep_bos=keep_bos
        )
    return torch.arange(context_end(batch, row))


def _group_engines(
    adapter: ModelAdapter,
    groups: list[tuple[int, list[int]]],
    engine: str,
    position_policy: str,
    extra_hooks: HookList,
) -> list[str]:
    """``"cache"``, ``"mask"`` or ``"fast"`` per context group (module docstring)."""
    if engine == "fast" and extra_hooks:
        raise CompressionError(
            "engine='fast' runs the queries without hooks; extra_hooks need engine='cache' "
            "(or 'auto'/'mask')"
        )
    if engine in ("cache", "fast"):
        return [engine] * len(groups)
    if engine == "mask":
        if position_policy != "original":
            raise CompressionError(
                f"engine='mask' computes position_policy='original' only; got "
                f"{position_policy!r}: use engine='cache' (or 'auto')"
            )
        check_attention_hooks_live(adapter)
        return ["mask"] * len(groups)
    alone = [len(rows) == 1 for _, rows in groups]
    if position_policy != "original" or extra_hooks or not any(alone):
        return ["cache"] * len(groups)
    try:
        check_attention_hooks_live(adapter)
    except DeadAttentionHooksError:
        return ["cache"] * len(groups)
    return ["mask" if a else "cache" for a in alone]


def _evaluate(
    adapter: ModelAdapter,
    batch: PromptBatch,
    kept_sets: Callable[[int], list[Tensor]],
    n_sets: int,
    *,
    groups: list[tuple[int, list[int]]],
    engines: list[str],
    position_policy: str,
    batch_size: int,
    top_k: int,
    extra_hooks: HookList,
) -> tuple[Tensor, Tensor, Tensor]:
    """Label probabilities ``[set, prompt, class]`` and top-k ``[set, prompt, k]`` of every
    keep set (``kept_sets(row)``: one per set, for the row's context)."""
    label_probs = torch.zeros(n_sets, len(batch), batch.n_classes)
    top_tokens = torch.zeros(n_sets, len(batch), top_k, dtype=torch.long)
    top_probs = torch.zeros(n_sets, len(batch), top_k)

    def store(sets: list[int], rows: list[int], final: Tensor, label_ids: Tensor) -> None:
        final = final.float().cpu()
        label_probs[sets, rows] = final.gather(1, label_ids).softmax(-1)
        top = final.softmax(-1).topk(top_k, dim=-1)
        top_tokens[sets, rows], top_probs[sets, rows] = top.indices, top.values

    device = adapter.device  # once: the property walks every module
    fast = FastForward(adapter) if "fast" in engines else None
    masked: list[tuple[int, int, Tensor]] = []  # (set, row, kept)
    for (end, rows), engine in zip(groups, engines, strict=True):
        sets = kept_sets(rows[0])
        if engine == "mask":
            masked += [(s, rows[0], kept) for s, kept in enumerate(sets)]
            continue
        past = adapter.context_key_values(batch.tokens[rows[0], :end][None].to(device))
        for s, kept in enumerate(sets):
            context = CompressedContext.from_past(past, kept, position_policy)
            for i in range(0, len(rows), batch_size):
                chunk = rows[i : i + batch_size]
                query = query_batch(batch, chunk, end)
                final = compressed_final_logits(
                    adapter, context, query.tokens, query.target_position,
                    extra_hooks=extra_hooks, fast=fast if engine == "fast" else None,
                )  # fmt: skip
                store([s] * len(chunk), chunk, final, query.label_token_ids)
    # Similar lengths share a forward (less padding), as in run_icl.
    lengths = batch.lengths.tolist()
    masked.sort(key=lambda job: -lengths[job[1]])
    for i in range(0, len(masked), batch_size):
        jobs = masked[i : i + batch_size]
        part = batch.select([row for _, row, _ in jobs])
        # On the model's device once, not copied by each layer's hook.
        mask = compression_mask(part, [kept for _, _, kept in jobs]).to(device)
        hooks = [*block_edges_hooks(adapter, mask, range(adapter.n_layers)), *extra_hooks]
        with adapter.hooks(fwd_hooks=hooks):
            final = adapter.final_logits(part.tokens.to(device), part.target_position.to(device))
        store([s for s, _, _ in jobs], [row for _, row, _ in jobs], final, part.label_token_ids)
    return label_probs, top_tokens, top_probs


def run_compressed_icl_trials(
    model: Any,
    prompts: Sequence[ICLPrompt] | PromptBatch,
    *,
    trials: Sequence[int],
    keep: KeepSet = "random",
    position_policy: PositionPolicy = "original",
    keep_bos: bool = True,
    seed: int = 0,
    batch_size: int = 8,
    top_k: int = 5,
    label_token_policy: Literal["single", "first", "all"] = "single",
    engine: Engine = "auto",
    extra_hooks: HookList = (),
    first_prompt_id: int = 0,
) -> list[ICLResult]:
    """:func:`run_compressed_icl` for several Hidden_random trials, one result per trial.

    Equals ``[run_compressed_icl(..., trial=t) for t in trials]``, but the work that does not
    depend on the trial is done once (module docstring). ``keep="anchor"``/``"all"`` do not
    depend on the trial: they are computed once and repeated. Prompt ``i`` draws its random
    positions as prompt id ``first_prompt_id + i`` (a part of a longer list passes its offset).

    Example:
        >>> from anchor_flow import load_model, toy_prompts
        >>> results = run_compressed_icl_trials(load_model("toy-gpt2"), toy_prompts(4),
        ...                                     trials=[1, 2, 3])
        >>> [r.settings["trial"] for r in results]
        [1, 2, 3]

    Raises:
        CompressionError: no trials, a negative trial, an unknown ``keep``, policy or engine,
            ``engine="mask"`` with a policy other than ``"original"``, ``engine="fast"`` with
            ``extra_hooks``, or bad counts.
        DeadAttentionHooksError: ``engine="mask"`` on a model whose attention hooks are dead.
    """
    trials = [int(t) for t in trials]
    if not trials or min(trials) < 0:
        raise CompressionError(f"trials={trials}; expected at least one non-negative trial")
    if keep not in ("anchor", "random", "all"):
        raise CompressionError(f"keep={keep!r}; expected 'anchor', 'random' or 'all'")
    if position_policy not in POSITION_POLICIES or engine not in ENGINES:
        raise CompressionError(
            f"position_policy={position_policy!r}, engine={engine!r}; expected one of "
            f"{POSITION_POLICIES} and one of {ENGINES}"
        )
    for name, value in (("batch_size", batch_size), ("top_k", top_k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CompressionError(f"{name}={value!r}; expected a positive integer")
    adapter = adapt(model)
    batch = (
        prompts
        if isinstance(prompts, PromptBatch)
        else prompt_batch(adapter, prompts, label_token_policy=label_token_policy)
    )
    distinct = trials if keep == "random" else trials[:1]  # the others ignore the trial
    groups = context_groups(batch)
    engines = _group_engines(adapter, groups, engine, position_policy, list(extra_hooks))

    def kept_sets(row: int) -> list[Tensor]:
        return [_kept(batch, row, keep, keep_bos, seed, t, first_prompt_id) for t in distinct]

    with frozen(adapter), torch.no_grad():
        label_probs, top_tokens, top_probs = _evaluate(
            adapter, batch, kept_sets, len(distinct), groups=groups, engines=engines,
            position_policy=position_policy, batch_size=batch_size, top_k=top_k,
            extra_hooks=list(extra_hooks),
        )  # fmt: skip
    settings = {
        "model": adapter.name, "tl_class": adapter.kind, "compression": keep,
        "position_policy": position_policy, "keep_bos": keep_bos, "seed": seed,
        "top_k": top_k, "label_token_policy": label_token_policy, "engine": engine,
        "prepend_bos": batch.has_bos,
        "contexts_by_engine": {e: engines.count(e) for e in ("cache", "mask")},
    }  # fmt: skip
    if engine == "fast":
        settings["contexts_by_engine"] = {"fast": len(engines)}
    which = [min(i, len(distinct) - 1) for i in range(len(trials))]
    return [
        ICLResult(label_probs[s], batch.gold.clone().cpu(), top_tokens[s], top_probs[s],
                  {**settings, "trial": t})
        for s, t in zip(which, trials, strict=True)
    ]  # fmt: skip


def run_compressed_icl(
    model: Any,
    prompts: Sequence[ICLPrompt] | PromptBatch,
    *,
    keep: KeepSet = "anchor",
    position_policy: PositionPolicy = "original",
    keep_bos: bool = True,
    seed: int = 0,
    trial: int = 0,
    batch_size: int = 8,
    top_k: int = 5,
    label_token_policy: Literal["single", "first", "all"] = "single",
    engine: Engine = "auto",
    extra_hooks: HookList = (),
) -> ICLResult:
    """ICL with compressed demonstrations: Hidden_anchor (or a baseline keep set) per prompt.

    Prompts with the same demonstrations (scheme "fixed") share one context run and a
    pruned cache; prompts with their own demonstrations run as batched, masked full prompts
    under ``engine="auto"`` (module docstring: both engines give the same result).

    Example:
        >>> from anchor_flow import load_model, toy_prompts
        >>> result = run_compressed_icl(load_model("toy-gpt2"), toy_prompts(4))
        >>> result.label_probs.shape
        torch.Size([4, 2])

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge``.
        prompts: ICL prompts or a tokenized :class:`PromptBatch`.
        keep: ``"anchor"`` (Hidden_anchor), ``"random"`` (Hidden_random, seeded by ``seed``
            and ``trial``) or ``"all"`` (every context position: equals vanilla ICL).
        position_policy: ``"original"``, ``"compact"`` or ``"restart"`` (module docstring).
        keep_bos: keep a BOS token's keys/values too.
        seed: seed of the Hidden_random draw.
        trial: index of the Hidden_random-top trial (each trial draws afresh).
        batch_size: queries (cache) or prompts (mask) per forward pass.
        top_k: full-vocabulary tokens kept at the target (word loyalty uses 5).
        label_token_policy: see :func:`anchor_flow.icl.prompts.tokenize_prompts`.
        engine: ``"auto"``, ``"cache"``, ``"mask"`` or ``"fast"`` (module docstring).
        extra_hooks: forward hooks active while the queries run (with the cache engine not
            during the context run; with the mask engine the whole prompt runs).

    Raises:
        CompressionError: see :func:`run_compressed_icl_trials`.
    """
    return run_compressed_icl_trials(
        model, prompts, trials=[trial], keep=keep, position_policy=position_policy,
        keep_bos=keep_bos, seed=seed, batch_size=batch_size, top_k=top_k,
        label_token_policy=label_token_policy, engine=engine, extra_hooks=extra_hooks,
    )[0]  # fmt: skip
