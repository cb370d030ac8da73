"""Results pooled over runs (seeds): the run index, ``concat`` and means over runs.

The paper repeats every experiment over seeds (PAPER.md §0.4). Each result class of an
experiment (isolation, deep layers, re-weighting, diagnosis, compression) stores one row per
prompt with ``run``, the index into ``run_names`` of the run (seed) the prompt belongs to;
:class:`PooledResult` is what those classes share: the run index check, ``n_runs``, pooling
results of several runs with ``concat``, the run names in the saved files
(:class:`~anchor_flow.results.files.StoredResult`) and the means over runs
(:func:`anchor_flow.results.stats.run_means`).

Deliberately not here: what a result measures (each experiment's module), statistics
(:mod:`anchor_flow.results.stats`), file formats (:mod:`anchor_flow.results.files`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import Tensor

from anchor_flow.errors import AnchorFlowError
from anchor_flow.results.files import StoredResult
from anchor_flow.results.stats import RunMeans, run_means

__all__ = ["PooledResult", "run_folders"]


def run_folders(folder: Any, meta: str) -> list[Any]:
    """The run folders under ``folder`` holding ``meta`` (``folder`` itself first when it holds
    one), in seed order: ``seed-42`` before ``seed-100``; names without a number last, by name.

    Example:
        >>> import pathlib, tempfile
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for name in ("seed-100", "seed-42"):
        ...     (root / name).mkdir(); (root / name / "m.json").write_text("{}")
        2
        2
        >>> [p.name for p in run_folders(root, "m.json")]
        ['seed-42', 'seed-100']
    """

    def order(path: Any) -> tuple[int, int, str]:
        number = re.search(r"(\d+)$", path.name)
        return (0, int(number.group(1)), path.name) if number else (1, 0, path.name)

    own = [folder] if (folder / meta).is_file() else []
    return own + sorted((m.parent for m in folder.glob(f"*/{meta}")), key=order)


PooledT = TypeVar("PooledT", bound="PooledResult")


class PooledResult(StoredResult):
    """Mixin of frozen result dataclasses with per-prompt ``run`` indices into ``run_names``.

    Besides :class:`~anchor_flow.results.files.StoredResult`'s attributes a subclass sets
    ``_ERROR`` (the exception it raises) and ``_ON_AXIS_1`` (the tensor fields whose prompt
    or run axis is 1, not 0) and ``_PER_RUN`` (those with a row per run, which :meth:`join`
    cannot join), and overrides :meth:`_check_concat` to refuse results that
    cannot be pooled. Its non-tensor fields other than ``run_names`` and ``settings`` (e.g.
    the conditions) are taken from the first result when pooling.
    """

    _ERROR: ClassVar[type[AnchorFlowError]] = AnchorFlowError
    _ON_AXIS_1: ClassVar[tuple[str, ...]] = ()
    _PER_RUN: ClassVar[tuple[str, ...]] = ()  # arrays with a row per run, not per prompt
    run: Tensor
    run_names: tuple[str, ...]

    @property
    def n_runs(self) -> int:
        return len(self.run_names)

    def _check_run_indices(self) -> None:
        if not 0 <= int(self.run.min()) <= int(self.run.max()) < len(self.run_names):
            raise self._ERROR(f"run indices must index run_names {self.run_names}")

    def _run_means(self, values: Tensor, level: float) -> RunMeans:
        """:func:`~anchor_flow.results.stats.run_means` of ``[..., prompt]`` values over these
        runs."""
        return run_means(values, self.run, self.n_runs, level=level)

    def _meta(self) -> dict[str, Any]:
        return {"run_names": list(self.run_names)}

    @classmethod
    def _fields_from_meta(cls, meta: Mapping[str, Any]) -> dict[str, Any]:
        return {"run_names": tuple(meta["run_names"])}

    @classmethod
    def _check_concat(cls, results: Sequence[Any], names: tuple[str, ...]) -> None:
        """Raise unless ``results`` (with these run names, in order) can be pooled."""
        cls._check_unique_run_names(names)

    @classmethod
    def _check_unique_run_names(cls, names: tuple[str, ...]) -> None:
        if len(set(names)) != len(names):
            raise cls._ERROR(f"run names must be unique across results; got {names}")

    @classmethod
    def concat(cls: type[PooledT], results: Sequence[PooledT]) -> PooledT:
        """Pool runs (e.g. seeds) of compatible results; run names must differ.

        Compatible: the same conditions (isolation), methods and trial counts (compression),
        layers and classes (deep layers, diagnosis) or beta shapes (re-weighting).
        """
        if not results:
            raise cls._ERROR(f"concat needs at least one {cls.__name__}; got none")
        names = tuple(name for r in results for name in r.run_names)
        cls._check_concat(results, names)
        offsets = np.cumsum([0] + [r.n_runs for r in results])[:-1].tolist()
        first = results[0]
        pooled = {
            name: torch.cat([getattr(r, name) for r in results], dim=int(name in cls._ON_AXIS_1))
            for name in cls._ARRAYS
            if name != "run"
        }
        kept = {
            f.name: getattr(first, f.name)
            for f in dataclasses.fields(first)  # type: ignore[arg-type]
            if f.name not in (*cls._ARRAYS, "run_names", "settings")
        }
        build: Callable[..., PooledT] = cls
        return build(
            **kept,
            **pooled,
            run=torch.cat([r.run + o for r, o in zip(results, offsets, strict=True)]),
            run_names=names,
            settings=dict(first.settings),
        )

    @classmethod
    def join(cls: type[PooledT], parts: Sequence[PooledT]) -> PooledT:
        """One result from the results of consecutive parts of the same runs' prompts.

        What a data-parallel run (:mod:`anchor_flow.run.distributed`) does with its ranks'
        parts: every per-prompt array is concatenated in order; the run names, the other
        fields and the settings are the first part's.

        Raises:
            AnchorFlowError: no parts, parts of different runs, or a class with per-run arrays.
        """
        if not parts or any(p.run_names != parts[0].run_names for p in parts):
            raise cls._ERROR(
                f"join needs parts of the same runs; got {[p.run_names for p in parts]}"
            )
        if cls._PER_RUN:
            raise cls._ERROR(f"{cls.__name__} has per-run arrays {cls._PER_RUN}; join them first")
        if len(parts) == 1:
            return parts[0]
        arrays = {
            name: torch.cat([getattr(p, name) for p in parts], dim=int(name in cls._ON_AXIS_1))
            for name in cls._ARRAYS
        }
        return dataclasses.replace(parts[0], **arrays)  # type: ignore[type-var]
