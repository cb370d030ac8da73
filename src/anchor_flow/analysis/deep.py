"""Deep layers: the target reads its prediction from the label words (paper §2.3, Eq. 5).

For every layer ``l``, the target's attention to the label words, summed over heads (paper
footnote) and over the label words of the same class (App. E), is a score vector
``(A_l(q, p_1), ..., A_l(q, p_C))``. :func:`run_deep` records it in one forward pass per batch
(the hook reads only the target's row of each pattern; no pattern is kept) together with the
model's own prediction, and :class:`DeepResult` scores it as a classifier of that prediction
(PAPER.md §3, following the official ``deep_analysis.ipynb``):

* classes the model never predicts are dropped;
* two classes left: ROC-AUC of the raw score of the second class;
* more: the scores are renormalised to sum to 1 over the kept classes, then the macro
  one-vs-one AUC (Hand & Till) — :func:`anchor_flow.results.stats.roc_auc_ovo`;
* ``R_l`` (Eq. 5) = ``sum_{i<=l} (AUC_i - 0.5) / sum_i (AUC_i - 0.5)``, on the curve averaged
  over runs (seeds), as the official code.

The prediction, not the gold label, is the classifier's target (App. E and the code; Δ the
author's reply in GitHub issue #22). Scores are indexed by (layer, class) explicitly (Δ the
notebook's 1-shot reshape). Deliberately not here: plotting, saliency.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from anchor_flow.errors import AnchorFlowError
from anchor_flow.icl.evaluation import BatchHooks, prompt_batch, run_icl
from anchor_flow.icl.prompts import ICLPrompt
from anchor_flow.icl.roles import PromptBatch, Role
from anchor_flow.models.tl_adapter import adapt
from anchor_flow.results.runs import PooledResult
from anchor_flow.results.stats import bootstrap_interval, roc_auc, roc_auc_columns, roc_auc_ovo

__all__ = ["DeepResult", "classifier_auc", "cumulative_auc_ratio", "run_deep"]

SCHEMA = "anchor_flow.deep/1"
log = logging.getLogger(__name__)


def classifier_auc(
    scores: Float[Tensor, "prompt n_classes"], predictions: Int[Tensor, " prompt"]
) -> float:
    """AUC-ROC of label-word attention as a classifier of the model's prediction (official rule).

    Example:
        >>> scores = torch.tensor([[0.9, 0.1], [0.2, 0.6], [0.5, 0.4]])
        >>> classifier_auc(scores, torch.tensor([0, 1, 0]))
        1.0

    Returns:
        The AUC, or NaN when the model predicts fewer than two classes.
    """
    kept = sorted(int(c) for c in torch.unique(predictions))
    if len(kept) < 2:
        return math.nan
    if len(kept) == 2:
        return roc_auc(scores[:, kept[1]].double(), predictions == kept[1])
    return roc_auc_ovo(*_among_predicted(scores, predictions, kept))


def _among_predicted(scores: Tensor, predictions: Tensor, kept: list[int]) -> tuple[Tensor, Tensor]:
    """The scores ``[..., class]`` of the predicted classes ``kept`` as shares of their sum
    (uniform where it is 0), and each prediction's index in ``kept``."""
    sub = scores[..., kept].double()
    total = sub.sum(-1, keepdim=True)
    sub = torch.where(total > 0, sub / total, 1.0 / len(kept))
    return sub, torch.tensor([kept.index(int(p)) for p in predictions])


def cumulative_auc_ratio(auc: Float[Tensor, " layer"]) -> Float[Tensor, " layer"]:
    """``R_l`` (Eq. 5): the share of the total ``AUC - 0.5`` accumulated up to layer ``l``.

    Example:
        >>> [round(r, 6) for r in cumulative_auc_ratio(torch.tensor([0.5, 0.6, 0.9])).tolist()]
        [0.0, 0.2, 1.0]
    """
    excess = auc.double() - 0.5
    return torch.cumsum(excess, 0) / excess.sum()


