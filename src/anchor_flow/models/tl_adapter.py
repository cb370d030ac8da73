"""One of the two modules that know TransformerLens internals: running the user's model.

Hook names, model classes, forward keyword arguments and key/value caches live here; the
guards every experiment runs under (frozen parameters, the attention-hook liveness probe) in
:mod:`anchor_flow.models.guards`; building TL models from Hugging Face models and the
weight-processing check live in its sibling :mod:`anchor_flow.models.tl_build`. A TransformerLens
upgrade touches these two files (and the tests' model builders) and nothing else. Works with
``HookedTransformer`` (TL 3.x) and ``TransformerBridge`` (TL 3.9 and 4.x); TL is imported
lazily.

This module computes no paper quantity; it only gives the experiment modules (saliency,
isolation, ...) a small, version-independent way to run the user's model:

>>> adapter = adapt(model)                                  # doctest: +SKIP
>>> with adapter.hooks(fwd_hooks=[(adapter.pattern_hook_name(0), fn)]):  # doctest: +SKIP
...     logits = adapter.final_logits(tokens, positions)

Deliberately not here: any permanent hook, any change of ``model.cfg``, weight processing,
building models (:mod:`anchor_flow.models.tl_build`).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from anchor_flow.errors import UnsupportedModelError

__all__ = [
    "ModelAdapter",
    "adapt",
    "hooked_transformer_class",
    "model_modules",
    "model_parameters",
    "tl_version",
    "transformer_bridge_class",
]

HookList = Sequence[tuple[str | Callable[[str], bool], Callable[..., Any]]]
_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.")


def tl_version() -> str:
    """The installed ``transformer-lens`` version string, e.g. ``"3.9.0"``."""
    return importlib.metadata.version("transformer-lens")


def hooked_transformer_class() -> Any:
    """``HookedTransformer``, or ``None`` where the installed TL removed it (4.0+)."""
    try:
        from transformer_lens import HookedTransformer
    except ImportError:
        return None
    return HookedTransformer


def transformer_bridge_class() -> Any:
    """``TransformerBridge``, or ``None`` where the installed TL has none."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        return None
    return TransformerBridge


class _StopAtFinalNormError(Exception):
    """Carries the residual stream out of a bridge forward before the final norm."""

    def __init__(self, residual: Tensor) -> None:
        super().__init__("stopped before the final layer norm")
        self.residual = residual


