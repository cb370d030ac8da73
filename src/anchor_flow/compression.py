"""Anchor-only context compression, Hidden_anchor (paper §3.2; PAPER.md §5.1).

The demonstrations run once; every layer's keys and values are kept only at the
**formatting and label-word positions** of each demonstration (the input prefix
``Review:``, the label prefix ``\\nSentiment:`` whose ``\\n`` ends the text line, the label
word's token(s) and the trailing separator: roles ``FORMAT``, ``LABEL`` and ``LABEL_REST`` with
``demo_index < n_demos``), and each query is answered against that pruned cache
(:func:`compress_context`, :func:`compressed_logits`, :func:`run_compressed_icl`). Keeping
every layer's keys/values equals keeping the hidden states "at the front in each layer".

Position ids of the query (Δ PAPER.md §5.1, the official code is inconsistent), explicit as
``position_policy``:

* ``"original"`` (default): the query continues from the full context's length, as if the
  dropped positions were still there (official ``compress.py`` for GPT-J). With it the
  compressed run equals a full run in which the query is blocked from every dropped key
  (the oracle test).
* ``"compact"``: the query continues after the kept positions (TL's own cache offset).
* ``"restart"``: the query starts at position 0 (official ``compress.py`` for GPT2-XL).

The cached keys always keep the position information of their original positions.

Δ BOS: the official code kept only the listed strings (GPT-2 and GPT-J prompts have no BOS).
``keep_bos=True`` (default) keeps a BOS token too, because models with a BOS use it as the
attention sink; it changes nothing for tokenizers without one. Pass ``keep_bos=False`` for
the literal official set.

Baselines, the Table-2 metrics and the result object are in
:mod:`anchor_flow.compression_baselines`. Not here: plotting, timing (``benchmarks/``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from anchor_flow.errors import AnchorFlowError
from anchor_flow.evaluation import ICLResult, prompt_batch
from anchor_flow.prompts import ICLPrompt
from anchor_flow.roles import PromptBatch, Role
from anchor_flow.tl_adapter import adapt, frozen

__all__ = [
    "POSITION_POLICIES",
    "CompressedContext",
    "CompressionError",
    "PositionPolicy",
    "anchor_positions",
    "compress_context",
    "compressed_logits",
    "context_end",
    "query_batch",
    "random_anchor_positions",
    "run_compressed_icl",
]

PositionPolicy = Literal["original", "compact", "restart"]
POSITION_POLICIES: tuple[str, ...] = ("original", "compact", "restart")
_KEPT_ROLES = (Role.FORMAT, Role.LABEL, Role.LABEL_REST)
_LABEL_ROLES = (Role.LABEL, Role.LABEL_REST)


class CompressionError(AnchorFlowError):
    """Bad input to context compression (no label words, empty keep set, too-long query...)."""


def _check_row(batch: PromptBatch, row: int) -> int:
    if not 0 <= row < len(batch):
        raise CompressionError(f"row {row} out of range for a batch of {len(batch)} prompts")
    return row


def context_end(batch: PromptBatch, row: int = 0) -> int:
    """First position of the query (its input prefix): the demonstrations end before it.

    Example:
        >>> from anchor_flow.prompts import tokenize_prompts, toy_prompts
        >>> from anchor_flow.toy import build_toy_tokenizer
        >>> batch = tokenize_prompts(toy_prompts(1), build_toy_tokenizer())
        >>> batch.demo_index[0, context_end(batch)].item()  # the query's index = n_demos
        2
    """
    _check_row(batch, row)
    n_demos = int(batch.demo_index[row, batch.target_position[row]])
    return int(torch.nonzero(batch.demo_index[row] == n_demos)[0, 0])


def _demo_positions(batch: PromptBatch, row: int, roles: Sequence[Role]) -> Tensor:
    end = context_end(batch, row)
    in_context = (batch.demo_index[row, :end] >= 0) & torch.isin(
        batch.roles[row, :end], torch.tensor([int(r) for r in roles])
    )
    return torch.nonzero(in_context).flatten()


def anchor_positions(batch: PromptBatch, row: int = 0, *, keep_bos: bool = True) -> Tensor:
    """Hidden_anchor's kept positions of ``row``: each demonstration's formatting and label
    word(s), plus a BOS token if ``keep_bos``. Sorted, ``Int[Tensor, " kept"]``.

    Example:
        >>> from anchor_flow.prompts import tokenize_prompts, toy_prompts
        >>> from anchor_flow.toy import build_toy_tokenizer
        >>> batch = tokenize_prompts(toy_prompts(1), build_toy_tokenizer())
        >>> kept = anchor_positions(batch)
        >>> sorted({Role(int(r)).name for r in batch.roles[0, kept]})
        ['FORMAT', 'LABEL']

    Raises:
        CompressionError: the row's demonstrations hold no label word (e.g. 0 demonstrations).
    """
    kept = _demo_positions(batch, row, _KEPT_ROLES)
    if not bool((batch.roles[row, kept] == Role.LABEL).any()):
        raise CompressionError(
            f"prompt {row} has no label words in its demonstrations (0 demonstrations?); "
            "compression keeps the label words' keys and values, so it needs at least one"
        )
    if keep_bos:
        bos = torch.nonzero(batch.roles[row] == Role.BOS).flatten()
        kept = torch.cat([bos, kept]).sort().values
    return kept


def random_anchor_positions(
    batch: PromptBatch,
    row: int = 0,
    *,
    seed: int,
    trial: int = 0,
    prompt_id: int = 0,
    keep_bos: bool = True,
) -> Tensor:
    """Hidden_random's kept positions: Hidden_anchor's with each demonstration's label-word
    tokens swapped for as many random text positions of the same demonstration.

    The draw depends only on ``(seed, trial, prompt_id)`` (Δ the official draw is unseeded
    and leaks positions between the Hidden_random-top trials).

    Example:
        >>> from anchor_flow.prompts import tokenize_prompts, toy_prompts
        >>> from anchor_flow.toy import build_toy_tokenizer
        >>> batch = tokenize_prompts(toy_prompts(1), build_toy_tokenizer())
        >>> kept = random_anchor_positions(batch, seed=0)
        >>> len(kept) == len(anchor_positions(batch))
        True
        >>> bool((batch.roles[0, kept] == Role.LABEL).any())
        False

    Raises:
        CompressionError: no label words, or a demonstration with fewer text tokens than
            label-word tokens.
    """
    kept = anchor_positions(batch, row, keep_bos=keep_bos)
    label = torch.isin(batch.roles[row, kept], torch.tensor([int(r) for r in _LABEL_ROLES]))
    rng = np.random.default_rng([seed, trial, prompt_id])
    text = _demo_positions(batch, row, (Role.TEXT,))
    drawn = []
    for demo in batch.demo_index[row, kept[label]].unique().tolist():
        need = int((batch.demo_index[row, kept[label]] == demo).sum())
        pool = text[batch.demo_index[row, text] == demo]
        if len(pool) < need:
            raise CompressionError(
                f"prompt {row}, demonstration {demo}: {len(pool)} text tokens cannot replace "
                f"{need} label-word tokens; Hidden_random needs demonstration texts of at least "
                f"{need} tokens"
            )
        drawn.append(pool[torch.from_numpy(rng.choice(len(pool), size=need, replace=False))])
    return torch.cat([kept[~label], *drawn]).sort().values


@dataclass(frozen=True, eq=False)
class CompressedContext:
    """Every layer's keys/values of a context, kept only at ``kept_positions``.

    Build with :func:`compress_context`; answer queries with :func:`compressed_logits`.

    Attributes:
        key_values: per layer ``(keys, values)`` ``[1, kept, kv_heads, d_head]`` in the model's
            cache convention (:meth:`~anchor_flow.tl_adapter.ModelAdapter.context_key_values`).
        kept_positions: the kept positions of the full context, sorted.
        context_length: the full context's length (tokens before the query).
        position_policy: how query positions are numbered (see the module docstring).
    """

    key_values: tuple[tuple[Tensor, Tensor], ...]
    kept_positions: Int[Tensor, " kept"]
    context_length: int
    position_policy: str = "original"

    def __post_init__(self) -> None:
        if self.position_policy not in POSITION_POLICIES:
            raise CompressionError(
                f"position_policy={self.position_policy!r}; expected one of {POSITION_POLICIES}"
            )

    @property
    def n_kept(self) -> int:
        return int(self.kept_positions.shape[0])

    def query_position_ids(self, n_query: int) -> Int[Tensor, " n_query"]:
        """Position ids of a query of ``n_query`` tokens under the position policy.

        Example:
            >>> ctx = CompressedContext((), torch.tensor([0, 4]), 10, "original")
            >>> ctx.query_position_ids(2).tolist()
            [10, 11]
        """
        start = {"original": self.context_length, "compact": self.n_kept, "restart": 0}
        return torch.arange(n_query) + start[self.position_policy]


def compress_context(
    model: Any,
    context_tokens: Int[Tensor, " pos"],
    keep: Sequence[int] | Int[Tensor, " kept"],
    *,
    position_policy: str = "original",
) -> CompressedContext:
    """Run ``context_tokens`` once and keep every layer's keys/values at ``keep``.

    Example:
        >>> batch = prompt_batch(model, prompts)  # doctest: +SKIP
        >>> end = context_end(batch)  # doctest: +SKIP
        >>> kept = anchor_positions(batch)  # doctest: +SKIP
        >>> ctx = compress_context(model, batch.tokens[0, :end], kept)  # doctest: +SKIP

    Raises:
        CompressionError: an empty, unsorted, repeated or out-of-range keep set, or an unknown
            position policy.
    """
    adapter = adapt(model)
    tokens = context_tokens.reshape(1, -1)
    index = torch.as_tensor(keep, dtype=torch.long).flatten().cpu()
    length = int(tokens.shape[1])
    if index.numel() == 0:
        raise CompressionError("the keep set is empty; keep at least one context position")
    if bool((index < 0).any()) or bool((index >= length).any()) or bool((index.diff() <= 0).any()):
        raise CompressionError(
            f"keep={index.tolist()} must be strictly increasing positions in 0..{length - 1} "
            f"of the {length}-token context"
        )
    if position_policy not in POSITION_POLICIES:
        raise CompressionError(
            f"position_policy={position_policy!r}; expected one of {POSITION_POLICIES}"
        )
    with frozen(adapter), torch.no_grad():
        past = adapter.context_key_values(tokens.to(adapter.device))
    on_device = index.to(adapter.device)
    kept = tuple((k[:, on_device].clone(), v[:, on_device].clone()) for k, v in past)
    return CompressedContext(kept, index, length, position_policy)


def compressed_logits(
    model: Any,
    context: CompressedContext,
    query_tokens: Int[Tensor, "batch pos"],
    *,
    extra_hooks: Sequence[tuple[Any, Callable[..., Any]]] = (),
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits of right-padded queries that attend to the compressed context and themselves.

    Raises:
        CompressionError: the query's last position id reaches the model's context length.
    """
    adapter = adapt(model)
    positions = context.query_position_ids(int(query_tokens.shape[1]))
    if int(positions[-1]) >= adapter.n_ctx:
        raise CompressionError(
            f"a query of {query_tokens.shape[1]} tokens at positions {int(positions[0])}.."
            f"{int(positions[-1])} (position_policy={context.position_policy!r}) is longer than "
            f"the {adapter.n_ctx - int(positions[0])} positions left of the model's context "
            f"length {adapter.n_ctx}; use shorter queries or position_policy='compact'"
        )
    with adapter.hooks(fwd_hooks=extra_hooks):
        return adapter.forward_logits_with_past(
            query_tokens.to(adapter.device), context.key_values, positions
        )


