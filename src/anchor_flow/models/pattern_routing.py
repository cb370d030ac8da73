"""Live ``hook_pattern`` on bridges that hand attention to Hugging Face (GPT-J, GPT-Neo, OPT).

TransformerLens 4.x wraps these three families' attention modules whole: the bridge runs
Hugging Face's attention and fires ``hook_pattern`` afterwards on the returned copy of the
probabilities, so an edit is discarded and a backward hook never fires. :func:`route_patterns`
makes the hook point part of the computation, on the bridge's own Hugging Face modules:

* GPT-J and GPT-Neo (eager ``_attn``: softmax, then ``attn_dropout``, then ``weights @ value``):
  the module's ``attn_dropout`` becomes :class:`PatternSeam`, the same dropout followed by the
  bridge's ``hook_pattern``. Hugging Face's own arithmetic is untouched.
* OPT (``ALL_ATTENTION_FUNCTIONS``): the model's ``config._attn_implementation`` becomes
  :data:`ROUTED_ATTENTION`, an eager attention registered through transformers'
  ``AttentionInterface`` (with eager's mask) that passes the probabilities through the
  ``pattern_fn`` the bridge hands to modules that declare ``accepts_pattern_fn`` (TL's seam
  for native attention).

Either way the module declares ``accepts_pattern_fn``, so the bridge no longer fires the hook a
second time on the returned copy. The hook point is called exactly once per forward, on the
tensor that multiplies the values. ``hook_attn_scores`` stays TL's post-hoc copy. The routed
modules run Hugging Face's eager attention (never sdpa or flash), as the bridge already did
for these families. Without a hook attached a ``HookPoint`` is the identity, so the unwrapped
Hugging Face model of :mod:`anchor_flow.models.fast_forward` computes the same logits.

Part of the model layer (it names TransformerLens and transformers internals); called by
:func:`anchor_flow.models.tl_build.build_bridge` on every bridge anchor_flow builds.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ROUTED_ATTENTION", "PatternSeam", "route_patterns", "routed_family"]

ROUTED_ATTENTION = "anchor_flow_eager"

# Hugging Face attention classes whose eager _attn applies attn_dropout to the probabilities.
_DROPOUT_SEAM_CLASSES = ("GPTJAttention", "GPTNeoSelfAttention")
_INTERFACE_CLASSES = ("OPTAttention",)


class PatternSeam(nn.Module):
    """The attention dropout followed by the bridge's ``hook_pattern``.

    The hook point is held outside the module tree (it already belongs to the bridge's).
    """

    def __init__(self, dropout: nn.Module, hook_point: nn.Module) -> None:
        super().__init__()
        self.dropout = dropout
        self.__dict__["hook_point"] = hook_point

    def forward(self, pattern: Tensor) -> Tensor:
        return self.__dict__["hook_point"](self.dropout(pattern))


def _routed_eager_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    pattern_fn: Any = None,
    **kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """Eager attention (OPT's ``eager_attention_forward``) with ``pattern_fn`` on the
    post-softmax probabilities ``[batch head query key]``."""
    weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask[..., : key.shape[-2]]
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    if pattern_fn is not None:
        weights = pattern_fn(weights)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


def _register_routed_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(ROUTED_ATTENTION, _routed_eager_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ROUTED_ATTENTION, eager_mask)


def _attention_bridges(bridge: Any) -> list[tuple[Any, Any]]:
    """Each block's attention bridge and the Hugging Face module it wraps."""
    found = []
    for block in getattr(bridge, "blocks", ()):
        attn = getattr(block, "attn", None)
        original = getattr(attn, "original_component", None)
        if attn is not None and isinstance(original, nn.Module):
            found.append((attn, original))
    return found


def _bridge_offers_seam(attn: Any) -> bool:
    """Whether this TL's AttentionBridge honours ``accepts_pattern_fn`` (TL 4.x does; without it
    the bridge would fire ``hook_pattern`` a second time on the returned copy)."""
    import inspect

    try:
        source = inspect.getsource(type(attn).forward)
    except (OSError, TypeError):
        return False
    return "accepts_pattern_fn" in source


def routed_family(bridge: Any) -> str | None:
    """``"dropout-seam"`` or ``"attention-interface"`` where :func:`route_patterns` applies to
    ``bridge`` (or already did), else ``None``."""
    modules = _attention_bridges(bridge)
    if not modules:
        return None
    names = {type(original).__name__ for _, original in modules}
    if names <= set(_DROPOUT_SEAM_CLASSES):
        return "dropout-seam"
    if names <= set(_INTERFACE_CLASSES):
        return "attention-interface"
    return None


def route_patterns(bridge: Any) -> bool:
    """Route the attention probabilities of a GPT-J, GPT-Neo or OPT bridge through its live
    ``blocks.{l}.attn.hook_pattern``, in place; idempotent. Returns whether it routed.

    Any other bridge (its hooks are live already, or it is a family this function does not
    know) and a TransformerLens whose bridge lacks the ``accepts_pattern_fn`` seam are left as
    they are: the liveness probe then decides.
    """
    family = routed_family(bridge)
    modules = _attention_bridges(bridge)
    if family is None or not _bridge_offers_seam(modules[0][0]):
        return False
    if family == "attention-interface":
        config = modules[0][1].config
        if config._attn_implementation not in ("eager", ROUTED_ATTENTION):
            return False  # sdpa / flash: the probabilities are never formed
        _register_routed_attention()
        config._attn_implementation = ROUTED_ATTENTION
    for attn, original in modules:
        if family == "dropout-seam" and not isinstance(original.attn_dropout, PatternSeam):
            original.attn_dropout = PatternSeam(original.attn_dropout, attn.hook_pattern)
        original.accepts_pattern_fn = True
    return True
