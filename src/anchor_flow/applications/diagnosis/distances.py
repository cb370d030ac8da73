"""Anchor distances for error diagnosis (paper §3.3, Eq. 11, App. J/K, Fig. 6/14; PAPER.md §6).

At one layer, the query vector of the target (all heads concatenated) is recorded for every
prompt and the key vector of every label word (anchor), averaged per class. A PCA with ``M``
components (paper: 10) is fitted on the centred queries; the anchor features are
``k_hat = sigma * (V^T k)`` with ``sigma`` the standard deviations of the projected queries.
The predicted confusion of classes ``i, j`` is the distance of their anchor features over the
largest such distance (Eq. 11; 0 = most confused, diagonal 1). The real confusion is the
ROC-AUC of ``p_i / (p_i + p_j)`` over the prompts whose gold label is ``i`` or ``j``
(App. K; lower = more confused).

Beyond the paper (which compared two heatmaps by eye): :meth:`DiagnosisResult.correlation`
is the Spearman rank correlation between predicted and real confusion over the off-diagonal
class pairs, and :meth:`DiagnosisResult.sensitivity_frame` gives it for every layer and
several ``M``.

Deltas from the official ``Error_analysis.ipynb``: any layer (default: the one at two thirds
of the depth, ``(2 * n_layers) // 3``, which is the official layer 32 of 48); keys are
averaged over every anchor of a class in every prompt of a run (the official notebook used
context 0; with demonstrations fixed per seed both agree); grouped-query models repeat each
key/value head for its query heads (as the attention does); the queries and keys are TL's
``hook_q`` / ``hook_k`` (before rotary embeddings, which GPT-2 does not have).

The pure computations are in :mod:`anchor_flow.applications.diagnosis.confusion`. Deliberately not
here: plotting (:mod:`anchor_flow.report.figures.applications`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from anchor_flow.applications.diagnosis.confusion import (
    DiagnosisError,
    anchor_features,
    default_layer,
    off_diagonal,
    predicted_confusion,
    query_pca,
    real_confusion,
    repeat_kv_heads,
)
from anchor_flow.icl.evaluation import BatchHooks, prompt_batch, run_icl
from anchor_flow.icl.prompts import ICLPrompt
from anchor_flow.icl.roles import PromptBatch, Role
from anchor_flow.models.tl_adapter import adapt
from anchor_flow.results.runs import PooledResult
from anchor_flow.results.stats import bootstrap_interval, spearman

__all__ = ["DiagnosisResult", "run_diagnosis"]

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


def run_diagnosis(
    model: Any,
    prompts: Sequence[ICLPrompt] | PromptBatch,
    *,
    layer: int | None = None,
    n_components: int = 10,
    layers: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    batch_size: int = 8,
    run_name: str = "run-0",
    label_token_policy: Literal["single", "first", "all"] = "single",
    prepend_bos: bool | None = None,
    extra_hooks: Sequence[tuple[Any, Callable[..., Any]]] = (),
    batch_hooks: BatchHooks | None = None,
    progress: bool = True,
) -> DiagnosisResult:
    """Record the target's queries and the anchors' keys, and the label probabilities.

    Example:
        >>> from anchor_flow import load_model, toy_prompts
        >>> result = run_diagnosis(load_model("toy-gpt2"), toy_prompts(12), n_components=3,
        ...                        progress=False)
        >>> result.predicted_confusion().shape
        torch.Size([2, 2])

    Args:
        model: a TransformerLens model (``HookedTransformer`` or ``TransformerBridge``).
        prompts: ICL prompts (paper: 1 demonstration per class, fixed per seed) or a batch.
        layer: the diagnosis layer (default: :func:`default_layer`).
        n_components: the PCA's ``M`` (paper: 10).
        layers: the layers to record (default: all, for the sensitivity over layers).
        class_names: names for plots (default: ``"class 0"``, ...).
        batch_size, label_token_policy, prepend_bos, extra_hooks, batch_hooks, progress: as
            for :func:`anchor_flow.icl.evaluation.run_icl` (your hooks run before the recorders,
            so the recorded queries and keys are those of the intervened model).
        run_name: the run's name in pooled results (e.g. ``"seed-42"``).

    Raises:
        DiagnosisError: a layer out of range, too many components, or a class without anchors.
    """
    adapter = adapt(model)
    batch = prompt_batch(
        adapter, prompts, label_token_policy=label_token_policy, prepend_bos=prepend_bos
    )
    layer = default_layer(adapter.n_layers) if layer is None else layer
    layers = tuple(range(adapter.n_layers)) if layers is None else tuple(sorted(set(layers)))
    if layer not in layers or not all(0 <= x < adapter.n_layers for x in layers):
        raise DiagnosisError(
            f"layer={layer}, layers={layers}; expected layers in "
            f"0..{adapter.n_layers - 1} that include the diagnosis layer"
        )
    n_classes, width = batch.n_classes, adapter.n_heads * adapter.d_head
    names = (
        tuple(class_names)
        if class_names is not None
        else tuple(f"class {c}" for c in range(n_classes))
    )
    queries = torch.full((len(batch), len(layers), width), math.nan, dtype=torch.float64)
    key_sums = torch.zeros(len(layers), n_classes, width, dtype=torch.float64)
    key_counts = torch.zeros(len(layers), n_classes, 1, dtype=torch.float64)

    def recorders(rows: Tensor, part: PromptBatch) -> list[tuple[str, Callable[..., Any]]]:
        is_label = part.roles == Role.LABEL
        one_hot = torch.zeros(*part.roles.shape, n_classes, dtype=torch.float64)
        one_hot[is_label] = torch.nn.functional.one_hot(
            part.label_class[is_label], n_classes
        ).double()
        # Each prompt's anchors of a class count once in total (mean over its anchors).
        per_prompt = one_hot / one_hot.sum(1, keepdim=True).clamp(min=1)
        present = (one_hot.sum(1) > 0).double()  # [batch, class]

        def record_q(q: Tensor, hook: Any) -> None:
            q = q.reshape(*q.shape[:2], -1)
            index = layers.index(adapter.layer_of_hook(hook.name))
            target = q[torch.arange(q.shape[0], device=q.device), part.target_position.to(q.device)]
            queries[rows, index] = target.double().cpu()

        def record_k(k: Tensor, hook: Any) -> None:
            keys = repeat_kv_heads(k, adapter.n_heads, adapter.d_head).double().cpu()
            index = layers.index(adapter.layer_of_hook(hook.name))
            key_sums[index] += torch.einsum("bkc,bkd->cd", per_prompt[:, : keys.shape[1]], keys)
            key_counts[index] += present.sum(0)[:, None]

        return [
            (name(x), fn)
            for x in layers
            for name, fn in ((adapter.q_hook_name, record_q), (adapter.k_hook_name, record_k))
        ]

    icl = run_icl(
        adapter,
        batch,
        batch_size=batch_size,
        extra_hooks=extra_hooks,
        batch_hooks=lambda rows, part: [
            *(batch_hooks(rows, part) if batch_hooks is not None else ()),
            *recorders(rows, part),
        ],
        progress=progress,
    )
    if bool(torch.isnan(queries).any()):
        raise DiagnosisError("a hook_q never fired; cannot read the target's queries")
    if bool((key_counts == 0).any()):
        missing = sorted({int(c) for c in torch.nonzero(key_counts[..., 0] == 0)[:, 1]})
        raise DiagnosisError(
            f"classes {missing} have no label word in any prompt; expected "
            "at least one demonstration per class"
        )
    settings = {
        **icl.settings,
        "experiment": "diagnosis",
        "layer": layer,
        "n_components": n_components,
        "n_model_layers": adapter.n_layers,
        "n_key_value_heads": adapter.n_key_value_heads,
    }
    settings.pop("batch_hooks", None)
    result = DiagnosisResult(
        queries=queries,
        keys=(key_sums / key_counts)[None],
        label_probs=icl.label_probs,
        gold=icl.gold,
        run=torch.zeros(len(batch), dtype=torch.long),
        run_names=(run_name,),
        layers=layers,
        class_names=names,
        settings=settings,
    )
    query_pca(result.queries[:, layers.index(layer)], n_components)  # validates M early
    return result
