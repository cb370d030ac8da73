"""Hook-free forwards for compressed queries and timing (issue 18; paper §3.2, Table 3).

A compressed query needs no hooks, but a batch-1 forward through a ``TransformerBridge`` pays
for every bridge component and hook point it passes (≈50 Python module calls per layer): at
the GPT2-XL shape that costs more than the GPU's work. This module runs the same weights
without them:

* ``TransformerBridge``: the wrapped Hugging Face model, **unwrapped** (:func:`plain_hf_model`):
  a shallow copy of its module tree in which every bridge component is replaced by the Hugging
  Face module it wraps (sharing parameters, no copy of any weight) and every hook point is
  dropped. Checked once per model against the bridge's own logits on a short probe; a bridge
  whose unwrapped tree does not reproduce them is refused.
* ``HookedTransformer`` (TL 3.x): its own forward with no hook attached (TL's hook points then
  take PyTorch's hook-free call path): the same calls as the ``cache`` engine.

On CUDA, :class:`FastForward` with ``cuda_graphs=True`` captures each (past, batch, query
length) once into a ``torch.cuda.CUDAGraph`` and replays it: one launch per query instead of
one per kernel. The past's tensors are the graph's static cache (they never move). A capture
that fails (a host synchronisation inside the model) falls back to the eager forward with a
logged warning. **The CUDA-graph path has not been run on a GPU yet** (issue 18).

Equal logits to :meth:`~anchor_flow.models.tl_adapter.ModelAdapter.forward_logits_with_past`
(tests on CPU, both TL classes). Deliberately not here: hooks of any kind (use the ``cache``
engine for ``extra_hooks``), choosing positions, timing.
"""

from __future__ import annotations

import copy
import logging
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from anchor_flow.errors import UnsupportedModelError
from anchor_flow.models.tl_adapter import ModelAdapter

__all__ = ["FastForward", "plain_hf_model"]

logger = logging.getLogger(__name__)
Past = Sequence[tuple[Tensor, Tensor]]
_PLAIN: weakref.WeakKeyDictionary[Any, torch.nn.Module] = weakref.WeakKeyDictionary()
_PROBE_TOLERANCE = 1e-4


def _is_hook_point(module: torch.nn.Module) -> bool:
    return type(module).__name__ == "HookPoint"


def _unwrap(module: torch.nn.Module, memo: dict[int, torch.nn.Module | None]) -> Any:
    """A shallow copy of ``module`` with bridge components replaced by what they wrap."""
    if id(module) in memo:
        return memo[id(module)]
    if _is_hook_point(module):
        memo[id(module)] = None
        return None
    original = module._modules.get("_original_component")
    if original is not None:
        plain = _unwrap(original, memo)
        # A bridge may move the wrapped module's children onto itself (GPT-2's attention bridge
        # holds c_attn and c_proj as "qkv" and "o"): put them back under their own names.
        for child in module._modules.values():
            name = getattr(child, "name", None)
            if child is None or child is original or not isinstance(name, str):
                continue
            attribute = name.rsplit(".", 1)[-1]
            if attribute not in plain._modules and not hasattr(type(plain), attribute):
                unwrapped = _unwrap(child, memo)
                if unwrapped is not None:
                    plain._modules[attribute] = unwrapped
        memo[id(module)] = plain
        return plain
    plain = copy.copy(module)  # the same parameter and buffer tensors, in dicts of its own
    plain._parameters = dict(module._parameters)
    plain._buffers = dict(module._buffers)
    memo[id(module)] = plain
    plain._modules = OrderedDict()
    for name, child in module._modules.items():
        if child is None:
            plain._modules[name] = None
            continue
        unwrapped = _unwrap(child, memo)
        if unwrapped is not None:
            plain._modules[name] = unwrapped
    return plain


def plain_hf_model(adapter: ModelAdapter) -> torch.nn.Module:
    """The bridge's Hugging Face model without bridge components or hook points (cached).

    Example:
        >>> hf = plain_hf_model(adapt(bridge))  # doctest: +SKIP
        >>> logits = hf(tokens).logits  # doctest: +SKIP

    Raises:
        UnsupportedModelError: ``adapter`` is not a bridge, or the unwrapped model's logits
            differ from the bridge's on a probe (an architecture whose bridge computes
            something its Hugging Face modules do not).
    """
    if adapter.kind != "bridge":
        raise UnsupportedModelError(
            f"{adapter.name!r} is a {adapter.kind} model; expected a TransformerBridge (a "
            "HookedTransformer runs its own forward without hooks)"
        )
    cached = _PLAIN.get(adapter.model)
    if cached is not None:
        return cached
    original = adapter.model.__dict__.get("original_model")
    if not isinstance(original, torch.nn.Module):
        raise UnsupportedModelError(
            f"{adapter.name!r}: the bridge holds no Hugging Face model (original_model); "
            "expected a bridge built from a Hugging Face model"
        )
    plain = _unwrap(original, {}).eval()
    probe = torch.arange(1, 9, device=adapter.device)[None] % adapter.d_vocab
    with torch.no_grad():
        expected = adapter.forward_logits(probe).float()
        got = plain(probe, use_cache=False).logits.float()
    error = float((got - expected).abs().max()) / max(float(expected.abs().max()), 1.0)
    if not error < _PROBE_TOLERANCE:
        raise UnsupportedModelError(
            f"{adapter.name!r}: the bridge's Hugging Face modules, unwrapped, give other logits "
            f"than the bridge (relative max difference {error:.1e} on a probe); "
            "use engine='cache'"
        )
    _PLAIN[adapter.model] = plain
    return plain


