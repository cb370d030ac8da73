"""Verdicts of the findings (issue 16): claims, layers, margins, :class:`Finding`.

Verdicts use a 95% percentile-bootstrap interval over prompts and a margin of practical
relevance (:data:`MARGINS`: a ratio of 1.25, a loyalty difference of 0.05, an AUC 0.05 from
chance; for C4 also deep attention whose split between the classes varies by 0.01):
``"holds"`` when the interval excludes no effect on the paper's side and the estimate clears
the margin; ``"inverted"`` the same on the opposite side; ``"does not hold"`` when the
interval rules out an effect as large as the margin on either side (also when it is
significant but smaller than the margin, and for C4 when no deep layer's attention varies
enough); otherwise ``"inconclusive"`` (a wide interval, too few prompts, or an undefined
statistic). Fewer than :data:`MIN_PROMPTS` prompts is always ``"inconclusive"``: a percentile
bootstrap over a handful of prompts is too narrow to rule anything out. A claim that a
re-initialised copy of the model (the null model) also meets is ``"not distinguished from the
null"`` for the model (:func:`against_null`), never ``"holds"``. Every verdict carries a
one-line reason (:func:`verdict_reason`). Shallow and deep layers follow :func:`claim_layers`
(first and last third by default). Pure; the statistics themselves are in
:mod:`anchor_flow.analysis.findings.claims` (C1-C4) and
:mod:`anchor_flow.applications.findings` (the applications, A1-A3).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import pandas as pd

from anchor_flow.errors import AnchorFlowError

__all__ = [
    "CLAIMS",
    "MARGINS",
    "MIN_PROMPTS",
    "NOT_DISTINGUISHED",
    "VERDICTS",
    "ClaimLayers",
    "Finding",
    "against_null",
    "claim_layers",
    "findings_frame",
    "verdict",
    "verdict_reason",
]

CLAIMS = {
    "C1": "shallow layers: label words aggregate the text before them",
    "C2": "deep layers: the target reads the label words",
    "C3": "shallow label words are causal anchors",
    "C4": "deep target-to-label attention predicts the output",
    "H1": "the anchor heads carry the label-word flow causally",
    "A1": "anchor re-weighting raises accuracy (§3.1)",
    "A2": "anchor-only compression keeps the predictions (§3.2)",
    "A3": "anchor distances predict the confusions (§3.3)",
}
NOT_DISTINGUISHED = "not distinguished from the null"
VERDICTS = ("holds", "does not hold", "inverted", "inconclusive", NOT_DISTINGUISHED)
MARGINS = {"ratio": 1.25, "difference": 0.05, "auc": 0.05, "share": 0.01, "correlation": 0.3}
MIN_PROMPTS = 10
"""Below this many prompts every verdict is ``"inconclusive"``."""
"""The smallest effect that counts: a ratio of 1.25, a loyalty difference of 0.05, an AUC
0.05 away from 0.5; for C4 also a split of the target's label attention between the classes
that varies between prompts by at least 0.01 (standard deviation of a class's share,
:meth:`~anchor_flow.analysis.deep.DeepResult.share_spread`): AUCROC_l ranks differences of any
size, and a random network's near-uniform attention ranks by differences of 1e-4. For A3 a
Spearman correlation of 0.3."""

Kind = Literal["ratio", "difference", "auc", "correlation"]
_NO_EFFECT = {"ratio": 1.0, "difference": 0.0, "auc": 0.5, "correlation": 0.0}
FLOAT_FLOOR = 1e-7
"""A ratio's control counts as zero below this share of the compared value (float32's
resolution): the ratio then measures rounding, not an effect."""


@dataclass(frozen=True)
class ClaimLayers:
    """Which layers count as shallow and as deep: the first and last ``fraction`` of them.

    Example:
        >>> claim_layers(12)
        ClaimLayers(shallow=(0, 1, 2, 3), deep=(8, 9, 10, 11), fraction=0.3333333333333333)
    """

    shallow: tuple[int, ...]
    deep: tuple[int, ...]
    fraction: float

    def to_dict(self) -> dict[str, Any]:
        return {"rule": f"first and last ceil({self.fraction:.4g} x n_layers) layers",
                "fraction": self.fraction, "shallow": list(self.shallow),
                "deep": list(self.deep)}  # fmt: skip


def claim_layers(n_layers: int, fraction: float = 1 / 3) -> ClaimLayers:
    """The first and last ``ceil(fraction * n_layers)`` layers (at least one each).

    With one layer both sets are that layer.
    """
    if n_layers < 1:
        raise AnchorFlowError(f"n_layers={n_layers!r}; expected a positive integer")
    if not 0.0 < fraction <= 0.5:
        raise AnchorFlowError(f"fraction={fraction!r}; expected a share in (0, 0.5]")
    n = max(1, math.ceil(fraction * n_layers - 1e-9))
    return ClaimLayers(tuple(range(n)), tuple(range(n_layers - n, n_layers)), fraction)


@dataclass(frozen=True)
class Finding:
    """One claim's verdict for one model (the run's model or its null model).

    Attributes:
        claim: ``"C1"`` .. ``"C4"`` (:data:`CLAIMS`).
        subject: ``"model"`` or ``"null model"``.
        verdict: one of :data:`VERDICTS`.
        statistic: what ``value`` is, in words.
        value, ci_low, ci_high: the statistic and its 95% interval (NaN when undefined).
        no_effect: the value that means no effect (1 for a ratio, 0, or 0.5 for an AUC).
        control: what the claim is compared against, in words.
        control_value: the control's own value.
        sentence: the finding in one plain sentence.
        n_prompts: prompts behind the statistic.
        layers: the layers it looked at.
        details: further numbers (JSON-safe), e.g. C3's deep comparison.
        reason: why this verdict, in one line (e.g. "interval excludes 1 and clears 1.25").
    """

    claim: str
    subject: str
    verdict: str
    statistic: str
    value: float
    ci_low: float
    ci_high: float
    no_effect: float
    control: str
    control_value: float
    sentence: str
    n_prompts: int
    layers: tuple[int, ...]
    details: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    def __post_init__(self) -> None:
        if self.claim not in CLAIMS or self.verdict not in VERDICTS:
            raise AnchorFlowError(
                f"claim={self.claim!r}, verdict={self.verdict!r}; expected one of "
                f"{', '.join(CLAIMS)} and one of {', '.join(VERDICTS)}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (NaN and infinities become null), as ``results.json["findings"]`` holds."""

        def safe(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        return {
            "claim": self.claim, "subject": self.subject, "verdict": self.verdict,
            "statistic": self.statistic, "value": safe(self.value),
            "interval": [safe(self.ci_low), safe(self.ci_high)],
            "no_effect": self.no_effect, "control": self.control,
            "control_value": safe(self.control_value), "sentence": self.sentence,
            "n_prompts": self.n_prompts, "layers": list(self.layers), "details": self.details,
            "reason": self.reason,
            "control_at_floor": control_at_floor(self.value, self.control_value, self.no_effect),
        }  # fmt: skip


def verdict(value: float, low: float, high: float, kind: Kind, n_prompts: int | None = None) -> str:
    """The verdict for a statistic and its interval (see the module docstring).

    Example:
        >>> verdict(2.0, 1.5, 2.6, "ratio"), verdict(1.02, 0.95, 1.1, "ratio")
        ('holds', 'does not hold')
        >>> verdict(0.1, 0.05, 0.2, "auc"), verdict(0.6, 0.4, 0.8, "auc")
        ('inverted', 'inconclusive')
        >>> verdict(1.0, 0.99, 1.01, "ratio", n_prompts=3)
        'inconclusive'
    """
    return verdict_reason(value, low, high, kind, n_prompts)[0]


def _g(x: float) -> str:
    return f"{x:.3g}"


def verdict_reason(
    value: float, low: float, high: float, kind: Kind, n_prompts: int | None = None
) -> tuple[str, str]:
    """:func:`verdict` and its reason in one line, e.g. ``("holds", "interval [1.5, 2.6]
    excludes 1 and the estimate 2 clears 1.25")``."""
    no = _NO_EFFECT[kind]
    bar = MARGINS[kind]
    upper, lower = (bar, 1 / bar) if kind == "ratio" else (no + bar, no - bar)
    bars = f"{_g(lower)} and {_g(upper)}"
    if n_prompts is not None and n_prompts < MIN_PROMPTS:
        return "inconclusive", f"too few prompts ({n_prompts} < {MIN_PROMPTS})"
    if any(math.isnan(x) for x in (value, low, high)):
        return "inconclusive", "the statistic or its interval is undefined"
    if kind == "ratio" and min(value, low, high) < 0:
        return "inconclusive", "a ratio of means with a negative part"
    outside = (value < low and not math.isclose(value, low, rel_tol=1e-9)) or (
        value > high and not math.isclose(value, high, rel_tol=1e-9)
    )
    if outside:
        where = f"[{_g(low)}, {_g(high)}]"
        return "inconclusive", f"the estimate {_g(value)} lies outside its interval {where}"
    if kind == "ratio":
        effect, lo, hi = (math.log(x) if x > 0 else -math.inf for x in (value, low, high))
        margin = math.log(MARGINS["ratio"])
    else:
        effect, lo, hi, margin = value - no, low - no, high - no, MARGINS[kind]
    interval = f"[{_g(low)}, {_g(high)}]"
    if lo > 0 and effect >= margin:
        return (
            "holds",
            f"interval {interval} excludes {_g(no)} and {_g(value)} clears {_g(upper)}",
        )
    if hi < 0 and effect <= -margin:
        return "inverted", f"interval {interval} lies on the other side of {_g(no)}"
    if hi < margin and lo > -margin:  # also when significant but too small to matter
        if lo > 0 or hi < 0:
            return "does not hold", (f"significant but small: interval {interval} lies within "
                                     f"{bars}")  # fmt: skip
        return "does not hold", f"interval {interval} rules out effects beyond {bars}"
    if lo > 0 or hi < 0:
        side = "above" if lo > 0 else "below"
        return "inconclusive", (f"interval {interval} lies {side} {_g(no)}; the estimate "
                                f"{_g(value)} is within the bars {bars} but the interval "
                                "reaches past them")  # fmt: skip
    return "inconclusive", f"interval {interval} is too wide to decide (bars {bars})"


def combine(parts: Sequence[tuple[str, str, str]]) -> tuple[str, str]:
    """One verdict from several comparisons ``(name, verdict, reason)`` that must all agree:
    "holds" or "inverted" only when every one says so; any "does not hold" is enough for
    "does not hold"; otherwise "inconclusive"."""
    outcomes = [v for _, v, _ in parts]
    if "does not hold" in outcomes:
        name, _, why = next(p for p in parts if p[1] == "does not hold")
        return "does not hold", f"{name}: {why}"
    if len(set(outcomes)) == 1:
        return outcomes[0], "; ".join(f"{name}: {why}" for name, _, why in parts)
    return "inconclusive", "the comparisons disagree (" + "; ".join(
        f"{name}: {v}, {why}" for name, v, why in parts) + ")"  # fmt: skip


def control_at_floor(value: float, control: float, no_effect: float) -> bool:
    """A ratio (``no_effect`` 1) whose control is below :data:`FLOAT_FLOOR` of what it is
    compared with: the value is a huge number that measures rounding (e.g. 6e25)."""
    if no_effect != 1.0 or math.isnan(value):
        return False
    return math.isinf(value) or value >= 1 / FLOAT_FLOOR or control == 0.0


def against_null(findings: Sequence[Finding]) -> list[Finding]:
    """The findings with each model verdict checked against its null model's.

    Where the null model (a re-initialised copy, same prompts) also "holds" a claim, the
    model's "holds" becomes :data:`NOT_DISTINGUISHED`: a bar that a network that learned
    nothing clears is not evidence. The verdict before this check stays in
    ``details["verdict_without_null"]``.
    """
    null = {f.claim: f for f in findings if f.subject == "null model"}
    out = []
    for f in findings:
        other = null.get(f.claim)
        if (
            f.subject == "model"
            and other is not None
            and other.verdict == "holds"
            and f.verdict == "holds"
        ):
            reason = (f"the null model meets the bar too ({_g(other.value)} "
                      f"[{_g(other.ci_low)}, {_g(other.ci_high)}]; the model {_g(f.value)} "
                      f"[{_g(f.ci_low)}, {_g(f.ci_high)}])")  # fmt: skip
            details = {**f.details, "verdict_without_null": f.verdict}
            what = f.sentence.split(": ", 1)[-1].rstrip(".")
            text = (f"Not distinguished from the null: {what}; but a re-initialised copy of the "
                    "model meets the bar too.")  # fmt: skip
            f = replace(f, verdict=NOT_DISTINGUISHED, reason=reason, details=details,
                        sentence=text)  # fmt: skip
        out.append(f)
    return out


def sentence(claim: str, outcome: str, what: str) -> str:
    lead = {"holds": "The claim holds", "does not hold": "The claim does not hold",
            "inverted": "The opposite holds", "inconclusive": "Inconclusive",
            NOT_DISTINGUISHED: "Not distinguished from the null"}[outcome]  # fmt: skip
    return f"{lead}: {what}."


def findings_frame(findings: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The compact table of the report: one row per (claim, subject) from ``to_dict()`` rows.

    Columns: claim, subject, verdict, reason (one line), statistic (with the value that means
    no effect), value [95% CI], control. A ratio whose control is at the floating-point floor
    (:func:`control_at_floor`) reads "control ≈ 0" instead of a number like 6e25; the raw
    value stays in ``results.json``.
    """
    rows = []
    for f in findings:
        low, high = f["interval"]
        value = f["value"]
        floor = f.get("control_at_floor")
        if floor is None:  # a record written before the flag existed
            floor = f["no_effect"] == 1.0 and f["verdict"] != "inconclusive" and (
                value is None or value >= 1 / FLOAT_FLOOR)  # fmt: skip
        if floor:
            cell = "≫ 1 (control ≈ 0)"
            control = f"{f['control']}: ≈ 0 ({_fmt(f['control_value'])})"
        else:
            cell = f"{_fmt(value)} [{_fmt(low)}, {_fmt(high)}]"
            control = f"{f['control']}: {_fmt(f['control_value'])}"
        rows.append({
            "claim": f"{f['claim']}: {CLAIMS.get(f['claim'], '')}", "subject": f["subject"],
            "verdict": f["verdict"], "reason": f.get("reason") or "",
            "statistic": f"{f['statistic']}; no effect = {_fmt(f['no_effect'])}",
            "value [95% CI]": cell, "control": control,
        })  # fmt: skip
    return pd.DataFrame(rows)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def safe_float(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return safe_float(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def span(layers: Sequence[int]) -> str:
    layers = list(layers)
    return str(layers[0]) if len(layers) == 1 else f"{layers[0]}-{layers[-1]}"
