"""Does this run show the paper's claims? One verdict per claim, against a control (issue 16).

The paper's four claims (§2, Fig. 1), each tested by a statistic whose control is built
into it, so that edge counts, the loss's position or chance cannot create the effect:

* **C1, shallow aggregation** (§2.1): in the shallow layers a label word draws more saliency
  per edge from the text before it than the non-label positions right next to it do (the
  nearest text or formatting row before and after each label word: they read the same
  text). Statistic: mean label-row per-edge saliency from text / the same for the matched
  rows, over prompts.
* **C2, deep reading** (§2.1): in the deep layers the target draws more saliency per edge
  from the label words than from its other earlier text and formatting positions (``<bos>``,
  an attention sink, is left out). Statistic: ratio of the two per-edge means.
* **C3, causal anchors** (§2.2): isolating the label words in the shallow layers lowers
  label loyalty more than isolating as many random rows there, and more than isolating the
  label words in as many deep layers. Statistic: the paired difference in loyalty (random
  minus label); the deep comparison must point the same way.
* **C4, deep prediction** (§2.3): the target's attention to each class's label words in a
  deep layer predicts the model's output: AUCROC_l above 0.5. Statistic: the deep layer whose
  AUCROC_l is furthest from 0.5 (the decisive one, so that a strong but negative relation
  is not hidden behind a weak positive one), among the deep layers whose label attention
  varies between prompts by more than a near-uniform one does; where none varies, the claim
  does not hold (a random network's AUC ranks attention differences of 1e-4).

Verdicts and margins: :mod:`anchor_flow.analysis.findings.verdicts`. Intervals are 95%
percentile bootstraps over prompts (C3: paired, the same prompts in every condition).

Pure: computed from the result objects of saliency, isolation and the deep-layer experiment;
runs no model, writes nothing, plots nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from anchor_flow.analysis.deep import DeepResult, classifier_auc
from anchor_flow.analysis.edges import FINE_GROUPS
from anchor_flow.analysis.findings.verdicts import (
    MARGINS,
    Finding,
    combine,
    control_at_floor,
    json_safe,
    safe_float,
    sentence,
    span,
    verdict_reason,
)
from anchor_flow.analysis.isolation import IsolationResult
from anchor_flow.analysis.saliency.result import SaliencyResult
from anchor_flow.errors import AnchorFlowError
from anchor_flow.icl.roles import Role
from anchor_flow.results.stats import bootstrap_interval

__all__ = ["causal_anchors", "deep_prediction", "deep_reading", "shallow_aggregation"]


def _ratio_of_means(values: Tensor) -> Tensor:
    return values[:, 0].nanmean(0, keepdim=True) / values[:, 1].nanmean(0, keepdim=True)


def _interval(
    values: Tensor, statistic: Callable[[Tensor], Tensor], n_resamples: int, seed: int
) -> tuple[float, float, float]:
    point = float(statistic(values)[0])
    if values.shape[0] < 2:
        return point, math.nan, math.nan
    low, high = bootstrap_interval(values, statistic, n_resamples=n_resamples, seed=seed)
    return point, float(low[0]), float(high[0])


def _text_counts(roles: Tensor) -> Tensor:
    """``[prompt, pos]`` number of text positions strictly before each position."""
    text = (roles == Role.TEXT).double()
    return text.cumsum(-1) - text


def _matched_rows(roles: Tensor) -> list[list[int]]:
    """Per prompt: the nearest text/format row before and after each label word."""
    control = (roles == Role.TEXT) | (roles == Role.FORMAT)
    out = []
    for p in range(roles.shape[0]):
        ok = torch.nonzero(control[p]).flatten().tolist()
        rows: set[int] = set()
        for i in torch.nonzero(roles[p] == Role.LABEL).flatten().tolist():
            before = [j for j in ok if j < i]
            after = [j for j in ok if j > i]
            rows.update(([before[-1]] if before else []) + ([after[0]] if after else []))
        out.append(sorted(rows))
    return out


def _c1_per_prompt(result: SaliencyResult, layers: Sequence[int]) -> Float[Tensor, "prompt 2"]:
    if result.text_row_sums is None:
        raise AnchorFlowError(
            "this saliency result has no text_row_sums (saved by an older version); rerun "
            "run_saliency to test claim C1"
        )
    roles = result.roles
    counts = _text_counts(roles)[:, None, :]
    per_edge = result.text_row_sums[:, list(layers)].double() / counts.where(counts > 0, math.nan)
    per_edge = per_edge.mean(1)  # [prompt, pos]: mean over the layers
    matched = _matched_rows(roles)
    values = torch.full((result.n_prompts, 2), math.nan, dtype=torch.float64)
    for p in range(result.n_prompts):
        label_rows = per_edge[p, roles[p] == Role.LABEL]
        control_rows = per_edge[p, matched[p]]
        values[p, 0] = label_rows.nanmean() if label_rows.numel() else math.nan
        values[p, 1] = control_rows.nanmean() if control_rows.numel() else math.nan
    return values


def shallow_aggregation(
    results: Sequence[SaliencyResult],
    layers: Sequence[int],
    *,
    subject: str = "model",
    n_resamples: int = 1000,
    seed: int = 0,
) -> Finding:
    """C1 from saliency results (one per seed): label rows vs matched rows, reading text.

    Example:
        >>> layers = claim_layers(result.n_layers)  # doctest: +SKIP
        >>> shallow_aggregation([result], layers.shallow).verdict  # doctest: +SKIP
        'holds'
    """
    values = torch.cat([_c1_per_prompt(r, layers) for r in results])
    values = values[~values.isnan().any(1)]
    point, low, high, control = _ratio_interval(values, n_resamples, seed)
    outcome, reason = verdict_reason(point, low, high, "ratio", int(values.shape[0]))
    reason = _floor_reason(point, control, reason) if outcome == "holds" else reason
    what = (f"in layers {span(layers)} a label word draws {point:.3g}x [{low:.3g}, {high:.3g}] "
            "the saliency per edge from the text before it that the positions next to it "
            "draw")  # fmt: skip
    return Finding("C1", subject, outcome, "label <- text / matched non-label rows <- text, "
                   "per edge (ratio)", point, low, high, 1.0,
                   "text and formatting rows next to each label word, <- text, per edge",
                   control, sentence("C1", outcome, what), int(values.shape[0]),
                   tuple(layers), reason=reason)  # fmt: skip


def _ratio_interval(
    values: Tensor, n_resamples: int, seed: int
) -> tuple[float, float, float, float]:
    """Ratio of the two columns' means with its bootstrap interval, and the control's mean
    (column 1); all NaN when no prompt is left."""
    if values.shape[0] == 0:
        return math.nan, math.nan, math.nan, math.nan
    point, low, high = _interval(values, _ratio_of_means, n_resamples, seed)
    return point, low, high, float(values[:, 1].mean())


def _floor_reason(point: float, control: float, reason: str) -> str:
    """The reason of a ratio whose control is at the float floor: say so, not the 1e24."""
    if not control_at_floor(point, control, 1.0):
        return reason
    return (f"the control is ≈ 0 ({control:.2g} per edge, below float32 resolution of the "
            "compared value), so the ratio is unbounded; the interval excludes 1")  # fmt: skip


def _groups(row: str, columns: tuple[str, ...]) -> list[int]:
    return [
        g
        for g, name in enumerate(FINE_GROUPS)
        if name.startswith(f"{row} <- ") and name.split(" <- ")[1].startswith(columns)
    ]


def deep_reading(
    results: Sequence[SaliencyResult],
    layers: Sequence[int],
    *,
    subject: str = "model",
    n_resamples: int = 1000,
    seed: int = 0,
) -> Finding:
    """C2 from saliency results: the target's per-edge saliency from label words vs the rest."""
    label, rest = _groups("target", ("label (",)), _groups("target", ("text", "format"))
    parts = []
    for r in results:
        sums, counts = r.group_sums[:, list(layers)].double(), r.group_counts.double()
        mean = [sums[:, :, g].sum(-1) / counts[:, g].sum(-1)[:, None] for g in (label, rest)]
        parts.append(torch.stack([m.mean(1) for m in mean], dim=1))
    values = torch.cat(parts)
    values = values[~values.isnan().any(1) & ~values.isinf().any(1)]
    point, low, high, control = _ratio_interval(values, n_resamples, seed)
    outcome, reason = verdict_reason(point, low, high, "ratio", int(values.shape[0]))
    reason = _floor_reason(point, control, reason) if outcome == "holds" else reason
    what = (f"in layers {span(layers)} the target draws {point:.3g}x [{low:.3g}, {high:.3g}] "
            "the saliency per edge from the label words that it draws from its other text and "
            "formatting positions")  # fmt: skip
    return Finding("C2", subject, outcome, "target <- label / target <- text and formatting, "
                   "per edge (ratio)", point, low, high, 1.0,
                   "the target's edges from text and formatting, per edge", control,
                   sentence("C2", outcome, what), int(values.shape[0]), tuple(layers),
                   reason=reason)  # fmt: skip


