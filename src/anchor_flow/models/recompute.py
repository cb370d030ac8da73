"""Activation checkpointing per transformer block, for gradient passes at long contexts.

Inside :func:`recompute_blocks`, each block's forward runs under
``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``: autograd keeps only the block's
inputs (the residual stream), and the backward re-runs the block's forward just before it
differentiates through it. The attention patterns of every layer (``layer x head x pos²``
per prompt) are then never alive together, at the price of a second forward per block.

Hook points inside a block fire twice: in the forward and again in the recompute (the backward
pass itself runs through the first forward's graph, so backward hooks fire once).
:func:`recomputing` tells the two apart; a forward hook that keeps a tensor for its backward
hook should keep it only while recomputing. Forward hooks must be deterministic (the recompute
must produce the same tensors: the checkpoint compares their shapes and dtypes).

Works on ``HookedTransformer`` and ``TransformerBridge`` alike: both call their blocks as
modules (``model.blocks``), whose ``forward`` is shadowed by an instance attribute for the
duration of the block and restored afterwards, also after an exception. Deliberately not here:
what the hooks compute (:mod:`anchor_flow.analysis.saliency.hooks`).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from anchor_flow.errors import UnsupportedModelError
from anchor_flow.models.tl_adapter import adapt

__all__ = ["recompute_blocks", "recomputing"]

_STATE = threading.local()


def recomputing() -> bool:
    """Whether a block's forward is re-run for the backward (inside :func:`recompute_blocks`)."""
    return getattr(_STATE, "depth", 0) > 0


@contextlib.contextmanager
def _recompute_context() -> Iterator[None]:
    _STATE.depth = getattr(_STATE, "depth", 0) + 1
    try:
        yield
    finally:
        _STATE.depth -= 1


def _contexts() -> tuple[
    contextlib.AbstractContextManager[Any], contextlib.AbstractContextManager[Any]
]:
    # checkpoint's context_fn: (around the forward, around the recompute).
    return contextlib.nullcontext(), _recompute_context()


def _cache_classes() -> tuple[type, ...]:
    # Key/value caches a block appends to: Hugging Face's (bridges) and TransformerLens's own.
    found: list[type] = []
    with contextlib.suppress(ImportError):
        from transformers.cache_utils import Cache

        found.append(Cache)
    with contextlib.suppress(ImportError):
        from transformer_lens import TransformerLensKeyValueCacheEntry

        found.append(TransformerLensKeyValueCacheEntry)
    return tuple(found)


def _checkpointed(forward: Callable[..., Any], name: str) -> Callable[..., Any]:
    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        caches = _cache_classes()
        if any(isinstance(value, caches) for value in (*args, *kwargs.values())):
            raise UnsupportedModelError(
                f"{name} received a key/value cache: recomputing the block would append its "
                "keys and values a second time; run the forward with use_cache=False"
            )
        return checkpoint(forward, *args, use_reentrant=False, context_fn=_contexts, **kwargs)

    return run


@contextlib.contextmanager
def recompute_blocks(model: Any) -> Iterator[None]:
    """Inside the block, every transformer block of ``model`` is checkpointed.

    Example:
        >>> with recompute_blocks(model), adapt(model).hooks(fwd_hooks=fwd, bwd_hooks=bwd):
        ...     loss(model(tokens)).backward()  # doctest: +SKIP

    Run the backward inside the block too: the recompute calls the blocks' own forwards,
    which are restored on exit.

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge`` (or its adapter).
    """
    adapter = adapt(model)
    blocks = getattr(adapter.model, "blocks", None)
    if not isinstance(blocks, torch.nn.ModuleList) or len(blocks) != adapter.n_layers:
        raise UnsupportedModelError(
            f"{adapter.name!r} ({type(adapter.model).__name__}): recompute_blocks needs "
            f"model.blocks, a ModuleList of its {adapter.n_layers} blocks; use memory='keep'"
        )
    shadowed: list[torch.nn.Module] = []
    try:
        for layer, block in enumerate(blocks):
            # The instance __dict__ directly: bridge components forward setattr to the wrapped
            # Hugging Face module, and an instance attribute shadows the class's forward.
            if "forward" in vars(block):
                raise UnsupportedModelError(
                    f"{adapter.name!r}: block {type(block).__name__} already has an instance "
                    "forward (nested recompute_blocks, or another wrapper); refusing to stack"
                )
            shadowed.append(block)
            vars(block)["forward"] = _checkpointed(block.forward, f"{adapter.name!r} block {layer}")
        yield
    finally:
        for block in shadowed:
            del vars(block)["forward"]
