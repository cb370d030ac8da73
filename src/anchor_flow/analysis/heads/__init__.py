"""Anchor heads (issue 24): which attention heads gather the text into the label words, and
which read the label words at the target.

``flows`` holds the per-head flows (:class:`HeadFlows`, from one saliency pass with
``head_flows=True``) and the rankings of gathering and reading heads; ``causal`` blocks the
label-word edges in chosen heads only, against as many random heads of the same layers
(:func:`run_head_blocking`, :class:`HeadBlockingResult`).

Part of its parent package; the parent's import rules apply.
"""

from anchor_flow.analysis.heads.causal import (
    ARMS,
    HeadBlockingResult,
    random_heads,
    run_head_blocking,
)
from anchor_flow.analysis.heads.flows import (
    HEAD_KINDS,
    HeadFlows,
    run_head_flows,
)

__all__ = [
    "ARMS",
    "HEAD_KINDS",
    "HeadBlockingResult",
    "HeadFlows",
    "random_heads",
    "run_head_blocking",
    "run_head_flows",
]