def _auc_curve(scores: Tensor, predictions: Tensor) -> Tensor:
    """:func:`classifier_auc` of every layer of ``scores`` ``[prompt, layer, class]`` at once
    (the same numbers: each pair's AUCs are added in the same order)."""
    kept = sorted(int(c) for c in torch.unique(predictions))
    if len(kept) < 2:
        return torch.full((scores.shape[1],), math.nan, dtype=torch.float64)
    if len(kept) == 2:
        return roc_auc_columns(scores[:, :, kept[1]].double(), predictions == kept[1])
    sub, labels = _among_predicted(scores, predictions, kept)
    curve, pairs = torch.zeros(scores.shape[1], dtype=torch.float64), 0
    for a in range(len(kept)):  # roc_auc_ovo's pairs, in its order
        for b in range(a + 1, len(kept)):
            keep = (labels == a) | (labels == b)
            is_a = labels[keep] == a
            a_vs_b = roc_auc_columns(sub[keep][:, :, a], is_a)
            b_vs_a = roc_auc_columns(sub[keep][:, :, b], ~is_a)
            curve, pairs = curve + (a_vs_b + b_vs_a) / 2.0, pairs + 1
    return curve / pairs


@dataclass(frozen=True)
class DeepResult(PooledResult):
    """The target's attention to each class's label words per layer, and the predictions.

    Example:
        >>> result = DeepResult(torch.rand(6, 3, 2), torch.tensor([[0.9, 0.1], [0.2, 0.8]] * 3),
        ...                     torch.tensor([0, 1] * 3), torch.zeros(6).long(), ("seed-0",))
        >>> result.auc().shape, float(result.r_curve()[-1])
        (torch.Size([3]), 1.0)

    Attributes:
        scores: ``[prompt, layer, class]`` sum over heads and over the class's label words of
            the target's attention ``A_l(q, p)``.
        label_probs: ``[prompt, class]`` label-restricted probabilities (predictions = argmax).
        gold: the query's class, -1 when unknown.
        run: index into ``run_names`` of each prompt's run (seed).
        run_names: one name per run.
        settings: how the result was computed (JSON-safe).
    """

    scores: Float[Tensor, "prompt layer n_classes"]
    label_probs: Float[Tensor, "prompt n_classes"]
    gold: Int[Tensor, " prompt"]
    run: Int[Tensor, " prompt"]
    run_names: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)

    _STEM, _SCHEMA, _WHAT = "deep", SCHEMA, "a deep-layer result"
    _ARRAYS = ("scores", "label_probs", "gold", "run")

    def __post_init__(self) -> None:
        n = self.scores.shape[0]
        if self.scores.ndim != 3 or n == 0 or self.label_probs.shape != (n, self.scores.shape[2]):
            raise AnchorFlowError(
                f"DeepResult got scores {tuple(self.scores.shape)} and label_probs "
                f"{tuple(self.label_probs.shape)}; expected [prompt, layer, class] and "
                "[prompt, class] with at least one prompt"
            )
        if self.gold.shape != (n,) or self.run.shape != (n,):
            raise AnchorFlowError(f"gold and run must have shape ({n},)")
        self._check_run_indices()
        self._detach_arrays()

    @property
    def n_prompts(self) -> int:
        return int(self.scores.shape[0])

    @property
    def n_layers(self) -> int:
        return int(self.scores.shape[1])

    @property
    def predictions(self) -> Int[Tensor, " prompt"]:
        """The model's predicted class: the classifier's target."""
        return self.label_probs.argmax(-1)

    def auc_per_run(self) -> Float[Tensor, "run layer"]:
        """AUCROC_l of each run (NaN where a run predicts fewer than two classes)."""
        return torch.stack(
            [_auc_curve(self.scores[self.run == r], self.predictions[self.run == r])
             for r in range(self.n_runs)]
        )  # fmt: skip

    def auc(self) -> Float[Tensor, " layer"]:
        """AUCROC_l averaged over runs (the curve of the paper's Fig. 5)."""
        return self.auc_per_run().nanmean(0)

    def share_spread(self) -> Float[Tensor, " layer"]:
        """How much the target's split of its label-word attention varies between prompts.

        Per run and layer: each predicted class's share of the target's attention to the
        predicted classes' label words, its standard deviation over prompts, averaged over
        those classes; then averaged over runs (NaN where a run predicts fewer than two
        classes). 0 when the split never changes; a random-init network's near-uniform
        attention gives about 1e-3 or less, a model that reads its prediction from the label
        words tenths. AUCROC_l ranks differences of any size, so it needs this beside it.

        Example:
            >>> flat = DeepResult(torch.full((4, 1, 2), 0.3), torch.eye(2).repeat(2, 1),
            ...                   torch.tensor([0, 1] * 2), torch.zeros(4).long(), ("seed-0",))
            >>> flat.share_spread().tolist()
            [0.0]
        """
        per_run = torch.full((self.n_runs, self.n_layers), math.nan, dtype=torch.float64)
        for r in range(self.n_runs):
            rows = self.run == r
            kept = torch.unique(self.predictions[rows])
            if len(kept) < 2 or int(rows.sum()) < 2:
                continue
            scores = self.scores[rows][:, :, kept].double()
            total = scores.sum(-1, keepdim=True)
            share = torch.where(total > 0, scores / total, 1.0 / len(kept))
            per_run[r] = share.std(0).mean(-1)
        return per_run.nanmean(0)

    def r_curve(self) -> Float[Tensor, " layer"]:
        """R_l (Eq. 5) of the run-averaged AUC curve; it ends at 1."""
        return cumulative_auc_ratio(self.auc())

    def interval(
        self, *, level: float = 0.95, n_resamples: int = 200, seed: int = 0
    ) -> tuple[Tensor, Tensor]:
        """Bootstrap interval of AUCROC_l: over runs (>= 2 runs) or over prompts (one run)."""
        if self.n_runs >= 2:
            return bootstrap_interval(self.auc_per_run(), lambda v: v.nanmean(0), level=level,
                                      n_resamples=n_resamples, seed=seed)  # fmt: skip
        index = torch.arange(self.n_prompts)

        def statistic(rows: Tensor) -> Tensor:
            return _auc_curve(self.scores[rows], self.predictions[rows])

        return bootstrap_interval(index, statistic, level=level, n_resamples=n_resamples, seed=seed)

    def summary_frame(self, *, level: float = 0.95) -> pd.DataFrame:
        """One row per layer: mean AUCROC_l, its interval and R_l."""
        auc, r = self.auc(), self.r_curve()
        low, high = self.interval(level=level)
        return pd.DataFrame({
            "layer": np.arange(self.n_layers), "auc_roc": auc.numpy(), "ci_low": low.numpy(),
            "ci_high": high.numpy(), "r": r.numpy(),
            "ci_over": "runs" if self.n_runs >= 2 else "prompts",
            "n_runs": self.n_runs, "n_prompts": self.n_prompts,
        })  # fmt: skip

    def to_frame(self) -> pd.DataFrame:
        """Long form: one row per (run, layer) with that run's AUCROC_l and R_l."""
        per_run = self.auc_per_run()
        return pd.DataFrame([
            {"run": name, "layer": layer, "auc_roc": float(per_run[r, layer]),
             "r": float(cumulative_auc_ratio(per_run[r])[layer])}
            for r, name in enumerate(self.run_names) for layer in range(self.n_layers)
        ])  # fmt: skip

    def summary(self, *, level: float = 0.95) -> dict[str, Any]:
        """JSON-safe summary (what ``deep.json`` holds)."""
        frame = self.summary_frame(level=level)
        return {"schema": SCHEMA, "settings": self.settings, "runs": list(self.run_names),
                "n_prompts": self.n_prompts, "layers": frame.to_dict(orient="records"),
                "auc_per_run": self.auc_per_run().tolist()}  # fmt: skip

    @classmethod
    def _check_concat(cls, results: Sequence[DeepResult], names: tuple[str, ...]) -> None:
        shapes = {r.scores.shape[1:] for r in results}
        if len(shapes) != 1:
            raise AnchorFlowError(f"cannot concat deep results with [layer, class] {shapes}")
        cls._check_unique_run_names(names)


