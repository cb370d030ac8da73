"""Speed of Hidden_anchor compression (paper §3.2, Table 3; PAPER.md §5.4).

Per query, as the paper's ``compress_time.py`` (wall clock, ``torch.no_grad``, logits at
every position, batch 1 by default):

* ``full_ms``: the whole prompt (demonstrations + query);
* ``compressed_ms``: the query against its pre-built anchor cache; the one-time cache
  build is **excluded**, as in the paper;
* ``build_ms``: building one context's cache (its forward and the pruning, as
  :func:`~anchor_flow.applications.compression.cache.compress_context`); ``amortised_speedup``
  spreads it over ``queries_per_build`` queries (the queries measured per context, or
  ``amortise_over``);
* ``floor_ms``: the query tokens alone, no context at all: the fastest any cache could make
  a query on this hardware. ``floor_ratio = full_ms / floor_ms`` bounds the speed-up from
  above; at small batch-1 sizes per-layer overheads, not FLOPs, dominate both.
* ``flop_ideal`` (:func:`~anchor_flow.applications.compression.speedup_result.flop_ideal_ratio`):
  attention + MLP multiply-adds of the full prompt over those of the query with its cache
  (embedding and unembedding excluded).

The result class and the FLOP arithmetic are pure and live in
:mod:`anchor_flow.applications.compression.speedup_result`.

Prompts sharing their demonstrations (scheme "fixed") share one cache and their queries are
batched (``batch_size``) against it; prompts with their own demonstrations each get their
own cache and run at batch 1 on both sides (Δ the paper timed scheme "fixed" only). Rows
are grouped by number of demonstrations: pass prompts with several demonstration lengths
(e.g. ``shots_per_class`` 1, 2, 4, 8) for a speed-up-vs-length curve.
``demo_length`` is the number of tokens before the query (Δ Table 3 gives no unit).
The three timings of a repeat run back to back, so drifting machine load hits all alike.
``engine="fast"`` runs all three hook-free (:class:`~anchor_flow.models.fast_forward.FastForward`,
the same logits; on CUDA with ``cuda_graphs=True`` replayed from CUDA graphs, not yet run on
a GPU): full prompts and queries then pay the same, smaller, per-module overhead.
Plotting: :func:`anchor_flow.report.figures.compression.plot_speedup`. Not here: the paper's
Table 3 shapes (``benchmarks/compression.py``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from anchor_flow.applications.compression.cache import (
    CompressedContext,
    PositionPolicy,
    compress_context,
    compressed_logits,
)
from anchor_flow.applications.compression.engines import CompressionError
from anchor_flow.applications.compression.positions import (
    anchor_positions,
    context_end,
    context_groups,
    query_batch,
)
from anchor_flow.applications.compression.speedup_result import (
    SPEEDUP_ARRAYS,
    SpeedupResult,
    multiply_adds,
)
from anchor_flow.icl.evaluation import prompt_batch
from anchor_flow.icl.prompts import ICLPrompt
from anchor_flow.icl.roles import PromptBatch
from anchor_flow.models.fast_forward import FastForward
from anchor_flow.models.guards import frozen
from anchor_flow.models.tl_adapter import ModelAdapter, adapt

__all__ = ["SPEED_ENGINES", "measure_speedup", "measure_token_speedup"]

SPEED_ENGINES: tuple[str, ...] = ("cache", "fast")


@dataclass(frozen=True)
class _Cell:
    """One context with its queries, chunked into forward passes (tokens on the device)."""

    context: Tensor
    kept: Tensor
    full: list[Tensor]
    queries: list[Tensor]
    query_lengths: list[int]


def _fast(adapter: ModelAdapter, engine: str, cuda_graphs: bool) -> FastForward | None:
    if engine not in SPEED_ENGINES:
        raise CompressionError(f"engine={engine!r}; expected one of {SPEED_ENGINES}")
    if cuda_graphs and engine != "fast":
        raise CompressionError("cuda_graphs=True needs engine='fast'")
    return FastForward(adapter, cuda_graphs=cuda_graphs) if engine == "fast" else None


def _check_counts(batch_size: int, repeats: int, warmup: int, amortise_over: int | None) -> None:
    checks = {"batch_size": (batch_size, 1), "repeats": (repeats, 1), "warmup": (warmup, 0),
              "amortise_over": (1 if amortise_over is None else amortise_over, 1)}  # fmt: skip
    for name, (value, low) in checks.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise CompressionError(f"{name}={value!r}; expected an integer >= {low}")


def _measure(
    adapter: ModelAdapter,
    name: str,
    n_demonstrations: int,
    cells: list[_Cell],
    *,
    repeats: int,
    warmup: int,
    amortise_over: int | None,
    position_policy: str,
    d_mlp: int | None,
    fast: FastForward | None = None,
) -> dict[str, Any]:
    """Time one group of cells; a row of :class:`SpeedupResult` as a dict."""
    device = cells[0].context.device

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def clock(fn: Callable[[], Any]) -> float:
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    def build(cell: _Cell) -> CompressedContext:
        # The context run and the pruning; compress_context's per-call checks (eval mode,
        # device lookup: ~0.1 s of Python on a 48-layer bridge) would swamp small models.
        past = adapter.context_key_values(cell.context[None])
        return CompressedContext.from_past(past, cell.kept, position_policy)

    for _ in range(warmup):
        build(cells[0])
    build_s = [statistics.median([clock(partial(build, cell)) for _ in range(repeats)])
               for cell in cells]  # fmt: skip
    caches = [build(cell) for cell in cells]

    def run(forward: Callable[[Any, Tensor], Any], what: str) -> None:
        for cell, cache in zip(cells, caches, strict=True):
            for tokens in getattr(cell, what):
                forward(cache, tokens)  # the output is dropped at once

    plain = adapter.forward_logits if fast is None else fast.logits
    loops = {
        "full": partial(run, lambda _, tokens: plain(tokens), "full"),
        "compressed": partial(run, partial(compressed_logits, adapter, fast=fast), "queries"),
        "floor": partial(run, lambda _, tokens: plain(tokens), "queries"),
    }
    for _ in range(warmup):
        for loop in loops.values():
            loop()
    seconds: dict[str, list[float]] = {key: [] for key in loops}
    for _ in range(repeats):
        for key, loop in loops.items():
            seconds[key].append(clock(loop))
    lengths = [(len(c.context), len(c.kept), q) for c in cells for q in c.query_lengths]
    n_queries, width = len(lengths), adapter.d_model
    # The ratio of summed operations: per-query times are means over the same queries.
    full_ops = sum(multiply_adds(n + q, 0, width, d_mlp) for n, _, q in lengths)
    compressed_ops = sum(multiply_adds(q, k, width, d_mlp) for _, k, q in lengths)
    per_query = {
        key: 1e3 * statistics.median(values) / n_queries for key, values in seconds.items()
    }
    return {
        "group": name, "n_demonstrations": n_demonstrations,
        "demo_length": float(np.mean([n for n, _, _ in lengths])),
        "kept_length": float(np.mean([k for _, k, _ in lengths])),
        "query_length": float(np.mean([q for _, _, q in lengths])),
        "n_contexts": len(cells), "n_queries": n_queries,
        "queries_per_build": float(amortise_over or n_queries / len(cells)),
        "full_ms": per_query["full"], "compressed_ms": per_query["compressed"],
        "build_ms": 1e3 * float(np.mean(build_s)), "floor_ms": per_query["floor"],
        "flop_ideal": full_ops / compressed_ops,
    }  # fmt: skip


def _result(rows: list[dict[str, Any]], settings: dict[str, Any]) -> SpeedupResult:
    integers = ("n_demonstrations", "n_contexts", "n_queries")
    arrays = {name: torch.tensor([row[name] for row in rows],
                                 dtype=torch.long if name in integers else torch.float64)
              for name in SPEEDUP_ARRAYS}  # fmt: skip
    return SpeedupResult(groups=tuple(row["group"] for row in rows), settings=settings, **arrays)


def _settings(adapter: ModelAdapter, **extra: Any) -> dict[str, Any]:
    return {"model": adapter.name, "tl_class": adapter.kind, "d_model": adapter.d_model,
            "n_layers": adapter.n_layers, "torch_threads": torch.get_num_threads(),
            **extra}  # fmt: skip


def measure_speedup(
    model: Any,
    prompts: Sequence[ICLPrompt] | PromptBatch,
    *,
    batch_size: int = 1,
    repeats: int = 3,
    warmup: int = 1,
    amortise_over: int | None = None,
    keep_bos: bool = True,
    position_policy: PositionPolicy = "original",
    label_token_policy: Literal["single", "first", "all"] = "single",
    d_mlp: int | None = None,
    engine: Literal["cache", "fast"] = "cache",
    cuda_graphs: bool = False,
) -> SpeedupResult:
    """Per-query time of full prompts vs Hidden_anchor queries, by number of demonstrations.

    Example:
        >>> from anchor_flow import load_model, toy_prompts
        >>> prompts = toy_prompts(2, shots_per_class=1) + toy_prompts(2, shots_per_class=2)
        >>> result = measure_speedup(load_model("toy-gpt2"), prompts, repeats=1)
        >>> result.groups
        ('2 demonstrations', '4 demonstrations')

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge``.
        prompts: ICL prompts (or a PromptBatch); any mix of demonstration counts.
        batch_size: queries per forward among those sharing a context (paper: 1).
        repeats: timed repetitions (the median counts).
        warmup: untimed repetitions first.
        amortise_over: queries one cache build is spread over (default: the queries that
            share the context here; the paper's test sets had 1000).
        keep_bos, position_policy: see :mod:`anchor_flow.applications.compression.engines`.
        label_token_policy: see :func:`anchor_flow.icl.prompts.tokenize_prompts`.
        d_mlp: MLP width for :func:`flop_ideal_ratio` (default ``4 * d_model``).
        engine: ``"cache"`` (the TL model, as the ``cache`` compression engine) or ``"fast"``
            (all three timings hook-free, module docstring).
        cuda_graphs: with ``engine="fast"`` on CUDA, replay CUDA graphs (not yet run on a GPU).

    Raises:
        CompressionError: no prompts, a count below its minimum (``batch_size`` and
            ``repeats`` >= 1, ``warmup`` >= 0, ``amortise_over`` >= 1), an unknown engine, or
            ``cuda_graphs`` without ``engine="fast"``.
    """
    if len(prompts) == 0:
        raise CompressionError("measure_speedup got no prompts; expected at least one")
    _check_counts(batch_size, repeats, warmup, amortise_over)
    adapter = adapt(model)
    with frozen(adapter), torch.no_grad():
        fast = _fast(adapter, engine, cuda_graphs)
    batch = prompt_batch(adapter, prompts, label_token_policy=label_token_policy)
    device = adapter.device
    by_shots: dict[int, list[_Cell]] = {}
    for end, rows in context_groups(batch):
        chunks = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
        cell = _Cell(
            context=batch.tokens[rows[0], :end].to(device),
            kept=anchor_positions(batch, rows[0], keep_bos=keep_bos),
            full=[batch.select(c).tokens.to(device) for c in chunks],
            queries=[query_batch(batch, c, end).tokens.to(device) for c in chunks],
            query_lengths=[int(batch.lengths[r]) - end for r in rows],
        )
        shots = int(batch.demo_index[rows[0], context_end(batch, rows[0])])
        by_shots.setdefault(shots, []).append(cell)
    with frozen(adapter), torch.no_grad():
        rows_out = [
            _measure(adapter, f"{shots} demonstrations", shots, cells, repeats=repeats,
                     warmup=warmup, amortise_over=amortise_over,
                     position_policy=position_policy, d_mlp=d_mlp, fast=fast)
            for shots, cells in sorted(by_shots.items())
        ]  # fmt: skip
    settings = _settings(adapter, batch_size=batch_size, repeats=repeats, warmup=warmup,
                         amortise_over=amortise_over, position_policy=position_policy,
                         keep_bos=keep_bos, device=str(device), engine=engine,
                         cuda_graphs=cuda_graphs, prepend_bos=batch.has_bos)  # fmt: skip
    return _result(rows_out, settings)


def measure_token_speedup(
    model: Any,
    context_tokens: Int[Tensor, " context_pos"],
    keep: Sequence[int] | Int[Tensor, " kept"],
    query_tokens: Int[Tensor, "query query_pos"],
    *,
    name: str = "tokens",
    n_demonstrations: int = -1,
    batch_size: int = 1,
    repeats: int = 3,
    warmup: int = 1,
    amortise_over: int | None = None,
    position_policy: PositionPolicy = "original",
    d_mlp: int | None = None,
    engine: Literal["cache", "fast"] = "cache",
    cuda_graphs: bool = False,
) -> SpeedupResult:
    """:func:`measure_speedup` for raw tokens: one context, its kept positions and queries.

    For models without a tokenizer, or synthetic lengths (``benchmarks/compression.py``
    times the paper's Table 3 lengths this way). Full prompts are ``context + query``.

    Example:
        >>> from anchor_flow import load_model
        >>> result = measure_token_speedup(load_model("toy-gpt2"), torch.arange(1, 30),
        ...                                [0, 9, 19], torch.ones(2, 5, dtype=torch.long))
        >>> result.to_frame()[["demo_length", "kept_length", "query_length"]].values.tolist()
        [[29.0, 3.0, 5.0]]

    Raises:
        CompressionError: no query tokens, bad counts, a bad keep set or engine.
    """
    if query_tokens.ndim != 2 or query_tokens.numel() == 0:
        raise CompressionError(
            f"query_tokens has shape {tuple(query_tokens.shape)}; expected [query, pos] with "
            "at least one query token"
        )
    _check_counts(batch_size, repeats, warmup, amortise_over)
    adapter = adapt(model)
    with frozen(adapter), torch.no_grad():
        fast = _fast(adapter, engine, cuda_graphs)
    device = adapter.device
    context = context_tokens.flatten().to(device)
    queries = query_tokens.to(device)
    chunks = [queries[i : i + batch_size] for i in range(0, len(queries), batch_size)]
    checked = compress_context(adapter, context, keep, position_policy=position_policy)
    cell = _Cell(
        context=context, kept=checked.kept_positions,
        full=[torch.cat([context.expand(len(q), -1), q], dim=1) for q in chunks],
        queries=chunks, query_lengths=[int(queries.shape[1])] * len(queries),
    )  # fmt: skip
    with frozen(adapter), torch.no_grad():
        row = _measure(adapter, name, n_demonstrations, [cell], repeats=repeats, warmup=warmup,
                       amortise_over=amortise_over, position_policy=position_policy,
                       d_mlp=d_mlp, fast=fast)  # fmt: skip
    settings = _settings(adapter, batch_size=batch_size, repeats=repeats, warmup=warmup,
                         amortise_over=amortise_over, position_policy=position_policy,
                         device=str(device), engine=engine, cuda_graphs=cuda_graphs)  # fmt: skip
    return _result([row], settings)
