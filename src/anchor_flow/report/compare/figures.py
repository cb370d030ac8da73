"""Plotly figures of a :class:`RunComparison`: one colour per run, returned, never shown.

* :func:`plot_compare_flows`: normalised S_wp / S_pq / S_ww (Fig. 3) of every run over
  relative depth, with their 95% intervals as error bars;
* :func:`plot_compare_auc`: AUCROC_l (Fig. 5) the same way, chance at 0.5;
* :func:`plot_compare_isolation`: label-word vs random-row isolation (Fig. 4), shallow and
  deep, label and word loyalty, each run's shown layer count;
* :func:`plot_compare_heads`: the anchor heads experiment where runs have it: the causal
  arms (anchor heads vs random heads) and the top heads over relative depth.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from anchor_flow.report.compare.comparison import RunComparison

__all__ = [
    "plot_compare_auc",
    "plot_compare_flows",
    "plot_compare_heads",
    "plot_compare_isolation",
    "run_colours",
]

_FLOWS = ("S_wp", "S_pq", "S_ww")
_DEPTH = "relative depth: layer / (n_layers − 1)"


def run_colours(comparison: RunComparison) -> dict[str, str]:
    """One colour per run, in the runs' order."""
    palette = qualitative.Plotly + qualitative.D3
    return {label: palette[i % len(palette)] for i, label in enumerate(comparison.labels)}


def _errors(frame: pd.DataFrame, mean: str, low: str, high: str) -> dict[str, Any] | None:
    if frame[low].isna().all() or frame[high].isna().all():
        return None
    return {"type": "data", "array": (frame[high] - frame[mean]).tolist(),
            "arrayminus": (frame[mean] - frame[low]).tolist(), "thickness": 1,
            "width": 3}  # fmt: skip


def _empty(figure: go.Figure, text: str) -> go.Figure:
    figure.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    return figure


def _hover(frame: pd.DataFrame) -> list[str]:
    return [f"layer {int(layer)} of {int(n)}" if pd.notna(n) else f"layer {int(layer)}"
            for layer, n in zip(frame["layer"], frame["n_layers"], strict=True)]  # fmt: skip


def plot_compare_flows(comparison: RunComparison) -> go.Figure:
    """Normalised S_wp, S_pq, S_ww of every run over relative depth (one panel each).

    Example:
        >>> plot_compare_flows(compare_runs(["results/a", "results/b"]))  # doctest: +SKIP
    """
    figure = make_subplots(rows=1, cols=3, subplot_titles=_FLOWS, shared_yaxes=True)
    colours = run_colours(comparison)
    flows = comparison.flows
    for label in comparison.labels:
        for col, name in enumerate(_FLOWS, start=1):
            rows = flows[(flows["run"] == label) & (flows["flow"] == name)].sort_values("layer")
            if rows.empty:
                continue
            figure.add_trace(go.Scatter(
                x=rows["depth"].tolist(), y=rows["normalised"].tolist(), name=label,
                legendgroup=label, showlegend=col == 1, mode="lines+markers",
                line={"color": colours[label]}, text=_hover(rows),
                error_y=_errors(rows, "normalised", "normalised_ci_low", "normalised_ci_high"),
            ), row=1, col=col)  # fmt: skip
    figure.update_xaxes(title_text=_DEPTH, range=[-0.05, 1.05])
    figure.update_yaxes(title_text="share of the three flows", range=[0, 1], row=1, col=1)
    figure.update_layout(template="plotly_white", height=460,
                         title="Normalised flows over relative depth (95% CI)")  # fmt: skip
    return figure if len(flows) else _empty(figure, "no run holds flows.csv")


def plot_compare_auc(comparison: RunComparison) -> go.Figure:
    """AUCROC_l of every run over relative depth, with its 95% interval; chance dotted."""
    figure = go.Figure()
    colours = run_colours(comparison)
    deep = comparison.deep
    for label in comparison.labels:
        rows = deep[deep["run"] == label].sort_values("layer")
        if rows.empty:
            continue
        figure.add_trace(go.Scatter(
            x=rows["depth"].tolist(), y=rows["auc_roc"].tolist(), name=label,
            mode="lines+markers", line={"color": colours[label]}, text=_hover(rows),
            error_y=_errors(rows, "auc_roc", "ci_low", "ci_high"),
        ))  # fmt: skip
    figure.add_hline(y=0.5, line={"dash": "dot", "color": "#888"})
    figure.update_layout(template="plotly_white", height=440,
                         title="AUCROC_l over relative depth (95% CI; 0.5 = chance)",
                         xaxis={"title": _DEPTH, "range": [-0.05, 1.05]},
                         yaxis={"title": "AUCROC_l", "range": [0, 1]})  # fmt: skip
    return figure if len(deep) else _empty(figure, "no run holds deep.csv")


