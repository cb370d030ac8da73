"""Figures of the anchor heads (issue 24): layer x head share heatmaps and the causal check.

Each function takes result objects and returns a ``plotly.graph_objects.Figure``; none runs a
model or calls ``.show()``.
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from anchor_flow.analysis.heads.causal import ARMS, HeadBlockingResult
from anchor_flow.analysis.heads.flows import HEAD_KINDS, HeadFlows
from anchor_flow.analysis.loyalty import METRICS

__all__ = ["plot_head_blocking", "plot_head_shares"]


def plot_head_shares(flows: HeadFlows) -> go.Figure:
    """Two layer x head heatmaps: each head's mean share of its layer's gathering flow (text ->
    label words) and reading flow (label words -> target); blank where a layer has none.

    Example:
        >>> fig = plot_head_shares(flows)  # doctest: +SKIP
        >>> [trace.type for trace in fig.data]  # doctest: +SKIP
        ['heatmap', 'heatmap']
    """
    kinds = list(HEAD_KINDS)
    fig = make_subplots(rows=1, cols=2, subplot_titles=[f"{k}: {HEAD_KINDS[k]}" for k in kinds],
                        horizontal_spacing=0.12)  # fmt: skip
    for column, kind in enumerate(kinds, start=1):
        shares = flows.shares(kind)
        per_run = [shares[flows.run == r].nanmean(0) for r in range(flows.n_runs)]
        mean = sum(per_run[1:], per_run[0]) / len(per_run)
        cells = [[None if v != v else float(v) for v in row] for row in mean.tolist()]
        fig.add_trace(go.Heatmap(
            z=cells, x=list(range(flows.n_heads)), y=list(range(flows.n_layers)),
            zmin=0.0, zmax=1.0, colorscale="Viridis", showscale=column == 2,
            colorbar={"title": "share"}, name=kind,
            hovertemplate="layer %{y}, head %{x}: share %{z:.3f}<extra></extra>",
        ), row=1, col=column)  # fmt: skip
        fig.update_xaxes(title_text="head", dtick=1, row=1, col=column)
        fig.update_yaxes(title_text="layer", dtick=1, row=1, col=column)
    fig.update_layout(title="Anchor heads: each head's share of its layer's flow", height=420)
    return fig


def plot_head_blocking(result: HeadBlockingResult) -> go.Figure:
    """Bars of label loyalty, word loyalty and accuracy with the anchor heads' label-word flow
    blocked vs as many random heads of the same layers, with 95% intervals."""
    frame = result.summary_frame()
    fig = go.Figure()
    for arm in ARMS:
        rows = frame[frame["arm"] == arm].set_index("metric").loc[list(METRICS)]
        fig.add_trace(go.Bar(
            name=arm.replace("_", " "), x=list(METRICS), y=rows["mean"].tolist(),
            error_y={"type": "data", "symmetric": False,
                     "array": (rows["ci_high"] - rows["mean"]).tolist(),
                     "arrayminus": (rows["mean"] - rows["ci_low"]).tolist()},
        ))  # fmt: skip
    fig.update_layout(barmode="group", title="Blocking the label-word flow in chosen heads",
                      yaxis={"title": "mean over prompts", "range": [0, 1.05]},
                      xaxis={"title": "metric"})  # fmt: skip
    return fig
