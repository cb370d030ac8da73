"""The guards every experiment runs under: frozen parameters and live attention hooks.

:func:`frozen` puts a model in eval mode with ``requires_grad=False`` everywhere and restores
every flag afterwards, also after an exception; :func:`check_attention_hooks_live` refuses a
model whose ``hook_pattern`` edits are discarded (some TransformerBridge architectures).
Part of the model layer: these name TransformerLens behaviour, so they live beside
:mod:`anchor_flow.models.tl_adapter`.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from anchor_flow.errors import DeadAttentionHooksError
from anchor_flow.models.tl_adapter import (
    ModelAdapter,
    adapt,
    model_modules,
    model_parameters,
    tl_version,
)

__all__ = ["check_attention_hooks_live", "frozen"]


@contextlib.contextmanager
def frozen(model_or_adapter: Any) -> Iterator[Any]:
    """Eval mode and ``requires_grad=False`` on every parameter inside the block.

    Every flag and every module's training mode is restored on exit, also after an exception.
    Yields the model.
    """
    model = adapt(model_or_adapter).model
    modes = [(m, m.training) for m in model_modules(model)]
    flags = [(p, p.requires_grad) for p in model_parameters(model)]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


_LIVENESS: weakref.WeakKeyDictionary[Any, str | None] = weakref.WeakKeyDictionary()

_DEAD_ADVICE = (
    "TransformerBridge delegates attention to Hugging Face for some architectures (GPT-J, "
    "GPT-Neo, OPT, BERT, T5, ...): hook_pattern then fires on a copy, edits are discarded and "
    "gradients never arrive. Load GPT-J, GPT-Neo and OPT with anchor_flow.load_model / "
    "from_hf_model (they route the attention through hook_pattern; for a bridge built "
    "elsewhere call anchor_flow.models.pattern_routing.route_patterns(model)), use a "
    "HookedTransformer from transformer-lens 3.9 (load_model(..., tl_class='hooked')), or an "
    "architecture whose bridge hooks are live (see docs/architectures.md)."
)


def _probe(adapter: ModelAdapter) -> str | None:
    """The reason the attention hooks are dead, or ``None`` if both checks pass."""
    name = adapter.pattern_hook_name(0)
    n = min(4, adapter.n_ctx)
    tokens = (torch.arange(1, n + 1) % adapter.d_vocab)[None].to(adapter.device)

    def edit_to(key: str) -> Callable[[Tensor, Any], Tensor]:
        def edit(pattern: Tensor, hook: Any) -> Tensor:
            target = torch.zeros_like(pattern)
            if key == "first":
                target[..., 0] = 1.0
            else:
                target = target + torch.eye(pattern.shape[-1], dtype=pattern.dtype).to(target)
            return target

        return edit

    with frozen(adapter), torch.no_grad():
        base = adapter.forward_logits(tokens)
        changed = False
        for key in ("first", "self"):
            with adapter.hooks(fwd_hooks=[(name, edit_to(key))]):
                edited = adapter.forward_logits(tokens)
            if (edited - base).abs().max() > 1e-6 * (1 + base.abs().max()):
                changed = True
                break
    if not changed:
        return f"edit check failed: replacing {name} left the logits unchanged"

    fired: list[bool] = []
    ones = torch.ones((), device=adapter.device, dtype=adapter.dtype, requires_grad=True)
    fwd = [(name, lambda pattern, hook: pattern * ones)]
    bwd = [(name, lambda grad, hook: fired.append(True))]
    with frozen(adapter), torch.enable_grad(), adapter.hooks(fwd_hooks=fwd, bwd_hooks=bwd):
        logits = adapter.forward_logits(tokens)
        if logits.requires_grad:
            logits[:, -1].sum().backward()
    if not fired:
        return f"gradient check failed: a backward hook on {name} never fired"
    return None


def check_attention_hooks_live(model_or_adapter: Any) -> None:
    """Raise :class:`DeadAttentionHooksError` unless layer 0's ``hook_pattern`` is live.

    Two checks on a 4-token input: replacing the pattern changes the logits, and a backward
    hook on the pattern fires. The verdict is cached per model object.
    """
    adapter = adapt(model_or_adapter)
    if adapter.model not in _LIVENESS:
        with warnings.catch_warnings():
            # TL warns that edits are discarded; the verdict below says it plainly.
            warnings.simplefilter("ignore")
            _LIVENESS[adapter.model] = _probe(adapter)
    reason = _LIVENESS[adapter.model]
    if reason is not None:
        raise DeadAttentionHooksError(
            f"{adapter.name!r} ({type(adapter.model).__name__}, transformer-lens {tl_version()}): "
            f"{reason}. {_DEAD_ADVICE}"
        )