@dataclass(frozen=True, eq=False)
class ModelAdapter:
    """A TL model plus the few facts and forward variants anchor_flow needs.

    Build one with :func:`adapt`. The model is never mutated permanently.
    """

    model: Any = field(repr=False)
    kind: Literal["hooked", "bridge"]
    n_layers: int
    n_heads: int
    n_key_value_heads: int
    d_model: int
    d_head: int
    d_vocab: int
    n_ctx: int
    tokenizer: Any | None = field(repr=False)
    name: str

    # --- hook names -------------------------------------------------------------------------
    def _check_layer(self, layer: int) -> int:
        if not 0 <= layer < self.n_layers:
            raise UnsupportedModelError(
                f"layer {layer} is out of range for {self.name!r} with {self.n_layers} layers; "
                f"expected 0 <= layer < {self.n_layers}"
            )
        return layer

    def pattern_hook_name(self, layer: int) -> str:
        """Attention probabilities ``[batch head_index query_pos key_pos]`` of ``layer``."""
        return f"blocks.{self._check_layer(layer)}.attn.hook_pattern"

    def scores_hook_name(self, layer: int) -> str:
        """Pre-softmax attention scores of ``layer`` (post-hoc copy on some bridges)."""
        return f"blocks.{self._check_layer(layer)}.attn.hook_attn_scores"

    def q_hook_name(self, layer: int) -> str:
        """Queries ``[batch pos head_index d_head]`` of ``layer``."""
        return f"blocks.{self._check_layer(layer)}.attn.hook_q"

    def k_hook_name(self, layer: int) -> str:
        """Keys ``[batch pos n_key_value_heads d_head]`` of ``layer``."""
        return f"blocks.{self._check_layer(layer)}.attn.hook_k"

    def v_hook_name(self, layer: int) -> str:
        """Values ``[batch pos n_key_value_heads d_head]`` of ``layer``."""
        return f"blocks.{self._check_layer(layer)}.attn.hook_v"

    def layer_of_hook(self, name: str) -> int:
        """The block index in a hook name, e.g. ``"blocks.3.attn.hook_pattern"`` -> 3."""
        match = _BLOCK_HOOK.match(name)
        if match is None:
            raise UnsupportedModelError(
                f"hook name {name!r} is not a block hook; expected 'blocks.<layer>.<...>'"
            )
        return self._check_layer(int(match.group(1)))

    # --- running ----------------------------------------------------------------------------
    def hooks(
        self, fwd_hooks: HookList = (), bwd_hooks: HookList = ()
    ) -> contextlib.AbstractContextManager[Any]:
        """TL's ``model.hooks``: hooks live only inside the block, also after an exception.

        Run ``backward()`` inside the block, or backward hooks never fire.
        """
        return self.model.hooks(fwd_hooks=list(fwd_hooks), bwd_hooks=list(bwd_hooks))

    def forward_logits(
        self, tokens: Int[Tensor, "batch pos"], attention_mask: Tensor | None = None
    ) -> Float[Tensor, "batch pos d_vocab"]:
        """Logits at every position (hooks active in an enclosing :meth:`hooks` fire)."""
        if self.kind == "hooked":
            return self.model(tokens, return_type="logits", attention_mask=attention_mask)
        # No key/value cache: nothing reads it (2·layers·batch·pos·d_model values for nothing).
        return self.model(tokens, return_type="logits", attention_mask=attention_mask,
                          use_cache=False)  # fmt: skip

    def final_logits(
        self,
        tokens: Int[Tensor, "batch pos"],
        positions: Int[Tensor, " batch"],
        attention_mask: Tensor | None = None,
    ) -> Float[Tensor, "batch d_vocab"]:
        """Logits only at ``positions[b]`` of each row ``b``: the final norm and the unembedding
        run on one residual vector per row, not on every position.

        Equals ``forward_logits(tokens)[arange(batch), positions]``; forward and backward hooks
        active in an enclosing :meth:`hooks` block fire as in a full forward.
        """
        if self.kind == "hooked":
            # HookedTransformer returns the residual after the last block when stopped there.
            residual = self.model(
                tokens, attention_mask=attention_mask, stop_at_layer=self.n_layers
            )
        else:
            # No key/value cache: nothing reads it, and a checkpointed block's recompute
            # (models.recompute) would append to it a second time.
            residual = self._bridge_final_residual(
                tokens, return_type="logits", attention_mask=attention_mask, use_cache=False
            )
        return self._unembed_at(residual, positions)

    def _unembed_at(
        self, residual: Float[Tensor, "batch pos d_model"], positions: Int[Tensor, " batch"]
    ) -> Float[Tensor, "batch d_vocab"]:
        rows = torch.arange(residual.shape[0], device=residual.device)
        picked = residual[rows, positions.to(residual.device)][:, None, :]
        ln_final = getattr(self.model, "ln_final", None)
        if ln_final is not None:
            picked = ln_final(picked)
        logits = self.model.unembed(picked)[:, 0, :]
        cap = getattr(self.model.cfg, "output_logits_soft_cap", None)  # Gemma-2: 30
        return logits if not cap or cap <= 0 else cap * torch.tanh(logits / cap)

    def _bridge_final_residual(
        self, tokens: Tensor, **forward_kwargs: Any
    ) -> Float[Tensor, "batch pos d_model"]:
        # The bridge's stop_at_layer=n_layers runs the whole model (no block has that index),
        # so leave the forward from the final norm's input hook instead.
        def stop(residual: Tensor, hook: Any) -> None:
            raise _StopAtFinalNormError(residual)

        try:
            with self.model.hooks(fwd_hooks=[("ln_final.hook_in", stop)]):
                self.model(tokens, **forward_kwargs)
        except _StopAtFinalNormError as caught:
            return caught.residual
        raise UnsupportedModelError(
            f"{self.name!r}: the bridge never reached 'ln_final.hook_in'; final_logits needs a "
            "final layer norm bridge"
        )

    # --- key/value caches (compression, PAPER.md §5.1) ----------------------------------------
    def context_key_values(self, tokens: Int[Tensor, "batch pos"]) -> list[tuple[Tensor, Tensor]]:
        """Every layer's ``(keys, values)`` of a forward over ``tokens``, each
        ``[batch pos n_key_value_heads d_head]`` in the model's own cache convention.

        ``HookedTransformer`` fills TL's key/value cache; a bridge returns the Hugging Face
        cache it passes through (``return_type="logits_and_cache"``). Only
        :meth:`forward_logits_with_past` should read the tensors (rotary models cache keys
        before or after the rotation depending on the class).
        """
        if self.kind == "hooked":
            from transformer_lens import TransformerLensKeyValueCache

            cache = TransformerLensKeyValueCache.init_cache(
                self.model.cfg, self.device, tokens.shape[0]
            )
            mask = torch.ones_like(tokens)
            self.model(tokens, return_type=None, attention_mask=mask, past_kv_cache=cache)
            return [(entry.past_keys, entry.past_values) for entry in cache.entries]
        _, cache = self.model(tokens, return_type="logits_and_cache", use_cache=True)
        return [
            (layer.keys.transpose(1, 2), layer.values.transpose(1, 2)) for layer in cache.layers
        ]

    def forward_logits_with_past(
        self,
        tokens: Int[Tensor, "batch pos"],
        past: Sequence[tuple[Tensor, Tensor]],
        position_ids: Int[Tensor, " pos"],
    ) -> Float[Tensor, "batch pos d_vocab"]:
        """Logits of ``tokens`` attending to ``past`` (keys/values from
        :meth:`context_key_values`, batch 1 or ``batch``) and to themselves, causally, at the
        absolute ``position_ids``. The past is never modified; hooks of an enclosing
        :meth:`hooks` block fire on the new tokens only.
        """
        return self._with_past(tokens, past, position_ids, None)

    def final_logits_with_past(
        self,
        tokens: Int[Tensor, "batch pos"],
        past: Sequence[tuple[Tensor, Tensor]],
        position_ids: Int[Tensor, " pos"],
        positions: Int[Tensor, " batch"],
    ) -> Float[Tensor, "batch d_vocab"]:
        """:meth:`forward_logits_with_past` at ``positions[b]`` of each row only (the final
        norm and the unembedding run on one residual vector per row, as :meth:`final_logits`).
        """
        return self._with_past(tokens, past, position_ids, positions)

    def _with_past(
        self,
        tokens: Tensor,
        past: Sequence[tuple[Tensor, Tensor]],
        position_ids: Tensor,
        positions: Tensor | None,
    ) -> Tensor:
        batch, n_past = tokens.shape[0], past[0][0].shape[1]
        # The past's device: self.device walks every module (~50 ms on a 48-layer bridge).
        device = past[0][0].device
        position_ids = position_ids.to(device)
        if self.kind == "hooked":
            from transformer_lens import (
                TransformerLensKeyValueCache,
                TransformerLensKeyValueCacheEntry,
            )

            entries = [
                TransformerLensKeyValueCacheEntry(
                    k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1), frozen=True
                )
                for k, v in past
            ]
            ones = torch.ones(batch, n_past, dtype=torch.int, device=device)
            cache = TransformerLensKeyValueCache(entries, ones, frozen=True)
            default = torch.arange(n_past, n_past + tokens.shape[1], device=device)
            hooks: list[tuple[str, Callable[..., Any]]] = []
            if not torch.equal(position_ids, default):
                if self.model.cfg.positional_embedding_type != "standard":
                    raise UnsupportedModelError(
                        f"{self.name!r}: HookedTransformer continues positions after a past of "
                        f"{n_past} keys only; other position ids need learned absolute position "
                        "embeddings; use a TransformerBridge or position_policy='compact'"
                    )
                w_pos = self.model.W_pos
                hooks = [
                    ("hook_pos_embed", lambda embed, hook: w_pos[position_ids].expand_as(embed))
                ]
            stop = {} if positions is None else {"stop_at_layer": self.n_layers}
            with self.model.hooks(fwd_hooks=hooks):
                mask = torch.ones_like(tokens)
                out = self.model(tokens, attention_mask=mask, past_kv_cache=cache, **stop)
            return out if positions is None else self._unembed_at(out, positions)
        from transformers import DynamicCache

        hf_cache = DynamicCache(
            [
                (
                    k.expand(batch, -1, -1, -1).transpose(1, 2),
                    v.expand(batch, -1, -1, -1).transpose(1, 2),
                )
                for k, v in past
            ]
        )
        kwargs = {"return_type": "logits", "past_key_values": hf_cache,
                  "position_ids": position_ids[None].expand(batch, -1)}  # fmt: skip
        if positions is None:
            return self.model(tokens, **kwargs)
        return self._unembed_at(self._bridge_final_residual(tokens, **kwargs), positions)

    @property
    def device(self) -> torch.device:
        return self._first_parameter().device

    @property
    def dtype(self) -> torch.dtype:
        return self._first_parameter().dtype

    def _first_parameter(self) -> torch.nn.Parameter:
        # The first registered parameter: O(1). The full walk (bridges keep the HF model
        # outside their module tree) costs ~50 ms on a 48-layer bridge: only as a fallback.
        first = next(self.model.parameters(), None)
        return first if first is not None else next(iter(model_parameters(self.model)))


