"""Findings (issue 16): does a run show the paper's claims C1-C4, against controls?

``verdicts`` holds the vocabulary (claims, verdicts, margins, shallow/deep layers,
:class:`Finding`); ``claims`` computes each claim's statistic from the result objects of
saliency, isolation and the deep-layer experiment. Pure: runs no model, plots nothing.

Part of its parent package; the parent's import rules apply.
"""

from anchor_flow.analysis.findings.claims import (
    causal_anchors,
    deep_prediction,
    deep_reading,
    shallow_aggregation,
)
from anchor_flow.analysis.findings.heads import HEAD_CLAIM, anchor_heads_frame, causal_heads
from anchor_flow.analysis.findings.verdicts import (
    CLAIMS,
    MARGINS,
    MIN_PROMPTS,
    NOT_DISTINGUISHED,
    VERDICTS,
    ClaimLayers,
    Finding,
    against_null,
    claim_layers,
    findings_frame,
    verdict,
    verdict_reason,
)

__all__ = [
    "CLAIMS",
    "HEAD_CLAIM",
    "MARGINS",
    "MIN_PROMPTS",
    "NOT_DISTINGUISHED",
    "VERDICTS",
    "ClaimLayers",
    "Finding",
    "against_null",
    "anchor_heads_frame",
    "causal_anchors",
    "causal_heads",
    "claim_layers",
    "deep_prediction",
    "deep_reading",
    "findings_frame",
    "shallow_aggregation",
    "verdict",
    "verdict_reason",
]