_ARMS = (("label", "shallow", "label words, shallow"), ("random", "shallow", "random rows, "
         "shallow"), ("label", "deep", "label words, deep"), ("random", "deep",
         "random rows, deep"))  # fmt: skip
_ARM_COLOURS = ("#d62728", "#ff9896", "#1f77b4", "#aec7e8")


def plot_compare_isolation(comparison: RunComparison) -> go.Figure:
    """Label loyalty and word loyalty after isolating label words or random rows, in the
    shallow and the deep layers, per run (each run's shown layer count in its name)."""
    metrics = ("label_loyalty", "word_loyalty")
    figure = make_subplots(rows=1, cols=2, subplot_titles=metrics, shared_yaxes=True)
    shown = comparison.isolation
    if len(shown):
        shown = shown[shown["shown"].astype(bool)]
    names = {}
    for label in comparison.labels:
        counts = shown[shown["run"] == label]["isolated_layers"].tolist() if len(shown) else []
        if counts:
            names[label] = f"{label} (k={int(counts[0])})"
    if not names:
        return _empty(figure, "no run holds isolation.csv")
    for (control, part, arm), colour in zip(_ARMS, _ARM_COLOURS, strict=True):
        for col, metric in enumerate(metrics, start=1):
            rows = shown[(shown["control"] == control) & (shown["depth_part"] == part)
                         & (shown["metric"] == metric)] if len(shown) else shown  # fmt: skip
            rows = rows.set_index("run").reindex(list(names)).reset_index()
            figure.add_trace(go.Bar(
                x=[names[r] for r in rows["run"]], y=rows["mean"].tolist(), name=arm,
                legendgroup=arm, showlegend=col == 1, marker_color=colour,
                error_y=_errors(rows, "mean", "ci_low", "ci_high"),
            ), row=1, col=col)  # fmt: skip
    figure.update_yaxes(title_text="loyalty (1 = unchanged)", range=[0, 1.05], row=1, col=1)
    figure.update_layout(template="plotly_white", height=460, barmode="group",
                         title="Isolating label words vs random rows (95% CI)")  # fmt: skip
    return figure


def plot_compare_heads(comparison: RunComparison) -> go.Figure:
    """Anchor heads: causal arms per run (left) and top heads' shares over depth (right)."""
    figure = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(
            "label loyalty: ablating anchor heads vs random heads",
            "top heads over depth",
        ),
    )
    colours = run_colours(comparison)
    causal = comparison.heads_causal
    for arm, colour in (("anchor_heads", "#d62728"), ("random_heads", "#7f7f7f")):
        rows = (
            causal[(causal["arm"] == arm) & (causal["metric"] == "label_loyalty")]
            if len(causal)
            else causal
        )
        if len(rows):
            figure.add_trace(go.Bar(x=rows["run"].tolist(), y=rows["mean"].tolist(), name=arm,
                                    marker_color=colour,
                                    error_y=_errors(rows, "mean", "ci_low", "ci_high")),
                             row=1, col=1)  # fmt: skip
    heads = comparison.heads
    for label in comparison.labels:
        for kind, symbol in (("gathering", "circle"), ("reading", "diamond")):
            rows = heads[(heads["run"] == label) & (heads["kind"] == kind)] if len(heads) else heads
            if rows.empty:
                continue
            figure.add_trace(go.Scatter(
                x=rows["depth"].tolist(), y=rows["share"].tolist(), mode="markers",
                name=f"{label}: {kind}", marker={"color": colours[label], "symbol": symbol,
                                                 "size": 10},
                text=[f"L{int(a)}H{int(b)}" for a, b in zip(rows["layer"], rows["head"],
                                                          strict=True)],
                error_y=_errors(rows, "share", "ci_low", "ci_high"),
            ), row=1, col=2)  # fmt: skip
    figure.update_xaxes(title_text=_DEPTH, range=[-0.05, 1.05], row=1, col=2)
    figure.update_yaxes(title_text="label loyalty", range=[0, 1.05], row=1, col=1)
    figure.update_yaxes(title_text="share", row=1, col=2)
    figure.update_layout(template="plotly_white", height=460, barmode="group",
                         title="Anchor heads (95% CI)")  # fmt: skip
    return figure if len(causal) or len(heads) else _empty(figure, "no heads experiment")
