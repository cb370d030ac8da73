"""The result of error diagnosis (paper §3.3, Eq. 11, App. K): :class:`DiagnosisResult`.

Recorded target queries, per-class anchor keys and label probabilities of one or more runs,
and what follows from them: the predicted confusion (Eq. 11), the real confusion (App. K),
their Spearman correlation and its sensitivity to the layer and ``M``. Recording them is
:func:`anchor_flow.applications.diagnosis.distances.run_diagnosis`'s job; the maths is in
:mod:`anchor_flow.applications.diagnosis.confusion`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from anchor_flow.applications.diagnosis.confusion import (
    DiagnosisError,
    anchor_features,
    off_diagonal,
    predicted_confusion,
    query_pca,
    real_confusion,
)
from anchor_flow.results.runs import PooledResult
from anchor_flow.results.stats import bootstrap_interval, spearman

__all__ = ["SCHEMA", "DiagnosisResult"]

SCHEMA = "anchor_flow.diagnosis/1"


@dataclass(frozen=True)
class DiagnosisResult(PooledResult):
    """Target queries, per-class anchor keys and label probabilities of one or more runs.

    Example:
        >>> result = run_diagnosis(load_model("planted-anchor"), prompts)  # doctest: +SKIP
        >>> result.correlation(), result.predicted_confusion().shape  # doctest: +SKIP

    Attributes:
        queries: ``[prompt, layer, d]`` the target's query (``d = n_heads * d_head``).
        keys: ``[run, layer, class, d]`` mean anchor key of each class (key heads repeated).
        label_probs: ``[prompt, class]`` the label-restricted softmax (vanilla ICL).
        gold: ``[prompt]`` query class, -1 when unknown.
        run: ``[prompt]`` index into ``run_names``.
        run_names: e.g. ``"seed-42"``.
        layers: the model layers recorded, in the order of the ``layer`` axes.
        class_names: one name per class, for plots.
        settings: how the result was computed; ``"layer"`` and ``"n_components"`` are the
            defaults of the methods below.
    """

    queries: Float[Tensor, "prompt layer d"]
    keys: Float[Tensor, "run layer n_classes d"]
    label_probs: Float[Tensor, "prompt n_classes"]
    gold: Int[Tensor, " prompt"]
    run: Int[Tensor, " prompt"]
    run_names: tuple[str, ...]
    layers: tuple[int, ...]
    class_names: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)

    _STEM, _SCHEMA, _WHAT = "diagnosis", SCHEMA, "a diagnosis result"
    _ARRAYS = ("queries", "keys", "label_probs", "gold", "run")
    _ERROR = DiagnosisError
    _PER_RUN = ("keys",)

    def __post_init__(self) -> None:
        n, r, c = self.queries.shape[0], len(self.run_names), self.label_probs.shape[-1]
        want = {
            "queries": (n, len(self.layers), self.queries.shape[-1]),
            "keys": (r, len(self.layers), c, self.queries.shape[-1]),
            "label_probs": (n, c),
            "gold": (n,),
            "run": (n,),
        }
        bad = {
            k: tuple(getattr(self, k).shape)
            for k, s in want.items()
            if tuple(getattr(self, k).shape) != s
        }
        if bad or n == 0 or len(self.class_names) != c or self.queries.ndim != 3:
            raise DiagnosisError(
                f"DiagnosisResult got shapes {bad} with {len(self.class_names)} class names; "
                f"expected {want} and one name per class"
            )
        self._check_run_indices()
        self._detach_arrays()

    def _layer_index(self, layer: int | None) -> int:
        layer = int(self.settings.get("layer", self.layers[-1])) if layer is None else layer
        if layer not in self.layers:
            raise DiagnosisError(f"layer {layer} was not recorded; recorded layers: {self.layers}")
        return self.layers.index(layer)

    def predicted_confusion(
        self, layer: int | None = None, n_components: int | None = None, run: int = 0
    ) -> Float[Tensor, "n_classes n_classes"]:
        """Eq. 11 at ``layer`` with ``n_components`` (defaults: the run's settings)."""
        index = self._layer_index(layer)
        m = int(self.settings.get("n_components", 10)) if n_components is None else n_components
        pca = query_pca(self.queries[self.run == run, index], m)
        return predicted_confusion(anchor_features(self.keys[run, index], pca))

    def real_confusion(self, run: int = 0) -> Float[Tensor, "n_classes n_classes"]:
        """App. K on the prompts of ``run`` with a known label."""
        keep = (self.run == run) & (self.gold >= 0)
        return real_confusion(self.label_probs[keep], self.gold[keep])

    def correlation(
        self, layer: int | None = None, n_components: int | None = None, run: int = 0
    ) -> float:
        """Spearman correlation of predicted and real confusion over the class pairs (NaN if
        fewer than 3 pairs have a real confusion, or either side is constant)."""
        index = self._layer_index(layer)
        m = int(self.settings.get("n_components", 10)) if n_components is None else n_components
        query_pca(self.queries[self.run == run, index], m)  # a bad M raises here, not below
        try:
            predicted = off_diagonal(self.predicted_confusion(layer, n_components, run))
        except DiagnosisError:  # identical anchor features (e.g. a layer blind to labels)
            return math.nan
        real = off_diagonal(self.real_confusion(run))
        keep = torch.isfinite(real)
        return spearman(predicted[keep], real[keep]) if int(keep.sum()) >= 3 else math.nan

    def sensitivity_frame(self, n_components: Sequence[int] = (2, 5, 10, 20)) -> pd.DataFrame:
        """Correlation for every recorded layer and every feasible ``M``, per run (long form)."""
        rows = []
        for run, name in enumerate(self.run_names):
            limit = min(int((self.run == run).sum()), self.queries.shape[-1])
            for layer in self.layers:
                for m in (m for m in n_components if m <= limit):
                    rows.append(
                        {
                            "run": name,
                            "layer": layer,
                            "n_components": m,
                            "spearman": self.correlation(layer, m, run),
                        }
                    )
        return pd.DataFrame(rows, columns=["run", "layer", "n_components", "spearman"])

    def to_frame(self) -> pd.DataFrame:
        """One row per (run, class pair): predicted and real confusion at the default layer/M."""
        rows = []
        for run, name in enumerate(self.run_names):
            predicted, real = self.predicted_confusion(run=run), self.real_confusion(run)
            for a, b in torch.triu_indices(len(self.class_names), len(self.class_names), 1).T:
                rows.append(
                    {
                        "run": name,
                        "class_a": self.class_names[a],
                        "class_b": self.class_names[b],
                        "predicted": float(predicted[a, b]),
                        "real": float(real[a, b]),
                    }
                )
        return pd.DataFrame(rows)

    def summary(self, *, level: float = 0.95) -> dict[str, Any]:
        """JSON-safe summary (what ``diagnosis.json`` holds): correlations, matrices, CIs."""
        values = torch.tensor(
            [self.correlation(run=r) for r in range(self.n_runs)], dtype=torch.float64
        )
        finite = values[torch.isfinite(values)]
        low, high = (
            bootstrap_interval(finite[:, None], level=level)
            if len(finite)
            else (torch.tensor([math.nan]), torch.tensor([math.nan]))
        )

        def plain(x: Tensor) -> Any:
            return [[None if math.isnan(v) else round(v, 4) for v in row] for row in x.tolist()]

        return {
            "schema": SCHEMA,
            "settings": self.settings,
            "runs": list(self.run_names),
            "class_names": list(self.class_names),
            "spearman": {
                "per_run": [None if math.isnan(v) else v for v in values.tolist()],
                "mean": float(finite.mean()) if len(finite) else None,
                "ci_low": None if math.isnan(float(low[0])) else float(low[0]),
                "ci_high": None if math.isnan(float(high[0])) else float(high[0]),
                "level": level,
            },
            "predicted_confusion": plain(self.predicted_confusion()),
            "real_confusion": plain(self.real_confusion()),
            "sensitivity": [
                {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
                for row in self.sensitivity_frame().to_dict(orient="records")
            ],
        }

    @classmethod
    def _check_concat(cls, results: Sequence[DiagnosisResult], names: tuple[str, ...]) -> None:
        first = results[0]
        same = all(r.layers == first.layers and r.class_names == first.class_names for r in results)
        if not same or len(set(names)) != len(names):
            raise DiagnosisError(
                f"cannot concat runs {names}: expected unique names, same layers and classes"
            )

    def _meta(self) -> dict[str, Any]:
        return {**super()._meta(), "layers": list(self.layers),
                "class_names": list(self.class_names)}  # fmt: skip

    @classmethod
    def _fields_from_meta(cls, meta: Mapping[str, Any]) -> dict[str, Any]:
        return {**super()._fields_from_meta(meta), "layers": tuple(meta["layers"]),
                "class_names": tuple(meta["class_names"])}  # fmt: skip
