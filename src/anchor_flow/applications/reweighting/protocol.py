"""The anchor re-weighting protocol and its results (paper §3.1.2, Table 1; PAPER.md §4.2-§4.3).

:func:`reweighting_prompts` builds the paper's prompt sets for one seed and
:func:`run_reweighting` fits the betas
(:func:`anchor_flow.applications.reweighting.beta.fit_reweighting`) and evaluates them together
with the two baselines of Table 1 (vanilla 1-shot with the same demonstrations; vanilla k-shot with
the extra examples added as demonstrations).

:class:`ReweightingResult` holds the predictions of the three :data:`CONDITIONS` per run
(seed), the betas and the training losses; means over runs (the paper: 5 seeds, no
variances), percentile bootstrap intervals over runs (over prompts with a single run).

Deliberately not here: the betas and their hooks
(:mod:`anchor_flow.applications.reweighting.beta`), plotting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from anchor_flow.applications.reweighting.beta import (
    AnchorReweighting,
    ReweightingError,
    evaluate_reweighting,
    fit_reweighting,
)
from anchor_flow.applications.reweighting.prompt_sets import (
    ReweightingPrompts,
    demonstrations_per_class,
    fit_reweighting_prompts,
    reweighting_prompts,
)
from anchor_flow.icl.evaluation import run_icl
from anchor_flow.models.tl_adapter import adapt
from anchor_flow.results.runs import PooledResult

__all__ = [
    "CONDITIONS",
    "ReweightingPrompts",
    "ReweightingResult",
    "demonstrations_per_class",
    "fit_reweighting_prompts",
    "reweighting_prompts",
    "run_reweighting",
]

SCHEMA = "anchor_flow.reweighting/1"
CONDITIONS = ("vanilla 1-shot", "vanilla k-shot", "re-weighted")
Policy = Literal["single", "first", "all"]


@dataclass(frozen=True)
class ReweightingResult(PooledResult):
    """Table 1 for one or more runs (seeds): predictions of the three conditions, the betas.

    Example:
        >>> result = ReweightingResult(
        ...     predictions=torch.tensor([[0, 1], [1, 1], [1, 1]]), gold=torch.tensor([[1, 1]] * 3),
        ...     run=torch.tensor([0, 0]), run_names=("seed-42",), betas=torch.zeros(1, 2, 4, 2),
        ...     losses=torch.tensor([[0.7, 0.5]]))
        >>> result.summary_frame()["mean"].tolist()
        [0.5, 1.0, 1.0]

    Attributes:
        predictions: ``[condition, prompt]`` predicted class under each of :data:`CONDITIONS`.
        gold: ``[condition, prompt]`` query class (the k-shot queries of a generated task differ).
        run: index into ``run_names`` of each prompt's run.
        run_names: e.g. ``"seed-42"``.
        betas: ``[run, layer, head, class]`` fitted betas.
        losses: ``[run, epoch + 1]`` training loss at beta = 0 and after each epoch.
        settings: how the result was computed (JSON-safe).
    """

    predictions: Int[Tensor, "condition prompt"]
    gold: Int[Tensor, "condition prompt"]
    run: Int[Tensor, " prompt"]
    run_names: tuple[str, ...]
    betas: Float[Tensor, "run layer head n_classes"]
    losses: Float[Tensor, "run epoch_plus_one"]
    settings: dict[str, Any] = field(default_factory=dict)

    _STEM, _SCHEMA, _WHAT = "reweighting", SCHEMA, "a re-weighting result"
    _ARRAYS = ("predictions", "gold", "run", "betas", "losses")
    _ERROR = ReweightingError
    _ON_AXIS_1 = ("predictions", "gold")
    _PER_RUN = ("betas", "losses")

    def __post_init__(self) -> None:
        n = self.predictions.shape[-1] if self.predictions.ndim else 0
        r = len(self.run_names)
        bad = {
            name: tuple(t.shape)
            for name, t, want in (
                ("predictions", self.predictions, (len(CONDITIONS), n)),
                ("gold", self.gold, (len(CONDITIONS), n)),
                ("run", self.run, (n,)),
                ("betas", self.betas, (r, *self.betas.shape[1:])),
                ("losses", self.losses, (r, *self.losses.shape[1:])),
            )
            if tuple(t.shape) != want
        }
        if (
            bad
            or n == 0
            or self.betas.ndim != 4
            or not 0 <= int(self.run.min()) <= int(self.run.max()) < r
        ):
            raise ReweightingError(
                f"ReweightingResult got shapes {bad} for {r} runs; expected predictions and gold "
                f"[{len(CONDITIONS)}, prompt], run [prompt] indexing run_names, betas [run, layer, "
                "head, class], losses [run, epoch + 1], and at least one prompt"
            )
        self._detach_arrays()

    def correct(self) -> Tensor:
        """``[condition, prompt]``: 1.0 where the prediction is right, NaN where gold is unknown."""
        right = (self.predictions == self.gold).double()
        return torch.where(self.gold >= 0, right, math.nan)

    def reweighting(self, run: int = 0) -> AnchorReweighting:
        """The fitted betas of one run as a module (compose its hooks with any later run)."""
        if not 0 <= run < self.n_runs:
            raise ReweightingError(f"run={run}; expected 0 <= run < {self.n_runs}")
        return AnchorReweighting.from_beta(
            self.betas[run], renormalise=bool(self.settings.get("renormalise"))
        )

    def summary_frame(self, *, level: float = 0.95) -> pd.DataFrame:
        """Accuracy per condition: mean over runs; bootstrap CI over runs (>= 2) or prompts."""
        means = self._run_means(self.correct(), level)
        return pd.DataFrame(
            {
                "condition": CONDITIONS,
                "metric": "accuracy",
                "mean": means.mean.numpy(),
                "ci_low": means.ci_low.numpy(),
                "ci_high": means.ci_high.numpy(),
                "ci_over": means.ci_over,
                "n_runs": self.n_runs,
                "n_prompts": int(self.run.shape[0]),
            }
        )

    def to_frame(self) -> pd.DataFrame:
        """Long form: one row per (condition, prompt)."""
        correct, runs = self.correct(), [self.run_names[r] for r in self.run.tolist()]
        return pd.concat(
            [
                pd.DataFrame(
                    {
                        "condition": name,
                        "run": runs,
                        "prompt": np.arange(len(runs)),
                        "prediction": self.predictions[i].numpy(),
                        "gold": self.gold[i].numpy(),
                        "correct": correct[i].numpy(),
                    }
                )
                for i, name in enumerate(CONDITIONS)
            ],
            ignore_index=True,
        )

    def summary(self, *, level: float = 0.95) -> dict[str, Any]:
        """JSON-safe summary (what ``reweighting.json`` holds)."""
        return {
            "schema": SCHEMA,
            "settings": self.settings,
            "runs": list(self.run_names),
            "accuracy": self.summary_frame(level=level).to_dict(orient="records"),
            "training_loss": {n: self.losses[i].tolist() for i, n in enumerate(self.run_names)},
        }

    @classmethod
    def _check_concat(cls, results: Sequence[ReweightingResult], names: tuple[str, ...]) -> None:
        if len(set(names)) != len(names) or len({tuple(r.betas.shape[1:]) for r in results}) != 1:
            raise ReweightingError(
                f"cannot concat runs {names}: expected unique run names and one beta shape"
            )


def run_reweighting(
    model: Any,
    prompts: ReweightingPrompts,
    *,
    run_name: str | None = None,
    epochs: int = 10,
    lr: float = 0.01,
    train_batch_size: int = 1,
    batch_size: int = 8,
    seed: int | None = None,
    renormalise: bool = False,
    label_token_policy: Policy = "single",
    progress: bool = True,
) -> ReweightingResult:
    """Fit betas on ``prompts.train``; evaluate vanilla 1-shot, vanilla k-shot and re-weighted.

    Example:
        >>> task = get_task("synthetic-k3")  # doctest: +SKIP
        >>> sets = reweighting_prompts(task, (), (), seed=42, n_examples=50)  # doctest: +SKIP
        >>> run_reweighting(load_model("planted-anchor"), sets).summary_frame()  # doctest: +SKIP

    Args:
        model: a TransformerLens model with live attention hooks.
        prompts: the seed's prompt sets (:func:`reweighting_prompts`).
        run_name: the run's name in pooled results (default ``"seed-<seed>"``, the CLI's).
        epochs, lr, train_batch_size, renormalise: as for :func:`fit_reweighting`.
        seed: the training order's seed (:func:`fit_reweighting`); default the prompts' own
            sampling seed (``prompts.seed``), as ``anchor-flow run`` and ``anchor-flow
            reweight`` pass it, so a Python loop over seeds reproduces their numbers.
        batch_size: prompts per evaluation forward pass (results do not depend on it).
        label_token_policy: multi-token label words (see ``tokenize_prompts``).
        progress: show progress bars.
    """
    if seed is None:
        if prompts.seed is None:
            raise ReweightingError(
                "seed=None and the prompt sets carry no seed; expected seed= (the CLI passes "
                "each paper seed) or prompt sets from reweighting_prompts"
            )
        seed = prompts.seed
    run_name = f"seed-{seed}" if run_name is None else run_name
    fit = fit_reweighting(
        model,
        prompts.train,
        epochs=epochs,
        lr=lr,
        batch_size=train_batch_size,
        seed=seed,
        renormalise=renormalise,
        label_token_policy=label_token_policy,
        progress=progress,
    )
    options: dict[str, Any] = {
        "batch_size": batch_size,
        "label_token_policy": label_token_policy,
        "progress": progress,
    }
    vanilla = run_icl(model, prompts.test, **options)
    k_shot_prompts = prompts.k_shot
    k_shot = run_icl(model, k_shot_prompts, **options)
    if k_shot.n_prompts != vanilla.n_prompts:
        raise ReweightingError(
            f"{k_shot.n_prompts} k-shot prompts but {vanilla.n_prompts} test prompts; expected "
            "the same queries"
        )
    reweighted = evaluate_reweighting(model, fit.reweighting, prompts.test, **options)
    adapter = adapt(model)
    settings = {
        "model": adapter.name,
        "tl_class": adapter.kind,
        "epochs": epochs,
        "lr": lr,
        "train_batch_size": train_batch_size,
        "train_prompts": len(prompts.train),
        # Counted in the prompts that ran, not taken from the configuration.
        "k_shot_shots": demonstrations_per_class(k_shot_prompts),
        "test_shots": demonstrations_per_class(prompts.test),
        "renormalise": renormalise,
        "seed": seed,
        "label_token_policy": label_token_policy,
        "prepend_bos": vanilla.settings["prepend_bos"],
        "n_parameters": fit.reweighting.beta.numel(),
    }
    return ReweightingResult(
        predictions=torch.stack([vanilla.predictions, k_shot.predictions, reweighted.predictions]),
        gold=torch.stack([vanilla.gold, k_shot.gold, reweighted.gold]),
        run=torch.zeros(vanilla.n_prompts, dtype=torch.long),
        run_names=(run_name,),
        betas=fit.reweighting.beta.detach()[None],
        losses=fit.losses[None],
        settings=settings,
    )