def adapt(model: Any) -> ModelAdapter:
    """Wrap a ``HookedTransformer`` or ``TransformerBridge`` (an adapter is returned as-is).

    Example:
        >>> adapt(model).pattern_hook_name(0)  # doctest: +SKIP
        'blocks.0.attn.hook_pattern'
    """
    if isinstance(model, ModelAdapter):
        return model
    hooked, bridge = hooked_transformer_class(), transformer_bridge_class()
    if hooked is not None and isinstance(model, hooked):
        kind: Literal["hooked", "bridge"] = "hooked"
    elif bridge is not None and isinstance(model, bridge):
        kind = "bridge"
    else:
        accepted = [c.__name__ for c in (hooked, bridge) if c is not None]
        raise UnsupportedModelError(
            f"got a {type(model).__module__}.{type(model).__qualname__}; expected a "
            f"TransformerLens {' or '.join(accepted)} (transformer-lens {tl_version()}), e.g. "
            "from anchor_flow.load_model(...)"
        )
    cfg = model.cfg
    n_heads = int(cfg.n_heads)
    return ModelAdapter(
        model=model,
        kind=kind,
        n_layers=int(cfg.n_layers),
        n_heads=n_heads,
        n_key_value_heads=int(getattr(cfg, "n_key_value_heads", None) or n_heads),
        d_model=int(cfg.d_model),
        d_head=int(cfg.d_head),
        d_vocab=int(cfg.d_vocab),
        n_ctx=int(cfg.n_ctx),
        tokenizer=getattr(model, "tokenizer", None),
        name=str(getattr(cfg, "model_name", None) or type(model).__name__),
    )


def model_modules(model: Any) -> list[torch.nn.Module]:
    """Every module of ``model``, including a bridge's wrapped Hugging Face model."""
    found: dict[int, torch.nn.Module] = {id(m): m for m in model.modules()}
    # A bridge keeps the wrapped Hugging Face model outside its module tree.
    original = model.__dict__.get("original_model") if hasattr(model, "__dict__") else None
    if original is None and isinstance(model, torch.nn.Module):
        with contextlib.suppress(AttributeError):
            original = getattr(model, "original_model", None)
    if isinstance(original, torch.nn.Module):
        found.update({id(m): m for m in original.modules()})
    return list(found.values())


def model_parameters(model: Any) -> list[torch.nn.Parameter]:
    """Every parameter of ``model``, including a bridge's wrapped Hugging Face model."""
    found: dict[int, torch.nn.Parameter] = {}
    for module in model_modules(model):
        for p in module.parameters(recurse=False):
            found[id(p)] = p
    for p in model.parameters():
        found[id(p)] = p
    return list(found.values())
