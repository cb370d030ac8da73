"""Prompts against a model's context window (PAPER.md §0.3; the paper's §2.1 script).

:func:`fit_to_context` refuses the first prompt longer than the window, or, like the paper's
§2.1 script, drops every such prompt and says how many. :func:`tokenization_summary` counts
what a run records about tokenization: tokens straddling a text and the template, and the
label words' token counts.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any, Literal

from anchor_flow.errors import ContextLengthError
from anchor_flow.icl.prompts import ICLPrompt, tokenize_prompts
from anchor_flow.icl.sampling import SamplingError, check_positive

__all__ = ["fit_to_context", "tokenization_summary"]

logger = logging.getLogger(__name__)

_TOKENIZE_CHUNK = 256  # prompts tokenized at once (bounds the padded tensors)


def fit_to_context(
    prompts: Sequence[ICLPrompt],
    tokenizer: Any,
    max_length: int,
    *,
    on_overflow: Literal["error", "skip"] = "error",
    label_token_policy: Literal["single", "first", "all"] = "single",
    prepend_bos: bool | None = None,
) -> tuple[list[ICLPrompt], int]:
    """The prompts that fit ``max_length`` tokens, and how many were dropped.

    Example:
        >>> from anchor_flow import toy_prompts
        >>> from anchor_flow.testbeds.toy import build_toy_tokenizer
        >>> kept, dropped = fit_to_context(toy_prompts(3), build_toy_tokenizer(), 1024)
        >>> len(kept), dropped
        (3, 0)

    Args:
        prompts: the prompts, tokenized as :func:`anchor_flow.icl.prompts.tokenize_prompts` does.
        tokenizer: the model's tokenizer.
        max_length: the context length (GPT-2: 1024).
        on_overflow: ``"error"`` refuses the first prompt that is too long; ``"skip"`` drops
            every such prompt and logs how many (the paper's §2.1 script filtered them).
        label_token_policy, prepend_bos: as for ``tokenize_prompts`` (they change lengths).

    Raises:
        ContextLengthError: with ``on_overflow="error"``, a prompt longer than ``max_length``.
        SamplingError: no prompts, bad arguments, or every prompt skipped.
    """
    if on_overflow not in ("error", "skip"):
        raise SamplingError(f"on_overflow={on_overflow!r}; expected 'error' or 'skip'")
    check_positive("max_length", max_length)
    if len(prompts) == 0:
        raise SamplingError("fit_to_context got no prompts; expected at least one ICLPrompt")
    prompts = list(prompts)
    kept: list[ICLPrompt] = []
    for start in range(0, len(prompts), _TOKENIZE_CHUNK):
        chunk = prompts[start : start + _TOKENIZE_CHUNK]
        lengths = tokenize_prompts(
            chunk,
            tokenizer,
            prepend_bos=prepend_bos,
            label_token_policy=label_token_policy,
            max_length=sys.maxsize,  # measure every prompt here; the limit is applied below
        ).lengths.tolist()
        for offset, (prompt, length) in enumerate(zip(chunk, lengths, strict=True)):
            if length <= max_length:
                kept.append(prompt)
            elif on_overflow == "error":
                raise ContextLengthError(
                    f"prompt {start + offset} is {length} tokens, longer than max_length="
                    f"{max_length}; use fewer demonstrations (shots_per_class) or "
                    "on_overflow='skip' to drop such prompts as the paper did"
                )
    dropped = len(prompts) - len(kept)
    if not kept:
        raise SamplingError(
            f"all {len(prompts)} prompts are longer than max_length={max_length} tokens; "
            "use fewer demonstrations (shots_per_class) or shorter texts"
        )
    if dropped:
        logger.warning(
            "fit_to_context dropped %d of %d prompts longer than %d tokens",
            dropped,
            len(prompts),
            max_length,
        )
    return kept, dropped


def tokenization_summary(
    prompts: Sequence[ICLPrompt],
    tokenizer: Any,
    *,
    label_token_policy: Literal["single", "first", "all"] = "single",
    prepend_bos: bool | None = None,
) -> dict[str, Any]:
    """What tokenizing ``prompts`` did at segment boundaries, for a run's record.

    Returns ``straddling_tokens`` (tokens that join a text's end with the template's newline,
    e.g. ``" .\\n"``, in all prompts; :mod:`anchor_flow.icl.alignment`),
    ``prompts_with_straddling`` and ``label_word_tokens`` (each label word's number of tokens
    in the demonstrations, for the words that occur there).

    Example:
        >>> from anchor_flow import toy_prompts
        >>> from anchor_flow.testbeds.toy import build_toy_tokenizer
        >>> tokenization_summary(toy_prompts(2), build_toy_tokenizer())["straddling_tokens"]
        0
    """
    total, affected = 0, 0
    lengths: dict[str, int] = {}
    for start in range(0, len(prompts), _TOKENIZE_CHUNK):
        chunk = list(prompts[start : start + _TOKENIZE_CHUNK])
        batch = tokenize_prompts(
            chunk, tokenizer, prepend_bos=prepend_bos, label_token_policy=label_token_policy,
            max_length=sys.maxsize,
        )  # fmt: skip
        counts = batch.straddling_counts
        total, affected = total + int(counts.sum()), affected + int((counts > 0).sum())
        for row, prompt in enumerate(chunk):
            word = batch.label_class[row] >= 0
            for demo in batch.demo_index[row, word].unique().tolist():
                at = word & (batch.demo_index[row] == demo)
                cls = int(batch.label_class[row, at][0])
                lengths.setdefault(prompt.label_words[cls], int(at.sum()))
    return {"straddling_tokens": total, "prompts_with_straddling": affected,
            "label_word_tokens": lengths}  # fmt: skip
