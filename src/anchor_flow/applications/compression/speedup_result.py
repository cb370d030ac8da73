"""Speed-up results and the FLOP-ideal ratio (paper §3.2, Table 3; PAPER.md §5.4): pure.

:class:`SpeedupResult` holds per-group timings of full prompts vs compressed queries (what
:mod:`anchor_flow.applications.compression.speed` measures) with the derived ratios, ``to_frame()``,
``save()``/``load()``; :func:`flop_ideal_ratio` is the attention + MLP multiply-add ratio a
perfect implementation would reach. Deliberately not here: running or timing a model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from anchor_flow.applications.compression.positions import CompressionError
from anchor_flow.results.files import load_arrays, save_arrays

__all__ = ["SpeedupResult", "flop_ideal_ratio"]

SCHEMA = "anchor_flow.speedup/1"
SPEEDUP_ARRAYS = (
    "n_demonstrations", "demo_length", "kept_length", "query_length", "n_contexts",
    "n_queries", "queries_per_build", "full_ms", "compressed_ms", "build_ms", "floor_ms",
    "flop_ideal",
)  # fmt: skip


def flop_ideal_ratio(
    context_length: int | float,
    kept_length: int | float,
    query_length: int | float,
    *,
    d_model: int,
    d_mlp: int | None = None,
) -> float:
    """Attention + MLP multiply-adds of a full prompt over those of its query with the cache.

    Per layer and new token: ``4 d_model²`` (Q, K, V, output projections) plus
    ``2 d_model d_mlp`` (MLP), and ``2 d_model`` per attended key (scores and mixing); the
    full prompt has ``context_length + query_length`` new tokens and no past, the compressed
    query ``query_length`` new tokens after ``kept_length`` cached ones. Layers cancel.

    Example:
        >>> round(flop_ideal_ratio(61 + 48, 48, 13, d_model=1600), 2)  # TREC, GPT2-XL
        9.39

    Args:
        context_length: tokens before the query.
        kept_length: cached positions the query attends to.
        query_length: tokens of the query.
        d_model: residual width.
        d_mlp: MLP width (default ``4 * d_model``, GPT-2's).

    Raises:
        CompressionError: lengths that are negative, a query of no tokens or more kept
            positions than context tokens.
    """
    d_mlp = 4 * d_model if d_mlp is None else d_mlp
    if min(context_length, kept_length) < 0 or query_length <= 0 or kept_length > context_length:
        raise CompressionError(
            f"context_length={context_length}, kept_length={kept_length}, "
            f"query_length={query_length}; expected 0 <= kept <= context and query > 0"
        )
    if d_model < 1 or d_mlp < 1:
        raise CompressionError(f"d_model={d_model}, d_mlp={d_mlp}; expected positive widths")
    full = multiply_adds(context_length + query_length, 0, d_model, d_mlp)
    return full / multiply_adds(query_length, kept_length, d_model, d_mlp)


def multiply_adds(new: int | float, past: int | float, d_model: int, d_mlp: int | None) -> float:
    """One layer's attention + MLP multiply-adds for ``new`` tokens after ``past`` cached."""
    d_mlp = 4 * d_model if d_mlp is None else d_mlp
    linear = (4 * d_model * d_model + 2 * d_model * d_mlp) * new
    return linear + 2 * d_model * (new * past + new * (new + 1) / 2)


@dataclass(frozen=True)
class SpeedupResult:
    """Timings per query of full prompts vs compressed queries, one row per group.

    Example:
        >>> one = lambda v: torch.tensor([v], dtype=torch.float64)
        >>> result = SpeedupResult(("sst2",), torch.tensor([2]), one(34.0), one(16.0),
        ...     one(25.0), torch.tensor([1]), torch.tensor([1]), one(1000.0), one(60.0),
        ...     one(40.0), one(100.0), one(30.0), one(2.2))
        >>> result.speedup.tolist(), result.to_frame()["floor_ratio"].tolist()
        ([1.5], [2.0])

    Attributes:
        groups: a name per row (``"4 demonstrations"``, a task name, ...).
        n_demonstrations: demonstrations per prompt (-1: not known, e.g. raw tokens).
        demo_length: mean tokens before the query (the context).
        kept_length: mean cached (kept) positions.
        query_length: mean query tokens.
        n_contexts: distinct contexts (one cache each).
        n_queries: queries timed.
        queries_per_build: queries one cache build is spread over (amortised speed-up).
        full_ms, compressed_ms, floor_ms: median milliseconds per query of the full prompt,
            the query with its pre-built cache, the query alone.
        build_ms: mean milliseconds to build one context's cache.
        flop_ideal: :func:`flop_ideal_ratio` over the group's queries.
        settings: how it was measured (JSON-safe).
    """

    groups: tuple[str, ...]
    n_demonstrations: Int[Tensor, " group"]
    demo_length: Float[Tensor, " group"]
    kept_length: Float[Tensor, " group"]
    query_length: Float[Tensor, " group"]
    n_contexts: Int[Tensor, " group"]
    n_queries: Int[Tensor, " group"]
    queries_per_build: Float[Tensor, " group"]
    full_ms: Float[Tensor, " group"]
    compressed_ms: Float[Tensor, " group"]
    build_ms: Float[Tensor, " group"]
    floor_ms: Float[Tensor, " group"]
    flop_ideal: Float[Tensor, " group"]
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.groups)
        bad = {k: tuple(getattr(self, k).shape) for k in SPEEDUP_ARRAYS
               if tuple(getattr(self, k).shape) != (n,)}  # fmt: skip
        if bad or n == 0:
            raise CompressionError(
                f"SpeedupResult with {n} groups got shapes {bad}; expected one value per group "
                "(and at least one group)"
            )
        times = torch.stack([self.full_ms, self.compressed_ms, self.floor_ms]).double()
        if not bool(torch.isfinite(times).all()) or not bool((times > 0).all()):
            raise CompressionError("SpeedupResult timings must be positive and finite")
        for name in SPEEDUP_ARRAYS:
            object.__setattr__(self, name, getattr(self, name).detach().cpu())

    @property
    def speedup(self) -> Float[Tensor, " group"]:
        """Full prompt time over compressed query time (the cache build excluded)."""
        return self.full_ms.double() / self.compressed_ms.double()

    @property
    def amortised_speedup(self) -> Float[Tensor, " group"]:
        """Full time over compressed time plus the build spread over ``queries_per_build``."""
        per_query = self.compressed_ms.double() + self.build_ms.double() / self.queries_per_build
        return self.full_ms.double() / per_query

    @property
    def floor_ratio(self) -> Float[Tensor, " group"]:
        """Full time over the query alone: the best speed-up any cache could reach here."""
        return self.full_ms.double() / self.floor_ms.double()

    def to_frame(self) -> pd.DataFrame:
        """One row per group: lengths, timings, the four ratios and speed-up / ideal, / floor."""
        columns = {name: getattr(self, name).numpy() for name in SPEEDUP_ARRAYS}
        frame = pd.DataFrame({"group": list(self.groups), **columns})
        frame["speedup"] = self.speedup.numpy()
        frame["amortised_speedup"] = self.amortised_speedup.numpy()
        frame["floor_ratio"] = self.floor_ratio.numpy()
        frame["of_ideal"] = frame["speedup"] / frame["flop_ideal"]
        frame["of_floor"] = frame["speedup"] / frame["floor_ratio"]
        return frame

    def summary(self) -> dict[str, Any]:
        """JSON-safe: schema, settings and :meth:`to_frame`'s rows."""
        rows = self.to_frame().to_dict(orient="records")
        plain = [{k: v.item() if isinstance(v, np.generic) else v for k, v in row.items()}
                 for row in rows]  # fmt: skip
        return {"schema": SCHEMA, "settings": self.settings, "rows": plain}

    @classmethod
    def concat(cls, results: Sequence[SpeedupResult]) -> SpeedupResult:
        """Rows of several results (e.g. one per task); settings of the first."""
        if not results:
            raise CompressionError("concat needs at least one SpeedupResult; got none")
        arrays = {name: torch.cat([getattr(r, name) for r in results]) for name in SPEEDUP_ARRAYS}
        groups = tuple(g for r in results for g in r.groups)
        return cls(groups=groups, settings=dict(results[0].settings), **arrays)

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write ``speedup.npz`` and ``speedup_meta.json`` into ``directory``."""
        meta = {"schema": SCHEMA, "settings": self.settings, "groups": list(self.groups)}
        arrays = {name: getattr(self, name).numpy() for name in SPEEDUP_ARRAYS}
        save_arrays(Path(directory), "speedup", arrays, meta)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> SpeedupResult:
        """Read a result written by :meth:`save`."""
        arrays, meta = load_arrays(
            Path(directory), "speedup", schema=SCHEMA, names=SPEEDUP_ARRAYS,
            what="a speed-up result",
        )  # fmt: skip
        return cls(groups=tuple(meta["groups"]), settings=meta["settings"], **arrays)
