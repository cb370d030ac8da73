"""Which positions context compression keeps (paper §3.2; PAPER.md §5.1–5.2): pure, no model.

The query starts at :func:`context_end`; Hidden_anchor keeps each demonstration's formatting
and label word(s) (:func:`anchor_positions`), Hidden_random swaps the label words for random
text positions of the same demonstration (:func:`random_anchor_positions`), and the mask
engine blocks the query from everything else (:func:`compression_mask`). Running the model
is :mod:`anchor_flow.applications.compression.engines`, which re-exports these names.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Bool
from torch import Tensor

from anchor_flow.errors import AnchorFlowError
from anchor_flow.icl.roles import PromptBatch, Role

__all__ = [
    "CompressionError",
    "anchor_positions",
    "compression_mask",
    "context_end",
    "context_groups",
    "query_batch",
    "random_anchor_positions",
]

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
        >>> from anchor_flow import tokenize_prompts, toy_prompts
        >>> from anchor_flow.testbeds.toy import build_toy_tokenizer
        >>> batch = tokenize_prompts(toy_prompts(1), build_toy_tokenizer())
        >>> batch.demo_index[0, context_end(batch)].item()  # the query's index = n_demos
        2
    """
    _check_row(batch, row)
    n_demos = int(batch.demo_index[row, batch.target_position[row]])
    return int(torch.nonzero(batch.demo_index[row] == n_demos)[0, 0])


def _demo_positions(
    batch: PromptBatch, row: int, roles: Sequence[Role], *, straddling: bool
) -> Tensor:
    # A token straddling text and format (" .\n") holds the template's newline, which the
    # official Hidden_anchor keeps: kept whatever role it got, never one of the random draws.
    end = context_end(batch, row)
    straddle = batch.straddle_mask[row, :end]
    wanted = torch.isin(batch.roles[row, :end], torch.tensor([int(r) for r in roles]))
    wanted = (wanted | straddle) if straddling else (wanted & ~straddle)
    return torch.nonzero((batch.demo_index[row, :end] >= 0) & wanted).flatten()


def anchor_positions(batch: PromptBatch, row: int = 0, *, keep_bos: bool = True) -> Tensor:
    """Hidden_anchor's kept positions of ``row``: each demonstration's formatting and label
    word(s), plus a BOS token if ``keep_bos``. Sorted, ``Int[Tensor, " kept"]``. A token that
    straddles text and formatting (``PromptBatch.straddling``) is kept, whatever its role.

    Example:
        >>> from anchor_flow import tokenize_prompts, toy_prompts
        >>> from anchor_flow.testbeds.toy import build_toy_tokenizer
        >>> batch = tokenize_prompts(toy_prompts(1), build_toy_tokenizer())
        >>> kept = anchor_positions(batch)
        >>> sorted({Role(int(r)).name for r in batch.roles[0, kept]})
        ['FORMAT', 'LABEL']

    Raises:
        CompressionError: the row's demonstrations hold no label word (e.g. 0 demonstrations).
    """
    kept = _demo_positions(batch, row, _KEPT_ROLES, straddling=True)
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
        >>> from anchor_flow import tokenize_prompts, toy_prompts
        >>> from anchor_flow.testbeds.toy import build_toy_tokenizer
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
    text = _demo_positions(batch, row, (Role.TEXT,), straddling=False)
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


def query_batch(batch: PromptBatch, rows: Sequence[int], start: int) -> PromptBatch:
    """The rows' tokens from ``start`` on (their query), re-padded, with roles and target."""
    part = batch.select(list(rows))
    return PromptBatch(
        tokens=part.tokens[:, start:], roles=part.roles[:, start:],
        demo_index=part.demo_index[:, start:], label_class=part.label_class[:, start:],
        target_position=part.target_position - start, label_token_ids=part.label_token_ids,
        gold=part.gold, str_tokens=tuple(t[start:] for t in part.str_tokens),
        straddling=part.straddle_mask[:, start:],
    )  # fmt: skip


def compression_mask(
    batch: PromptBatch, kept: Sequence[Tensor]
) -> Bool[Tensor, "batch query_pos key_pos"]:
    """The mask engine's edges (True = blocked): each row's query positions, from
    :func:`context_end` on, lose every context key not in ``kept[row]``.

    Blocking these edges in every layer (renormalised) equals answering the query against
    the compressed cache under ``position_policy="original"``.

    Example:
        >>> from anchor_flow import tokenize_prompts, toy_prompts
        >>> from anchor_flow.testbeds.toy import build_toy_tokenizer
        >>> batch = tokenize_prompts(toy_prompts(1), build_toy_tokenizer())
        >>> kept = anchor_positions(batch)
        >>> mask = compression_mask(batch, [kept])
        >>> end = context_end(batch)
        >>> int(mask[0, end].sum()) == end - len(kept), bool(mask[0, :end].any())
        (True, False)
    """
    if len(kept) != len(batch):
        raise CompressionError(f"got {len(kept)} keep sets for a batch of {len(batch)} prompts")
    width = int(batch.tokens.shape[1])
    mask = torch.zeros(len(batch), width, width, dtype=torch.bool)
    for row, index in enumerate(kept):
        end = context_end(batch, row)
        dropped = torch.ones(end, dtype=torch.bool)
        dropped[index.cpu()] = False
        mask[row, end:, :end] = dropped
    return mask


def context_groups(batch: PromptBatch) -> list[tuple[int, list[int]]]:
    """Rows sharing their context tokens (scheme "fixed"), as ``(context end, rows)``.

    Example:
        >>> from anchor_flow import tokenize_prompts, toy_prompts
        >>> from anchor_flow.testbeds.toy import build_toy_tokenizer
        >>> batch = tokenize_prompts(toy_prompts(3), build_toy_tokenizer())
        >>> [rows for _, rows in context_groups(batch)]  # own demonstrations per prompt
        [[0], [1], [2]]
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    ends: dict[tuple[int, ...], int] = {}
    for row in range(len(batch)):
        end = context_end(batch, row)
        key = tuple(batch.tokens[row, :end].tolist())
        groups.setdefault(key, []).append(row)
        ends[key] = end
    return [(ends[key], rows) for key, rows in groups.items()]
