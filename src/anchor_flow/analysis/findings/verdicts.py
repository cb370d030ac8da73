"""Verdicts of the findings (issue 16): claims, layers, margins, :class:`Finding`.

Verdicts use a 95% percentile-bootstrap interval over prompts and a margin of practical
relevance (:data:`MARGINS`: a ratio of 1.25, a loyalty difference of 0.05, an AUC 0.05 from
chance; for C4 also deep attention whose split between the classes varies by 0.01):
``"holds"`` when the interval excludes no effect on the paper's side and the estimate clears
the margin; ``"inverted"`` the same on the opposite side; ``"does not hold"`` when the
interval rules out an effect as large as the margin on either side (also when it is
significant but smaller than the margin, and for C4 when no deep layer's attention varies
enough); otherwise ``"inconclusive"`` (a wide interval, too few prompts, or an undefined
statistic). Shallow and deep layers follow :func:`claim_layers`
(first and last third by default). Pure; the statistics themselves are in
:mod:`anchor_flow.analysis.findings.claims`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd

from anchor_flow.errors import AnchorFlowError

__all__ = [
    "CLAIMS",
    "MARGINS",
    "VERDICTS",
    "ClaimLayers",
    "Finding",
    "claim_layers",
    "findings_frame",
    "verdict",
]

CLAIMS = {
    "C1": "shallow layers: label words aggregate the text before them",
    "C2": "deep layers: the target reads the label words",
    "C3": "shallow label words are causal anchors",
    "C4": "deep target-to-label attention predicts the output",
    "H1": "the anchor heads carry the label-word flow causally",
}
VERDICTS = ("holds", "does not hold", "inverted", "inconclusive")
MARGINS = {"ratio": 1.25, "difference": 0.05, "auc": 0.05, "share": 0.01}
"""The smallest effect that counts: a ratio of 1.25, a loyalty difference of 0.05, an AUC
0.05 away from 0.5; for C4 also a split of the target's label attention between the classes
that varies between prompts by at least 0.01 (standard deviation of a class's share,
:meth:`~anchor_flow.analysis.deep.DeepResult.share_spread`): AUCROC_l ranks differences of any
size, and a random network's near-uniform attention ranks by differences of 1e-4."""

Kind = Literal["ratio", "difference", "auc"]
_NO_EFFECT = {"ratio": 1.0, "difference": 0.0, "auc": 0.5}


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
        }  # fmt: skip


def verdict(value: float, low: float, high: float, kind: Kind) -> str:
    """The verdict for a statistic and its interval (see the module docstring).

    Example:
        >>> verdict(2.0, 1.5, 2.6, "ratio"), verdict(1.02, 0.95, 1.1, "ratio")
        ('holds', 'does not hold')
        >>> verdict(0.1, 0.05, 0.2, "auc"), verdict(0.6, 0.4, 0.8, "auc")
        ('inverted', 'inconclusive')
    """
    if any(math.isnan(x) for x in (value, low, high)):
        return "inconclusive"
    if kind == "ratio":
        if min(value, low, high) < 0:
            return "inconclusive"
        effect, lo, hi = (math.log(x) if x > 0 else -math.inf for x in (value, low, high))
        margin = math.log(MARGINS["ratio"])
    else:
        shift = _NO_EFFECT[kind]
        effect, lo, hi, margin = value - shift, low - shift, high - shift, MARGINS[kind]
    if lo > 0 and effect >= margin:
        return "holds"
    if hi < 0 and effect <= -margin:
        return "inverted"
    if hi < margin and lo > -margin:  # also when significant but too small to matter
        return "does not hold"
    return "inconclusive"


def sentence(claim: str, outcome: str, what: str) -> str:
    lead = {"holds": "The claim holds", "does not hold": "The claim does not hold",
            "inverted": "The opposite holds", "inconclusive": "Inconclusive"}[outcome]  # fmt: skip
    return f"{lead}: {what}."


def findings_frame(findings: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The compact table of the report: one row per (claim, subject) from ``to_dict()`` rows."""
    rows = []
    for f in findings:
        low, high = f["interval"]
        rows.append({
            "claim": f"{f['claim']}: {CLAIMS[f['claim']]}", "subject": f["subject"],
            "verdict": f["verdict"], "statistic": f["statistic"],
            "value [95% CI]": f"{_fmt(f['value'])} [{_fmt(low)}, {_fmt(high)}]",
            "no effect": _fmt(f["no_effect"]),
            "control": f"{f['control']}: {_fmt(f['control_value'])}",
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
