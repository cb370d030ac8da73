"""Shallow- vs deep-layer isolation of the label words (paper §2.2, Fig. 4/8; PAPER.md §2).

:func:`run_isolation` blocks the label words' attention to earlier positions (the self-edge
stays) in the first ``k`` or last ``k`` layers, or blocks as many random non-label rows (the
paper's control), and compares each run with the unblocked baseline of the same call:

* **label loyalty**: share of prompts whose label-restricted prediction is unchanged (the
  official ``accuracy_score(argmax probs_orig, argmax probs_iso)``);
* **word loyalty**: Jaccard similarity of the top-k full-vocabulary tokens at the target
  (k=5 as the paper; Δ the official notebook used k=10, pass ``top_k=10``);
* **accuracy** of the blocked model.

Default ``k`` values (Δ scaled for small models): the paper's (1, 3, 5, 7), keeping those with
``k <= n_layers // 2`` so that "first k" and "last k" never overlap; if fewer than two remain,
``1 .. n_layers // 2`` (at least ``(1,)``). Blocking uses :mod:`anchor_flow.analysis.blocking`
(``mode="renormalise"`` = the official pre-softmax mask; ``"zero"`` = the paper's wording);
the random control is seeded (Δ the official one is not). Results of several seeds combine
with :meth:`IsolationResult.concat`; means are over runs (seeds) with bootstrap intervals.

Not here: plotting (:mod:`anchor_flow.report.figures.analysis`), hooks
(:mod:`anchor_flow.analysis.blocking`), the loyalty metrics shared with compression
(:mod:`anchor_flow.analysis.loyalty`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from anchor_flow.analysis.blocking import BlockingError, BlockMode, isolation_hooks, layer_set
from anchor_flow.analysis.loyalty import METRICS, LoyaltyResult, word_loyalty
from anchor_flow.errors import AnchorFlowError
from anchor_flow.icl.evaluation import BatchHooks, prompt_batch, run_icl
from anchor_flow.icl.prompts import ICLPrompt
from anchor_flow.icl.roles import PromptBatch
from anchor_flow.models.tl_adapter import adapt

__all__ = ["IsolationCondition", "IsolationResult", "default_layer_counts", "run_isolation"]

SCHEMA = "anchor_flow.isolation/1"


def default_layer_counts(n_layers: int) -> tuple[int, ...]:
    """The paper's k in {1, 3, 5, 7}, scaled down so that first k and last k never overlap.

    Example:
        >>> default_layer_counts(48), default_layer_counts(12), default_layer_counts(4)
        ((1, 3, 5, 7), (1, 3, 5), (1, 2))
    """
    kept = tuple(k for k in (1, 3, 5, 7) if k <= n_layers // 2)
    return kept if len(kept) >= 2 else tuple(range(1, n_layers // 2 + 1)) or (1,)


@dataclass(frozen=True)
class IsolationCondition:
    """One blocked configuration: which rows (``control``), where and in how many layers."""

    control: Literal["label", "random"]
    position: Literal["first", "last"]
    n_layers: int

    @property
    def name(self) -> str:
        """E.g. ``"label, first 5"``."""
        return f"{self.control}, {self.position} {self.n_layers}"


@dataclass(frozen=True)
class IsolationResult(LoyaltyResult):
    """Per-prompt outcomes of every isolation condition and of the baseline.

    Example:
        >>> result = IsolationResult(
        ...     conditions=(IsolationCondition("label", "first", 1),),
        ...     baseline_predictions=torch.tensor([0, 1]), predictions=torch.tensor([[0, 0]]),
        ...     word_jaccard=torch.tensor([[1.0, 0.5]]), gold=torch.tensor([0, 1]),
        ...     run=torch.tensor([0, 0]), run_names=("seed-0",))
        >>> result.per_prompt("label_loyalty").tolist()
        [[1.0, 0.0]]

    Attributes:
        conditions: the blocked configurations, in the order of the first axis below.
        baseline_predictions: predicted class without intervention.
        predictions: predicted class under each condition.
        word_jaccard: Jaccard of the top-k tokens with vs without the intervention.
        gold: the query's class, -1 when unknown.
        run: index into ``run_names`` of the run (seed) each prompt belongs to.
        run_names: one name per run, e.g. ``"seed-42"``.
        settings: how the result was computed (JSON-safe).
    """

    conditions: tuple[IsolationCondition, ...]
    baseline_predictions: Int[Tensor, " prompt"]
    predictions: Int[Tensor, "condition prompt"]
    word_jaccard: Float[Tensor, "condition prompt"]
    gold: Int[Tensor, " prompt"]
    run: Int[Tensor, " prompt"]
    run_names: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)

    _STEM, _SCHEMA, _WHAT = "isolation", SCHEMA, "an isolation result"
    _ARRAYS = ("baseline_predictions", "predictions", "word_jaccard", "gold", "run")

    def __post_init__(self) -> None:
        self._check_outcome_shapes(len(self.conditions), "conditions", "condition")
        self._detach_arrays()

    def summary_frame(self, *, level: float = 0.95) -> pd.DataFrame:
        """One row per (condition, metric), plus the baseline's accuracy: means over runs.

        The interval is a percentile bootstrap over runs (seeds) when there are at least two,
        otherwise over prompts (column ``ci_over``).
        """
        rows = []
        for metric in METRICS:
            means = self._run_means(self.per_prompt(metric), level)
            for index, cond in enumerate(self.conditions):
                rows.append(
                    {"control": cond.control, "position": cond.position,
                     "n_layers": cond.n_layers, "metric": metric, **means.row(index)}
                )  # fmt: skip
        means = self._run_means(self.baseline_accuracy()[None], level)
        rows.append({"control": "none", "position": "none", "n_layers": 0, "metric": "accuracy",
                     **means.row(0)})  # fmt: skip
        frame = pd.DataFrame(rows)
        frame["ci_over"] = means.ci_over
        frame["n_runs"], frame["n_prompts"] = self.n_runs, self.n_prompts
        return frame

    def to_frame(self) -> pd.DataFrame:
        """Long form: one row per (condition, prompt) with the three per-prompt metrics."""
        metrics, base = {m: self.per_prompt(m) for m in METRICS}, self.baseline_accuracy()
        shared = {"run": [self.run_names[r] for r in self.run.tolist()]}
        shared["prompt"] = list(range(self.n_prompts))
        frames = []
        for i, cond in enumerate(self.conditions):
            columns = {**shared, **vars(cond), **{m: metrics[m][i].numpy() for m in METRICS}}
            frames.append(pd.DataFrame({**columns, "baseline_correct": base.numpy()}))
        return pd.concat(frames, ignore_index=True)

    def summary(self, *, level: float = 0.95) -> dict[str, Any]:
        """JSON-safe summary (what ``isolation.json`` holds)."""
        return {
            "schema": SCHEMA,
            "settings": self.settings,
            "runs": list(self.run_names),
            "n_prompts": self.n_prompts,
            "means": self.summary_frame(level=level).to_dict(orient="records"),
        }

    @classmethod
    def _check_concat(cls, results: Sequence[IsolationResult], names: tuple[str, ...]) -> None:
        if any(r.conditions != results[0].conditions for r in results):
            raise AnchorFlowError("cannot concat isolation results with different conditions")
        cls._check_unique_run_names(names)

    def _meta(self) -> dict[str, Any]:
        return {**super()._meta(), "conditions": [vars(c) for c in self.conditions]}

    @classmethod
    def _fields_from_meta(cls, meta: Mapping[str, Any]) -> dict[str, Any]:
        conditions = tuple(IsolationCondition(**c) for c in meta["conditions"])
        return {**super()._fields_from_meta(meta), "conditions": conditions}


def run_isolation(
    model: Any,
    prompts: Sequence[ICLPrompt] | PromptBatch,
    *,
    layer_counts: Sequence[int] | None = None,
    positions: Sequence[Literal["first", "last"]] = ("first", "last"),
    controls: Sequence[Literal["label", "random"]] = ("label", "random"),
    mode: BlockMode = "renormalise",
    top_k: int = 5,
    seed: int = 0,
    run_name: str | None = None,
    batch_size: int = 8,
    label_token_policy: Literal["single", "first", "all"] = "single",
    prepend_bos: bool | None = None,
    extra_hooks: Sequence[tuple[Any, Callable[..., Any]]] = (),
    batch_hooks: BatchHooks | None = None,
    first_prompt_id: int = 0,
    progress: bool = True,
) -> IsolationResult:
    """Label loyalty, word loyalty and accuracy under label-word (or random) isolation.

    Example:
        >>> from anchor_flow import load_model, toy_prompts
        >>> result = run_isolation(load_model("toy-gpt2"), toy_prompts(4), progress=False)
        >>> sorted(set(result.summary_frame()["metric"]))
        ['accuracy', 'label_loyalty', 'word_loyalty']

    Args:
        model: a TransformerLens model with live attention hooks.
        prompts: ICL prompts (the paper: demonstrations fixed per seed) or a PromptBatch.
        layer_counts: the ``k`` values; default :func:`default_layer_counts`.
        positions: block in the ``"first"`` and/or ``"last"`` k layers.
        controls: isolate the ``"label"`` words and/or as many ``"random"`` non-label rows.
        mode: ``"renormalise"`` (official) or ``"zero"`` (the paper's literal wording).
        top_k: tokens compared by word loyalty (paper 5; official notebook 10).
        seed: seed of the random control (non-negative).
        run_name: the run's name in pooled results (default ``"seed-<seed>"``).
        batch_size: prompts per forward pass; results do not depend on it.
        label_token_policy: multi-token label words (see ``tokenize_prompts``).
        prepend_bos: force a BOS token on or off (default: what the tokenizer does).
        extra_hooks: your own forward hooks, active in the baseline and every condition.
        batch_hooks: your own per-batch hooks (``run_icl``'s ``f(rows, batch) -> hooks``),
            active in the baseline and every condition, before the blocking hooks.
        first_prompt_id: the random control's id of the first prompt (prompt ``i`` draws as
            ``first_prompt_id + i``): a part of a longer list passes its offset, so that its
            draws equal the whole list's.
        progress: show a progress bar over conditions.

    Raises:
        BlockingError: a bad k, position or control.
    """
    adapter = adapt(model)
    counts = tuple(layer_counts) if layer_counts is not None else None
    counts = counts or default_layer_counts(adapter.n_layers)
    bad = [k for k in counts if isinstance(k, bool) or not 1 <= int(k) <= adapter.n_layers]
    if bad:
        raise BlockingError(f"layer_counts {bad} out of range; expected 1..{adapter.n_layers}")
    batch = prompt_batch(
        adapter, prompts, label_token_policy=label_token_policy, prepend_bos=prepend_bos
    )
    conditions = tuple(
        IsolationCondition(control, position, int(k))
        for control in controls for position in positions for k in counts
    )  # fmt: skip
    for cond in conditions:
        layer_set(adapter.n_layers, cond.n_layers, cond.position)  # validates position
        if cond.control not in ("label", "random"):
            raise BlockingError(f"control={cond.control!r}; expected 'label' or 'random'")

    # Your interventions run in the baseline and in every condition (before the blocking).
    def mine(rows: Tensor, part: PromptBatch) -> list[Any]:
        return list(batch_hooks(rows, part)) if batch_hooks is not None else []

    baseline = run_icl(model, batch, batch_size=batch_size, top_k=top_k, progress=False,
                       extra_hooks=extra_hooks, batch_hooks=batch_hooks)  # fmt: skip
    predictions, jaccard = [], []
    for cond in tqdm(conditions, desc="isolation", unit="condition", disable=not progress):
        layers = layer_set(adapter.n_layers, cond.n_layers, cond.position)

        def hooks(rows: Tensor, part: PromptBatch, layers: Any = layers, cond: Any = cond) -> Any:
            return [*mine(rows, part),
                    *isolation_hooks(model, part, layers, control=cond.control, mode=mode,
                                     seed=seed, prompt_ids=rows + first_prompt_id)]  # fmt: skip

        blocked = run_icl(model, batch, batch_size=batch_size, top_k=top_k, batch_hooks=hooks,
                          extra_hooks=extra_hooks, progress=False)  # fmt: skip
        predictions.append(blocked.predictions)
        jaccard.append(word_loyalty(baseline.top_tokens, blocked.top_tokens))
    settings = {**baseline.settings, "experiment": "isolation", "mode": mode, "seed": seed,
                "layer_counts": list(counts), "n_model_layers": adapter.n_layers}  # fmt: skip
    return IsolationResult(
        conditions=conditions,
        baseline_predictions=baseline.predictions,
        predictions=torch.stack(predictions) if predictions else torch.zeros(0, len(batch)).long(),
        word_jaccard=torch.stack(jaccard) if jaccard else torch.zeros(0, len(batch)),
        gold=baseline.gold,
        run=torch.zeros(len(batch), dtype=torch.long),
        run_names=(run_name or f"seed-{seed}",),
        settings=settings,
    )
