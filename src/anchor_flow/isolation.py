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
``1 .. n_layers // 2`` (at least ``(1,)``). Blocking uses :mod:`anchor_flow.blocking`
(``mode="renormalise"`` = the official pre-softmax mask; ``"zero"`` = the paper's wording);
the random control is seeded (Δ the official one is not). Results of several seeds combine
with :meth:`IsolationResult.concat`; means are over runs (seeds) with bootstrap intervals.

Not here: plotting (:mod:`anchor_flow.plotting_experiments`), hooks (:mod:`anchor_flow.blocking`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from anchor_flow.blocking import BlockingError, BlockMode, isolation_hooks, layer_set
from anchor_flow.errors import AnchorFlowError
from anchor_flow.evaluation import BatchHooks, prompt_batch, run_icl
from anchor_flow.prompts import ICLPrompt
from anchor_flow.result_files import load_arrays, save_arrays
from anchor_flow.roles import PromptBatch
from anchor_flow.stats import bootstrap_interval
from anchor_flow.tl_adapter import adapt

__all__ = [
    "IsolationCondition",
    "IsolationResult",
    "default_layer_counts",
    "label_loyalty",
    "run_isolation",
    "word_loyalty",
]

SCHEMA = "anchor_flow.isolation/1"
METRICS = ("label_loyalty", "word_loyalty", "accuracy")
_ARRAYS = ("baseline_predictions", "predictions", "word_jaccard", "gold", "run")


def default_layer_counts(n_layers: int) -> tuple[int, ...]:
    """The paper's k in {1, 3, 5, 7}, scaled down so that first k and last k never overlap.

    Example:
        >>> default_layer_counts(48), default_layer_counts(12), default_layer_counts(4)
        ((1, 3, 5, 7), (1, 3, 5), (1, 2))
    """
    kept = tuple(k for k in (1, 3, 5, 7) if k <= n_layers // 2)
    return kept if len(kept) >= 2 else tuple(range(1, n_layers // 2 + 1)) or (1,)


def label_loyalty(
    baseline: Int[Tensor, " prompt"], isolated: Int[Tensor, " prompt"]
) -> Float[Tensor, " prompt"]:
    """1.0 where the predicted class is the same with and without the intervention, else 0.0.

    Example:
        >>> label_loyalty(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1])).tolist()
        [1.0, 0.0, 1.0]
    """
    return (baseline == isolated).double()


def word_loyalty(
    baseline_top: Int[Tensor, "prompt k"], isolated_top: Int[Tensor, "prompt k_isolated"]
) -> Float[Tensor, " prompt"]:
    """Jaccard similarity of the two top-k token sets of each prompt (order ignored).

    Example:
        >>> word_loyalty(torch.tensor([[1, 2, 3]]), torch.tensor([[3, 2, 9]])).tolist()
        [0.5]
    """
    if baseline_top.shape[0] != isolated_top.shape[0]:
        raise AnchorFlowError(
            f"top-k tokens of {baseline_top.shape[0]} and {isolated_top.shape[0]} prompts; "
            "expected the same prompts with and without the intervention"
        )
    out = []
    for base, iso in zip(baseline_top.tolist(), isolated_top.tolist(), strict=True):
        a, b = set(base), set(iso)
        out.append(len(a & b) / len(a | b))
    return torch.tensor(out, dtype=torch.float64)


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
class IsolationResult:
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

    def __post_init__(self) -> None:
        n, c = self.baseline_predictions.shape[0], len(self.conditions)
        shapes = {
            "predictions": (tuple(self.predictions.shape), (c, n)),
            "word_jaccard": (tuple(self.word_jaccard.shape), (c, n)),
            "gold": (tuple(self.gold.shape), (n,)),
            "run": (tuple(self.run.shape), (n,)),
        }
        bad = {k: got for k, (got, want) in shapes.items() if got != want}
        if bad or n == 0:
            raise AnchorFlowError(
                f"IsolationResult with {c} conditions and {n} prompts got shapes {bad}; "
                "expected [condition, prompt] and [prompt] (and at least one prompt)"
            )
        if n and not 0 <= int(self.run.min()) <= int(self.run.max()) < len(self.run_names):
            raise AnchorFlowError(f"run indices must index run_names {self.run_names}")
        for name in _ARRAYS:
            object.__setattr__(self, name, getattr(self, name).detach().cpu())

    @property
    def n_prompts(self) -> int:
        return int(self.baseline_predictions.shape[0])

    @property
    def n_runs(self) -> int:
        return len(self.run_names)

    def per_prompt(self, metric: str) -> Float[Tensor, "condition prompt"]:
        """``"label_loyalty"``, ``"word_loyalty"`` or ``"accuracy"`` (NaN: gold unknown)."""
        if metric == "label_loyalty":
            return (self.predictions == self.baseline_predictions[None]).double()
        if metric == "word_loyalty":
            return self.word_jaccard.double()
        if metric == "accuracy":
            correct = (self.predictions == self.gold[None]).double()
            return torch.where(self.gold[None] >= 0, correct, math.nan)
        raise AnchorFlowError(f"metric={metric!r}; expected one of {METRICS}")

    def baseline_accuracy(self) -> Float[Tensor, " prompt"]:
        """Per prompt: the unblocked prediction is right (NaN where gold is unknown)."""
        correct = (self.baseline_predictions == self.gold).double()
        return torch.where(self.gold >= 0, correct, math.nan)

    def _mean_and_interval(self, values: Tensor, level: float) -> tuple[Tensor, Tensor, Tensor]:
        """Mean over runs of per-run means; CI over runs (>= 2 runs) or over prompts."""
        per_run = torch.stack(
            [values[..., self.run == r].nanmean(-1) for r in range(self.n_runs)]
        )  # [run, ...]
        mean = per_run.nanmean(0)
        units = per_run if self.n_runs >= 2 else values.movedim(-1, 0)
        low, high = bootstrap_interval(units, lambda v: v.nanmean(0), level=level)
        return mean, low, high

    def summary_frame(self, *, level: float = 0.95) -> pd.DataFrame:
        """One row per (condition, metric), plus the baseline's accuracy: means over runs.

        The interval is a percentile bootstrap over runs (seeds) when there are at least two,
        otherwise over prompts (column ``ci_over``).
        """
        rows = []
        ci_over = "runs" if self.n_runs >= 2 else "prompts"
        for metric in METRICS:
            mean, low, high = self._mean_and_interval(self.per_prompt(metric), level)
            for index, cond in enumerate(self.conditions):
                rows.append(
                    {"control": cond.control, "position": cond.position,
                     "n_layers": cond.n_layers, "metric": metric, "mean": float(mean[index]),
                     "ci_low": float(low[index]), "ci_high": float(high[index])}
                )  # fmt: skip
        mean, low, high = self._mean_and_interval(self.baseline_accuracy()[None], level)
        rows.append(
            {"control": "none", "position": "none", "n_layers": 0, "metric": "accuracy",
             "mean": float(mean[0]), "ci_low": float(low[0]), "ci_high": float(high[0])}
        )  # fmt: skip
        frame = pd.DataFrame(rows)
        frame["ci_over"], frame["n_runs"], frame["n_prompts"] = ci_over, self.n_runs, self.n_prompts
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
    def concat(cls, results: Sequence[IsolationResult]) -> IsolationResult:
        """Pool runs (e.g. seeds) with the same conditions; run names must differ."""
        if not results:
            raise AnchorFlowError("concat needs at least one IsolationResult; got none")
        conditions = results[0].conditions
        if any(r.conditions != conditions for r in results):
            raise AnchorFlowError("cannot concat isolation results with different conditions")
        names = tuple(name for r in results for name in r.run_names)
        if len(set(names)) != len(names):
            raise AnchorFlowError(f"run names must be unique across results; got {names}")
        offsets = np.cumsum([0] + [r.n_runs for r in results])[:-1].tolist()
        return cls(
            conditions=conditions,
            baseline_predictions=torch.cat([r.baseline_predictions for r in results]),
            predictions=torch.cat([r.predictions for r in results], dim=1),
            word_jaccard=torch.cat([r.word_jaccard for r in results], dim=1),
            gold=torch.cat([r.gold for r in results]),
            run=torch.cat([r.run + o for r, o in zip(results, offsets, strict=True)]),
            run_names=names,
            settings=dict(results[0].settings),
        )

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write ``isolation.npz`` and ``isolation_meta.json`` into ``directory``, atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {name: getattr(self, name).numpy() for name in _ARRAYS}
        meta = {
            "schema": SCHEMA,
            "settings": self.settings,
            "run_names": list(self.run_names),
            "conditions": [vars(c) for c in self.conditions],
        }
        save_arrays(directory, "isolation", arrays, meta)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> IsolationResult:
        """Read a result written by :meth:`save`."""
        directory = Path(directory)
        arrays, meta = load_arrays(
            directory, "isolation", schema=SCHEMA, names=_ARRAYS, what="an isolation result"
        )
        conditions = tuple(IsolationCondition(**c) for c in meta["conditions"])
        return cls(conditions=conditions, run_names=tuple(meta["run_names"]),
                   settings=meta["settings"], **arrays)  # fmt: skip


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
                                     seed=seed, prompt_ids=rows)]  # fmt: skip

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
