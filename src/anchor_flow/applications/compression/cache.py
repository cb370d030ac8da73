"""The pruned key/value cache of a compressed context (paper §3.2; PAPER.md §5.1).

:func:`compress_context` runs a context once and keeps every layer's keys and values only at
the given positions (:class:`CompressedContext`); :func:`compressed_logits` answers batched
queries against it. Which positions to keep (the anchors, a random control) is
:mod:`anchor_flow.applications.compression.positions`; running compressed ICL over prompts, with
this cache or with the equivalent attention mask, is
:mod:`anchor_flow.applications.compression.engines`.

Position ids of the query (Δ PAPER.md §5.1, the official code is inconsistent), explicit as
``position_policy``:

* ``"original"`` (default): the query continues from the full context's length, as if the
  dropped positions were still there (official ``compress.py`` for GPT-J). With it the
  compressed run equals a full run in which the query is blocked from every dropped key
  (the oracle test).
* ``"compact"``: the query continues after the kept positions (TL's own cache offset).
* ``"restart"``: the query starts at position 0 (official ``compress.py`` for GPT2-XL).

The cached keys always keep the position information of their original positions.

Deliberately not here: choosing positions, prompts and batching, metrics, plotting.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from anchor_flow.applications.compression.positions import CompressionError
from anchor_flow.models.fast_forward import FastForward
from anchor_flow.models.guards import frozen
from anchor_flow.models.tl_adapter import ModelAdapter, adapt

__all__ = [
    "POSITION_POLICIES",
    "CompressedContext",
    "PositionPolicy",
    "compress_context",
    "compressed_final_logits",
    "compressed_logits",
]

PositionPolicy = Literal["original", "compact", "restart"]
POSITION_POLICIES: tuple[str, ...] = ("original", "compact", "restart")


@dataclass(frozen=True, eq=False)
class CompressedContext:
    """Every layer's keys/values of a context, kept only at ``kept_positions``.

    Build with :func:`compress_context`; answer queries with :func:`compressed_logits`.

    Attributes:
        key_values: per layer ``(keys, values)`` ``[1, kept, kv_heads, d_head]`` in the model's
            cache convention
            (:meth:`~anchor_flow.models.tl_adapter.ModelAdapter.context_key_values`).
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

    @classmethod
    def from_past(
        cls,
        past: Sequence[tuple[Tensor, Tensor]],
        kept_positions: Int[Tensor, " kept"],
        position_policy: str = "original",
    ) -> CompressedContext:
        """Prune a whole context's keys/values (``ModelAdapter.context_key_values``) to
        ``kept_positions``; one context run serves many keep sets (Hidden_random-top).

        Example:
            >>> past = [(torch.randn(1, 5, 2, 4), torch.randn(1, 5, 2, 4))]
            >>> CompressedContext.from_past(past, torch.tensor([0, 3])).key_values[0][0].shape
            torch.Size([1, 2, 2, 4])
        """
        # Each layer on its own device: a split model keeps every layer's cache with the layer.
        on = {k.device: kept_positions.to(k.device) for k, _ in past}
        kept = tuple((k[:, on[k.device]], v[:, on[k.device]]) for k, v in past)  # copies
        return cls(kept, kept_positions.cpu(), int(past[0][0].shape[1]), position_policy)

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
    return CompressedContext.from_past(past, index, position_policy)


def compressed_logits(
    model: Any,
    context: CompressedContext,
    query_tokens: Int[Tensor, "batch pos"],
    *,
    extra_hooks: Sequence[tuple[Any, Callable[..., Any]]] = (),
    fast: FastForward | None = None,
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits of right-padded queries that attend to the compressed context and themselves.

    Example:
        >>> context = compress_context(model, batch.tokens[0, :end], kept)  # doctest: +SKIP
        >>> logits = compressed_logits(model, context, query.tokens)  # doctest: +SKIP

    Args:
        fast: run the query through this hook-free forward
            (:class:`~anchor_flow.models.fast_forward.FastForward`, same logits) instead of the
            TL model; then no ``extra_hooks``.

    Raises:
        CompressionError: the query's last position id reaches the model's context length,
            or ``extra_hooks`` together with ``fast``.
    """
    adapter, device, positions, scope = _query_run(model, context, query_tokens, extra_hooks, fast)
    if fast is not None:
        return fast.logits(query_tokens.to(device), context.key_values, positions)
    with scope:
        return adapter.forward_logits_with_past(
            query_tokens.to(device), context.key_values, positions
        )


def compressed_final_logits(
    model: Any,
    context: CompressedContext,
    query_tokens: Int[Tensor, "batch pos"],
    target_position: Int[Tensor, " batch"],
    *,
    extra_hooks: Sequence[tuple[Any, Callable[..., Any]]] = (),
    fast: FastForward | None = None,
) -> Float[Tensor, "batch d_vocab"]:
    """:func:`compressed_logits` at ``target_position[b]`` of each query only: the final norm
    and the unembedding run on one vector per query (what ICL reads), not on every position.

    Example:
        >>> final = compressed_final_logits(model, context, query.tokens,
        ...                                 query.target_position)  # doctest: +SKIP

    Raises:
        CompressionError: as :func:`compressed_logits`.
    """
    adapter, device, positions, scope = _query_run(model, context, query_tokens, extra_hooks, fast)
    if fast is not None:
        return fast.final_logits(
            query_tokens.to(device), context.key_values, positions, target_position.to(device)
        )
    with scope:
        return adapter.final_logits_with_past(
            query_tokens.to(device), context.key_values, positions, target_position.to(device)
        )


def _query_run(
    model: Any,
    context: CompressedContext,
    query_tokens: Tensor,
    extra_hooks: Sequence[tuple[Any, Callable[..., Any]]],
    fast: FastForward | None = None,
) -> tuple[ModelAdapter, torch.device, Tensor, contextlib.AbstractContextManager[Any]]:
    """The adapter, the cache's device, the query's position ids and the hook scope."""
    adapter = adapt(model)
    if fast is not None and extra_hooks:
        raise CompressionError(
            "extra_hooks cannot fire in a hook-free forward (fast=...); run the query with "
            "fast=None (engine='cache')"
        )
    if not context.key_values:
        raise CompressionError("the context holds no keys/values; build it with compress_context")
    positions = context.query_position_ids(int(query_tokens.shape[1]))
    if int(positions[-1]) >= adapter.n_ctx:
        raise CompressionError(
            f"a query of {query_tokens.shape[1]} tokens at positions {int(positions[0])}.."
            f"{int(positions[-1])} (position_policy={context.position_policy!r}) is longer than "
            f"the {adapter.n_ctx - int(positions[0])} positions left of the model's context "
            f"length {adapter.n_ctx}; use shorter queries or position_policy='compact'"
        )
    # The cache's device, not adapter.device (which walks every module: ~50 ms per call on a
    # 48-layer bridge); no empty hook context either (~10 ms): at batch 1 both dominate.
    device = context.key_values[0][0].device
    scope = adapter.hooks(fwd_hooks=extra_hooks) if extra_hooks else contextlib.nullcontext()
    return adapter, device, positions, scope