def target_attention_hooks(
    model: Any, batch: PromptBatch, rows: Tensor, into: Float[Tensor, "prompt layer n_classes"]
) -> list[tuple[str, Callable[..., Any]]]:
    """Hooks that add each class's summed target -> label-word attention into ``into[rows]``.

    Only the target's row ``pattern[b, :, q_b, :]`` is read; nothing is edited or kept.
    """
    adapter = adapt(model)
    is_label = batch.roles == Role.LABEL
    # [batch, key_pos, class]: 1 at the anchors of each class.
    one_hot = torch.zeros(*batch.roles.shape, batch.n_classes, dtype=torch.float64)
    one_hot[is_label] = torch.nn.functional.one_hot(
        batch.label_class[is_label], batch.n_classes
    ).double()
    rows = rows.cpu()

    def record(pattern: Tensor, hook: Any) -> None:
        layer = adapter.layer_of_hook(hook.name)
        index = torch.arange(pattern.shape[0], device=pattern.device)
        target_row = pattern[index, :, batch.target_position.to(pattern.device), :].sum(1)
        into[rows, layer] = torch.einsum("bk,bkc->bc", target_row.double().cpu(), one_hot)

    return [(adapter.pattern_hook_name(layer), record) for layer in range(adapter.n_layers)]


