"""Whether a checkpoint's own tokenizer starts a text with BOS (PAPER.md §0.1, §1.2).

The paper's code tokenizes with the plain Hugging Face tokenizer, so its GPT2-XL and GPT-J
inputs never start with ``<|endoftext|>``, while a Llama-style tokenizer prepends ``<s>``.
TransformerLens hands out a copy of the tokenizer rebuilt with ``add_bos_token=True``, so
``model.tokenizer`` cannot tell which the checkpoint does. :func:`record_checkpoint_bos`
(called by :func:`anchor_flow.models.loading.load_model` and ``from_hf_model``) notes what the
checkpoint's own tokenizer does, keyed weakly by the model object and by the tokenizer copy it
carries; nothing on the model or its config is changed. :func:`checkpoint_prepends_bos` reads
it back; for a TL model loaded elsewhere it reloads the tokenizer from its ``name_or_path``
once, from local files only.

>>> checkpoint_prepends_bos(load_model("toy-gpt2").tokenizer)  # doctest: +SKIP
False

Deliberately not here: tokenizing prompts (:mod:`anchor_flow.icl.prompts`).
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Iterator
from typing import Any

__all__ = [
    "checkpoint_prepends_bos",
    "forced_prepend_bos",
    "prepend_bos_option",
    "record_checkpoint_bos",
    "remember_prepend_bos",
    "resolved_prepend_bos",
    "tokenizer_prepends_bos",
]

logger = logging.getLogger(__name__)

_RECORDED: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def tokenizer_prepends_bos(tokenizer: Any) -> bool:
    """Whether ``tokenizer(text)`` (special tokens on) puts a token in front of the text.

    Example:
        >>> from anchor_flow.testbeds.toy import build_toy_tokenizer
        >>> tokenizer_prepends_bos(build_toy_tokenizer())
        False
    """
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    special = tokenizer("a", add_special_tokens=True)["input_ids"]
    return len(special) > len(plain) and special[1 : 1 + len(plain)] == plain


def _remember(key: Any, value: bool) -> None:
    with contextlib.suppress(TypeError):  # not weakly referenceable: nothing to remember
        _RECORDED[key] = value


def record_checkpoint_bos(model: Any, own_tokenizer: Any) -> bool:
    """Note what ``own_tokenizer`` (the checkpoint's, before TransformerLens rebuilt it) does,
    for ``model`` and for the tokenizer ``model.tokenizer`` it hands out. Returns it."""
    value = tokenizer_prepends_bos(own_tokenizer)
    _remember(model, value)
    carried = getattr(model, "tokenizer", None)
    if carried is not None:
        _remember(carried, value)
    return value


def _lookup(key: Any) -> bool | None:
    try:
        return _RECORDED.get(key)
    except TypeError:
        return None


def checkpoint_prepends_bos(model_or_tokenizer: Any) -> bool | None:
    """What the checkpoint's own tokenizer does: True (BOS), False (none), None (unknown).

    A tokenizer is known when it is the ``.tokenizer`` of a model that
    :func:`anchor_flow.models.loading.load_model` (or ``from_hf_model``) built; a model object
    not built there is looked up by reloading its tokenizer's ``name_or_path`` (local files
    only). Unknown means: do what the tokenizer itself does.
    """
    known = _lookup(model_or_tokenizer)
    if known is not None:
        return known
    tokenizer = getattr(model_or_tokenizer, "tokenizer", None)
    if tokenizer is None or not hasattr(model_or_tokenizer, "cfg"):
        return None
    known = _lookup(tokenizer)
    if known is not None:
        _remember(model_or_tokenizer, known)
        return known
    source = str(getattr(tokenizer, "name_or_path", "") or "")
    if not source:
        return None
    try:
        from transformers import AutoTokenizer

        own = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except Exception as error:  # transformers raises many types for a missing checkpoint
        logger.warning(
            "cannot reload the tokenizer of %r (%s); BOS follows the model's tokenizer copy, "
            "which TransformerLens builds with add_bos_token=True",
            source,
            type(error).__name__,
        )
        return None
    return record_checkpoint_bos(model_or_tokenizer, own)


def resolved_prepend_bos(model: Any, prepend_bos: bool | None = None) -> bool:
    """The BOS choice a run with ``prepend_bos`` gets: forced, else the checkpoint's own,
    else what the model's tokenizer does (what results record)."""
    if prepend_bos is not None:
        return prepend_bos
    known = checkpoint_prepends_bos(model)
    if known is not None:
        return known
    tokenizer = getattr(model, "tokenizer", None)
    return tokenizer is not None and tokenizer_prepends_bos(tokenizer)


@contextlib.contextmanager
def forced_prepend_bos(model: Any, prepend_bos: bool | None) -> Iterator[None]:
    """Within the block, ``prepend_bos=None`` means ``prepend_bos`` for ``model`` and its
    tokenizer (``None``: no change); the previous record is restored afterwards, also after
    an exception. The run uses it for ``RunConfig.prepend_bos``.

    Example:
        >>> with forced_prepend_bos(model, True):  # doctest: +SKIP
        ...     run_icl(model, prompts)  # every prompt starts with BOS
    """
    if prepend_bos is None:
        yield
        return
    keys = [k for k in (model, getattr(model, "tokenizer", None)) if k is not None]
    before = [_lookup(k) for k in keys]
    for key in keys:
        _remember(key, prepend_bos)
    try:
        yield
    finally:
        for key, value in zip(keys, before, strict=True):
            if value is None:
                with contextlib.suppress(TypeError, KeyError):
                    del _RECORDED[key]
            else:
                _remember(key, value)


def remember_prepend_bos(model: Any, prepend_bos: bool) -> None:
    """From now on ``prepend_bos=None`` means ``prepend_bos`` for ``model`` (the CLI's
    ``--prepend-bos yes/no`` for the model it loaded; library code uses
    :func:`forced_prepend_bos`, which restores the record)."""
    for key in (model, getattr(model, "tokenizer", None)):
        if key is not None:
            _remember(key, prepend_bos)


def prepend_bos_option(choice: str) -> bool | None:
    """``"auto"`` -> None, ``"yes"`` -> True, ``"no"`` -> False (the CLI's and RunConfig's)."""
    return {"auto": None, "yes": True, "no": False}[choice]
