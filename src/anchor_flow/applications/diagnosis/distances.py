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
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from anchor_flow.applications.diagnosis.confusion import (
    DiagnosisError,
    default_layer,
    query_pca,
    repeat_kv_heads,
)
from anchor_flow.applications.diagnosis.result import DiagnosisResult
from anchor_flow.icl.evaluation import BatchHooks, prompt_batch, run_icl
from anchor_flow.icl.prompts import ICLPrompt
from anchor_flow.icl.roles import PromptBatch, Role
from anchor_flow.models.tl_adapter import adapt

__all__ = ["DiagnosisResult", "record_diagnosis", "run_diagnosis"]


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
    result, _ = record_diagnosis(
        model, prompts, layer=layer, n_components=n_components, layers=layers,
        class_names=class_names, batch_size=batch_size, run_name=run_name,
        label_token_policy=label_token_policy, prepend_bos=prepend_bos,
        extra_hooks=extra_hooks, batch_hooks=batch_hooks, progress=progress,
    )  # fmt: skip
    index = result.layers.index(int(result.settings["layer"]))
    query_pca(result.queries[:, index], n_components)  # validates M early
    return result


def record_diagnosis(
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
) -> tuple[DiagnosisResult, Float[Tensor, "layer n_classes"]]:
    """:func:`run_diagnosis` without the check of ``n_components`` against the number of
    prompts, and the number of prompts whose anchors entered each class's mean key per layer.

    For a part of a longer prompt list (a data-parallel run): the parts' keys, weighted by
    these counts, give the whole list's; ``n_components`` is checked on the joined queries.
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
    return result, key_counts[..., 0]
