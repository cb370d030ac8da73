"""The report's anchor-heads sections (issue 24): heatmaps, the top heads, the causal check.

Reads what the ``heads`` experiment wrote (``heads/flows/``, ``heads/blocking/``); runs no
model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from anchor_flow.analysis.findings import anchor_heads_frame, claim_layers
from anchor_flow.analysis.heads import HeadBlockingResult, HeadFlows
from anchor_flow.report.figures.heads import plot_head_blocking, plot_head_shares
from anchor_flow.report.html import ReportSection
from anchor_flow.report.sections import interval_table

__all__ = ["heads_report_sections", "load_heads_part"]

_SHARES = (
    "Which attention heads carry the paper's two flows (issue 24). Left: each head's share of "
    "its layer's text-to-label-word saliency (gathering), |A_h * dL/dA_h| summed over the edges "
    "from each label word to the text before it; right: its share of the layer's "
    "label-word-to-target saliency (reading). Shares are per prompt, averaged; blank where a "
    "layer has none of the flow. A share alone does not say the layer has the flow: the table "
    "lists, for the shallow layers' gathering heads and the deep layers' reading heads, the "
    "share with its 95% interval and the enrichment (the head's saliency per edge of the flow "
    "over its saliency per edge of all its edges). A head clears the margin when its share's "
    "interval lies above an even split (1/heads) and its enrichment is at least 1.25 with an "
    "interval above 1. The pairs (layer, head) index TransformerLens' hook_z and hook_pattern."
)
_CAUSAL = (
    "The causal check (claim H1, the head-level analogue of C3): the edges from each label word "
    "to its text are blocked in the gathering heads {gathering}, and the target's edges to the "
    "label words in the reading heads {reading} (mode '{mode}'); the control blocks the same "
    "edges in as many random heads of the same layers, drawn per prompt (paired). Bars: label "
    "loyalty, word loyalty (top-{top_k} Jaccard) and accuracy against the unblocked model, with "
    "95% intervals. Heads that matter drop loyalty well below the random heads'."
)


def heads_report_sections(flows: HeadFlows, blocking: HeadBlockingResult) -> list[ReportSection]:
    """The heatmaps with the top-heads table, and the causal check with its table."""
    layers = claim_layers(flows.n_layers, flows.settings.get("claim_layers", {}).get(
        "fraction", 1 / 3))  # fmt: skip
    top = pd.concat([anchor_heads_frame(flows, "gathering", layers.shallow).head(5),
                     anchor_heads_frame(flows, "reading", layers.deep).head(5)])  # fmt: skip
    table = pd.DataFrame({
        "kind": top["kind"], "rank": top["rank"], "(layer, head)":
        [f"({a}, {b})" for a, b in zip(top["layer"], top["head"], strict=True)],
        "share [95% CI]": [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi
                           in zip(top["share"], top["ci_low"], top["ci_high"], strict=True)],
        "enrichment [95% CI]": [f"{m:.3g} [{lo:.3g}, {hi:.3g}]" for m, lo, hi in zip(
            top["enrichment"], top["enrichment_ci_low"], top["enrichment_ci_high"],
            strict=True)],
        "clears margin": top["clears_margin"],
    })  # fmt: skip
    text = _CAUSAL.format(gathering=list(blocking.gathering_heads),
                          reading=list(blocking.reading_heads),
                          mode=blocking.settings.get("mode", "renormalise"),
                          top_k=blocking.settings.get("top_k", 5))  # fmt: skip
    causal = interval_table(blocking.summary_frame(), ["arm"], "metric")
    return [ReportSection("Anchor heads: who gathers, who reads", plot_head_shares(flows),
                          _SHARES, table=table.reset_index(drop=True)),
            ReportSection("Anchor heads: blocking them vs random heads",
                          plot_head_blocking(blocking), text, table=causal)]  # fmt: skip


def load_heads_part(folder: Path) -> tuple[list[ReportSection], list[tuple[str, Any]]]:
    """The sections and settings of a ``heads/`` folder."""
    flows = HeadFlows.load(folder / "flows")
    blocking = HeadBlockingResult.load(folder / "blocking")
    return heads_report_sections(flows, blocking), [("heads ", blocking.settings)]