def _condition(result: IsolationResult, control: str, position: str, k: int) -> int | None:
    for index, cond in enumerate(result.conditions):
        if (cond.control, cond.position, cond.n_layers) == (control, position, k):
            return index
    return None


def causal_anchors(
    result: IsolationResult,
    n_shallow: int,
    *,
    subject: str = "model",
    n_resamples: int = 1000,
    seed: int = 0,
) -> Finding:
    """C3 from an isolation result: label vs random rows in the first k layers, and first vs last.

    ``k`` is the largest isolated layer count not above ``n_shallow`` (else the smallest).
    Paired over prompts: the same prompts go through every condition.
    """
    counts = sorted({c.n_layers for c in result.conditions})
    k = max([c for c in counts if c <= n_shallow], default=counts[0] if counts else 0)
    index = {f"{control} {position}": _condition(result, control, position, k)
             for control, position in (("label", "first"), ("random", "first"),
                                       ("label", "last"))}  # fmt: skip
    if index["label first"] is None or index["random first"] is None:
        raise AnchorFlowError(
            f"the isolation result has no 'label, first {k}' and 'random, first {k}' "
            "conditions; expected both to test claim C3"
        )
    loyalty = result.per_prompt("label_loyalty")
    shallow_label = loyalty[index["label first"]]
    against_random = loyalty[index["random first"]] - shallow_label
    deep = loyalty[index["label last"]] if index["label last"] is not None else None
    against_deep = (
        deep - shallow_label if deep is not None else torch.full_like(shallow_label, math.nan)
    )
    values = torch.stack([against_random, against_deep], dim=1)

    def mean(v: Tensor) -> Tensor:
        return v.mean(0)

    point, low, high = (math.nan,) * 3
    deep_point, deep_low, deep_high = (math.nan,) * 3
    if values.shape[0] >= 2:
        lo, hi = bootstrap_interval(values, mean, n_resamples=n_resamples, seed=seed)
        point, low, high = float(values[:, 0].mean()), float(lo[0]), float(hi[0])
        deep_point, deep_low, deep_high = float(values[:, 1].mean()), float(lo[1]), float(hi[1])
    n = int(values.shape[0])
    first, why_first = verdict_reason(point, low, high, "difference", n)
    second, why_second = (verdict_reason(deep_point, deep_low, deep_high, "difference", n)
                          if deep is not None else (first, why_first))  # fmt: skip
    outcome, reason = combine([("against random rows", first, why_first),
                               ("against deep isolation", second, why_second)])  # fmt: skip
    what = (f"isolating the label words in the first {k} layer(s) lowers label loyalty by "
            f"{point:+.3f} [{low:+.3f}, {high:+.3f}] more than isolating random rows, and by "
            f"{deep_point:+.3f} [{deep_low:+.3f}, {deep_high:+.3f}] more than isolating them in "
            f"the last {k}")  # fmt: skip
    details = {"k": k, "loyalty_label_first": float(shallow_label.mean()),
               "loyalty_random_first": float(loyalty[index["random first"]].mean()),
               "loyalty_label_last": None if deep is None else float(deep.mean()),
               "versus_deep": {"value": deep_point, "interval": [deep_low, deep_high],
                               "verdict": second}, "versus_random_verdict": first}  # fmt: skip
    drop = 1.0 - float(loyalty[index["random first"]].mean())
    return Finding("C3", subject, outcome, f"extra loyalty drop of label-word over random-row "
                   f"isolation, first {k} layer(s) (paired)", point, low, high, 0.0,
                   f"random rows isolated in the first {k} layer(s): loyalty drop", drop,
                   sentence("C3", outcome, what), int(values.shape[0]),
                   tuple(range(k)), json_safe(details), reason)  # fmt: skip