def run_deep(
    model: Any,
    prompts: Sequence[ICLPrompt] | PromptBatch,
    *,
    batch_size: int = 8,
    run_name: str = "run-0",
    label_token_policy: Literal["single", "first", "all"] = "single",
    prepend_bos: bool | None = None,
    extra_hooks: Sequence[tuple[Any, Callable[..., Any]]] = (),
    batch_hooks: BatchHooks | None = None,
    progress: bool = True,
) -> DeepResult:
    """Per-layer target -> label-word attention and the model's predictions (paper §2.3).

    Example:
        >>> from anchor_flow import load_model, toy_prompts
        >>> result = run_deep(load_model("toy-gpt2"), toy_prompts(8), progress=False)
        >>> result.scores.shape  # [prompt, layer, class]
        torch.Size([8, 4, 2])

    Args:
        model: a TransformerLens model with live attention hooks.
        prompts: ICL prompts (the paper: demonstrations fixed per seed) or a PromptBatch.
        batch_size: prompts per forward pass; results do not depend on it.
        run_name: the run's name in pooled results (e.g. ``"seed-42"``).
        label_token_policy: multi-token label words (see ``tokenize_prompts``).
        prepend_bos: force a BOS token on or off (default: what the tokenizer does).
        extra_hooks: your own forward hooks, active during the pass.
        batch_hooks: your own per-batch hooks (``run_icl``'s ``f(rows, batch) -> hooks``),
            run before the recorders, so the recorded attention is the intervened one.
        progress: show a progress bar over batches.
    """
    adapter = adapt(model)
    batch = prompt_batch(
        adapter, prompts, label_token_policy=label_token_policy, prepend_bos=prepend_bos
    )
    scores = torch.full(
        (len(batch), adapter.n_layers, batch.n_classes), math.nan, dtype=torch.float64
    )

    def recorders(rows: Tensor, part: PromptBatch) -> Any:
        mine = batch_hooks(rows, part) if batch_hooks is not None else ()
        return [*mine, *target_attention_hooks(model, part, rows, scores)]

    icl = run_icl(model, batch, batch_size=batch_size, extra_hooks=extra_hooks,
                  batch_hooks=recorders, progress=progress)  # fmt: skip
    if bool(torch.isnan(scores).any()):
        raise AnchorFlowError("some layer's hook_pattern never fired; cannot read attention")
    settings = {**icl.settings, "experiment": "deep", "n_model_layers": adapter.n_layers}
    settings.pop("batch_hooks", None)
    return DeepResult(scores=scores, label_probs=icl.label_probs, gold=icl.gold,
                      run=torch.zeros(len(batch), dtype=torch.long), run_names=(run_name,),
                      settings=settings)  # fmt: skip