def _dynamic_cache(past: Past, batch: int) -> Any:
    from transformers import DynamicCache

    return DynamicCache(
        [
            (
                k.expand(batch, -1, -1, -1).transpose(1, 2),
                v.expand(batch, -1, -1, -1).transpose(1, 2),
            )
            for k, v in past
        ]
    )


class FastForward:
    """Hook-free logits of full prompts and of queries against a past, for one model.

    Example:
        >>> fast = FastForward(adapter)  # doctest: +SKIP
        >>> logits = fast.logits(query, past, position_ids)  # doctest: +SKIP

    Args:
        adapter: the model (:func:`~anchor_flow.models.tl_adapter.adapt`).
        cuda_graphs: replay CUDA graphs on a CUDA device (ignored elsewhere). Not yet run
            on a GPU.
        max_graphs: captured graphs kept (least recently used dropped); each holds its past.
    """

    def __init__(self, adapter: ModelAdapter, *, cuda_graphs: bool = False, max_graphs: int = 8):
        self.adapter = adapter
        self.hf: Any = plain_hf_model(adapter) if adapter.kind == "bridge" else None
        self.cuda_graphs = cuda_graphs
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[tuple[Any, ...], Any] = OrderedDict()

    # --- eager ------------------------------------------------------------------------------
    def _eager(
        self,
        tokens: Tensor,
        past: Past | None,
        position_ids: Tensor | None,
        positions: Tensor | None,
    ) -> Tensor:
        adapter = self.adapter
        if self.hf is None:  # HookedTransformer: its own forward, no hooks attached
            if past is None:
                if positions is None:
                    return adapter.forward_logits(tokens)
                return adapter.final_logits(tokens, positions)
            assert position_ids is not None
            if positions is None:
                return adapter.forward_logits_with_past(tokens, past, position_ids)
            return adapter.final_logits_with_past(tokens, past, position_ids, positions)
        batch = tokens.shape[0]
        kwargs: dict[str, Any] = {"use_cache": past is not None}
        if past is not None:
            assert position_ids is not None
            kwargs["past_key_values"] = _dynamic_cache(past, batch)
            kwargs["position_ids"] = position_ids[None].expand(batch, -1)
        if positions is None:
            return self.hf(tokens, **kwargs).logits
        hidden = self.hf.base_model(tokens, **kwargs).last_hidden_state  # final norm applied
        rows = torch.arange(batch, device=hidden.device)
        return self.hf.get_output_embeddings()(hidden[rows, positions])

    # --- public -----------------------------------------------------------------------------
    def logits(
        self,
        tokens: Int[Tensor, "batch pos"],
        past: Past | None = None,
        position_ids: Int[Tensor, " pos"] | None = None,
    ) -> Float[Tensor, "batch pos d_vocab"]:
        """Logits at every position: of ``tokens`` alone, or attending to ``past`` (keys and
        values from ``ModelAdapter.context_key_values``) at the absolute ``position_ids``."""
        return self._run(tokens, past, position_ids, None)

    def final_logits(
        self,
        tokens: Int[Tensor, "batch pos"],
        past: Past | None,
        position_ids: Int[Tensor, " pos"] | None,
        positions: Int[Tensor, " batch"],
    ) -> Float[Tensor, "batch d_vocab"]:
        """:meth:`logits` at ``positions[b]`` of each row only."""
        return self._run(tokens, past, position_ids, positions)

    def _run(
        self,
        tokens: Tensor,
        past: Past | None,
        position_ids: Tensor | None,
        positions: Tensor | None,
    ) -> Tensor:
        device = tokens.device
        if past is not None:
            device = past[0][0].device
            position_ids = _as_ids(position_ids, device)
        tokens = tokens.to(device)
        positions = None if positions is None else positions.to(device)
        if not (self.cuda_graphs and device.type == "cuda" and not torch.is_grad_enabled()):
            return self._eager(tokens, past, position_ids, positions)
        return self._replay(tokens, past, position_ids, positions)  # pragma: no cover (GPU)

    # --- CUDA graphs (not yet run on a GPU) ---------------------------------------------------
    def _replay(
        self,
        tokens: Tensor,
        past: Past | None,
        position_ids: Tensor | None,
        positions: Tensor | None,
    ) -> Tensor:  # pragma: no cover (GPU only)
        key = (
            None if past is None else tuple(k.data_ptr() for k, _ in past[:1]),
            None if past is None else int(past[0][0].shape[1]),
            tuple(tokens.shape),
            positions is None,
        )
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(tokens, past, position_ids, positions)
            self._graphs[key] = entry
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(key)
        if entry == "eager":
            return self._eager(tokens, past, position_ids, positions)
        graph, static, output = entry
        for buffer, value in zip(static[:3], (tokens, position_ids, positions), strict=True):
            if buffer is not None:
                buffer.copy_(value)
        graph.replay()
        return output.clone()

    def _capture(
        self,
        tokens: Tensor,
        past: Past | None,
        position_ids: Tensor | None,
        positions: Tensor | None,
    ) -> Any:  # pragma: no cover (GPU only)
        static_tokens = tokens.clone()
        static_ids = None if position_ids is None else position_ids.clone()
        static_positions = None if positions is None else positions.clone()

        def forward() -> Tensor:
            return self._eager(static_tokens, past, static_ids, static_positions)

        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    forward()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                output = forward()
        except (RuntimeError, NotImplementedError) as error:
            logger.warning("CUDA graph capture failed (%s); running eagerly", error)
            return "eager"
        # The past stays referenced: the graph reads it from its fixed address.
        static = (static_tokens, static_ids, static_positions, past)
        return graph, static, output


def _as_ids(position_ids: Tensor | None, device: torch.device) -> Tensor:
    if position_ids is None:
        raise UnsupportedModelError("a forward with a past needs its query's position_ids")
    return position_ids.to(device)