def deep_prediction(
    result: DeepResult,
    layers: Sequence[int],
    *,
    subject: str = "model",
    n_resamples: int = 200,
    seed: int = 0,
) -> Finding:
    """C4 from a deep-layer result: the decisive deep layer's AUCROC_l against 0.5.

    The decisive layer is the deep layer furthest from 0.5 among those whose label attention
    varies between prompts (:meth:`DeepResult.share_spread` at least ``MARGINS["share"]``).
    Where none varies that much the claim does not hold, whatever the AUC: the attention is
    near uniform and cannot be what the output is read from (a random-init network's AUC on
    differences of 1e-4 is anywhere in 0.3-0.85, stable as prompts are added).
    """
    auc, spread = result.auc(), result.share_spread()
    candidates = [(abs(float(auc[layer]) - 0.5), layer) for layer in layers
                  if not math.isnan(float(auc[layer]))]  # fmt: skip
    varying = [c for c in candidates if float(spread[c[1]]) >= MARGINS["share"]]
    if not candidates:
        text = ("Inconclusive: the model predicts a single class on these prompts, so "
                    "AUCROC_l is undefined in every deep layer.")  # fmt: skip
        return Finding("C4", subject, "inconclusive", "AUCROC_l of the decisive deep layer",
                       math.nan, math.nan, math.nan, 0.5, "chance", 0.5, text,
                       result.n_prompts, tuple(layers),
                       reason="a single predicted class: AUCROC_l is undefined")  # fmt: skip
    layer = max(varying or candidates)[1]
    predictions = result.predictions

    def statistic(rows: Tensor) -> Tensor:
        runs = result.run[rows]
        per_run = [
            classifier_auc(result.scores[rows[runs == r], layer], predictions[rows[runs == r]])
            for r in torch.unique(runs).tolist()
        ]
        return torch.tensor([per_run], dtype=torch.float64).nanmean(1)

    low, high = bootstrap_interval(torch.arange(result.n_prompts), statistic,
                                   n_resamples=n_resamples, seed=seed)  # fmt: skip
    point = float(auc[layer])
    outcome, reason = verdict_reason(point, float(low[0]), float(high[0]), "auc",
                                     result.n_prompts)  # fmt: skip
    what = (f"in layer {layer} the target's attention to each class's label words predicts the "
            f"model's output with AUCROC {point:.3f} [{float(low[0]):.3f}, {float(high[0]):.3f}]"
            " against 0.5 for chance")  # fmt: skip
    if not varying:
        outcome = "does not hold"
        reason = (f"deep attention does not vary between prompts (spread "
                  f"{float(spread[layer]):.2g} < {MARGINS['share']}), whatever its AUC "
                  f"{point:.3f}")  # fmt: skip
        what = (f"the target's attention hardly varies between prompts (its split between the "
                f"classes' label words has a standard deviation of {float(spread[layer]):.1e} "
                f"in layer {layer}, below {MARGINS['share']}), so it cannot carry the "
                f"prediction; ranked anyway, it gives AUCROC {point:.3f} "
                f"[{float(low[0]):.3f}, {float(high[0]):.3f}]")  # fmt: skip
    elif outcome == "inverted":
        what += " (it attends to the classes it does not predict)"
    return Finding("C4", subject, outcome, f"AUCROC_l of the decisive deep layer ({layer})",
                   point, float(low[0]), float(high[0]), 0.5, "chance", 0.5,
                   sentence("C4", outcome, what), result.n_prompts, tuple(layers),
                   {"layer": layer, "auc": [safe_float(a) for a in auc.tolist()],
                    "share_spread": [safe_float(s) for s in spread.tolist()]},
                   reason)  # fmt: skip
