"""Label loyalty and word loyalty (paper §2.2 and §3.2; PAPER.md §2 and §5.2).

Two experiments compare a changed model or prompt with the unchanged one on the same
prompts: isolating the label words (:mod:`anchor_flow.analysis.isolation`) and compressing the
context (:mod:`anchor_flow.applications.compression.baselines`). Both report, per prompt,

* **label loyalty**: the label-restricted prediction is unchanged (the official
  ``accuracy_score(argmax probs_orig, argmax probs_iso)``);
* **word loyalty**: the Jaccard similarity of the top-k full-vocabulary tokens at the target;
* **accuracy** of the changed run.

:class:`LoyaltyResult` is what their result classes share: those three metrics per prompt and
per outcome (an isolation condition, a compression method) and the checks of their shapes.

Deliberately not here: running a model, the interventions, plotting.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor

from anchor_flow.errors import AnchorFlowError
from anchor_flow.results.runs import PooledResult

__all__ = ["METRICS", "LoyaltyResult", "label_loyalty", "word_loyalty"]

METRICS = ("label_loyalty", "word_loyalty", "accuracy")


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


class LoyaltyResult(PooledResult):
    """Mixin of pooled results that compare outcomes with a baseline, prompt by prompt.

    A subclass has the fields ``baseline_predictions [prompt]``, ``predictions [outcome,
    prompt]``, ``word_jaccard [outcome, prompt]``, ``gold [prompt]`` (-1: unknown), ``run``
    and ``run_names``; ``concat`` pools the outcome tables along their prompt axis.
    """

    _ON_AXIS_1 = ("predictions", "word_jaccard")
    baseline_predictions: Tensor
    predictions: Tensor
    word_jaccard: Tensor
    gold: Tensor

    def _check_outcome_shapes(self, n_outcomes: int, outcomes: str, axis: str) -> None:
        """Raise unless the fields have ``n_outcomes`` rows of the same prompts and valid runs.

        ``outcomes`` and ``axis`` name them in the message, e.g. ``"methods"``, ``"method"``.
        """
        n, m = int(self.baseline_predictions.shape[0]), n_outcomes
        want = {"predictions": (m, n), "word_jaccard": (m, n), "gold": (n,), "run": (n,)}
        bad = {k: tuple(getattr(self, k).shape) for k, s in want.items()
               if tuple(getattr(self, k).shape) != s}  # fmt: skip
        if bad or n == 0:
            raise self._ERROR(
                f"{type(self).__name__} with {m} {outcomes} and {n} prompts got shapes "
                f"{bad}; expected [{axis}, prompt] and [prompt] (and at least one prompt)"
            )
        self._check_run_indices()

    @property
    def n_prompts(self) -> int:
        return int(self.baseline_predictions.shape[0])

    def per_prompt(self, metric: str) -> Float[Tensor, "outcome prompt"]:
        """``"label_loyalty"``, ``"word_loyalty"`` or ``"accuracy"`` (NaN: gold unknown)."""
        if metric == "label_loyalty":
            return (self.predictions == self.baseline_predictions[None]).double()
        if metric == "word_loyalty":
            return self.word_jaccard.double()
        if metric == "accuracy":
            correct = (self.predictions == self.gold[None]).double()
            return torch.where(self.gold[None] >= 0, correct, math.nan)
        raise self._ERROR(f"metric={metric!r}; expected one of {METRICS}")

    def baseline_accuracy(self) -> Float[Tensor, " prompt"]:
        """Per prompt: the baseline's prediction is right (NaN where gold is unknown)."""
        correct = (self.baseline_predictions == self.gold).double()
        return torch.where(self.gold >= 0, correct, math.nan)