def query_batch(batch: PromptBatch, rows: Sequence[int], start: int) -> PromptBatch:
    """The rows' tokens from ``start`` on (their query), re-padded, with roles and target."""
    part = batch.select(list(rows))
    return PromptBatch(
        tokens=part.tokens[:, start:], roles=part.roles[:, start:],
        demo_index=part.demo_index[:, start:], label_class=part.label_class[:, start:],
        target_position=part.target_position - start, label_token_ids=part.label_token_ids,
        gold=part.gold, str_tokens=tuple(t[start:] for t in part.str_tokens),
    )  # fmt: skip


def _context_groups(batch: PromptBatch) -> list[tuple[int, list[int]]]:
    """Rows sharing their context tokens (scheme "fixed"), as ``(context end, rows)``."""
    groups: dict[tuple[int, ...], list[int]] = {}
    ends: dict[tuple[int, ...], int] = {}
    for row in range(len(batch)):
        end = context_end(batch, row)
        key = tuple(batch.tokens[row, :end].tolist())
        groups.setdefault(key, []).append(row)
        ends[key] = end
    return [(ends[key], rows) for key, rows in groups.items()]


def run_compressed_icl(
    model: Any,
    prompts: Sequence[ICLPrompt] | PromptBatch,
    *,
    keep: Literal["anchor", "random", "all"] = "anchor",
    position_policy: PositionPolicy = "original",
    keep_bos: bool = True,
    seed: int = 0,
    trial: int = 0,
    batch_size: int = 8,
    top_k: int = 5,
    label_token_policy: Literal["single", "first", "all"] = "single",
    extra_hooks: Sequence[tuple[Any, Callable[..., Any]]] = (),
) -> ICLResult:
    """ICL with compressed demonstrations: one cache per distinct context, batched queries.

    Prompts with the same demonstrations (scheme "fixed") share one context run; prompts with
    their own demonstrations get one each (correct, but no speed-up).

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
        batch_size: queries per forward pass.
        top_k: full-vocabulary tokens kept at the target (word loyalty uses 5).
        label_token_policy: see :func:`anchor_flow.prompts.tokenize_prompts`.
        extra_hooks: forward hooks active while the queries run (not the context run).
    """
    if keep not in ("anchor", "random", "all"):
        raise CompressionError(f"keep={keep!r}; expected 'anchor', 'random' or 'all'")
    adapter = adapt(model)
    batch = (
        prompts
        if isinstance(prompts, PromptBatch)
        else prompt_batch(adapter, prompts, label_token_policy=label_token_policy)
    )
    label_probs = torch.zeros(len(batch), batch.n_classes)
    top_tokens = torch.zeros(len(batch), top_k, dtype=torch.long)
    top_probs = torch.zeros(len(batch), top_k)
    for end, rows in _context_groups(batch):
        first = rows[0]
        if keep == "anchor":
            kept = anchor_positions(batch, first, keep_bos=keep_bos)
        elif keep == "random":
            kept = random_anchor_positions(
                batch, first, seed=seed, trial=trial, prompt_id=first, keep_bos=keep_bos
            )
        else:
            kept = torch.arange(end)
        context = compress_context(
            adapter, batch.tokens[first, :end], kept, position_policy=position_policy
        )
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            query = query_batch(batch, chunk, end)
            with frozen(adapter), torch.no_grad():
                logits = compressed_logits(adapter, context, query.tokens, extra_hooks=extra_hooks)
            picked = torch.arange(len(chunk), device=logits.device)
            final = logits[picked, query.target_position.to(logits.device)].float().cpu()
            label_probs[chunk] = final.gather(1, query.label_token_ids).softmax(-1)
            top = final.softmax(-1).topk(top_k, dim=-1)
            top_tokens[chunk], top_probs[chunk] = top.indices, top.values
    settings = {
        "model": adapter.name, "tl_class": adapter.kind, "compression": keep,
        "position_policy": position_policy, "keep_bos": keep_bos, "seed": seed,
        "trial": trial, "top_k": top_k, "label_token_policy": label_token_policy,
    }  # fmt: skip
    return ICLResult(label_probs, batch.gold.clone().cpu(), top_tokens, top_probs, settings)
