"""Plotly figures of the applications: anchor re-weighting (paper §3.1, Table 1) and the
anchor-distance error diagnosis (paper §3.3, Fig. 6 and 14).

* :func:`plot_betas`: fitted beta as layer x head heatmaps, one panel per class (Eq. 12);
* :func:`plot_reweighting_accuracy`: Table 1 as bars with interval whiskers over seeds;
* :func:`plot_confusion`: predicted (Eq. 11) and real (App. K) confusion side by side;
* :func:`plot_confusion_correlation`: Spearman correlation of the two vs layer, one line per
  ``M`` (not in the paper, which compared the heatmaps by eye).

Functions take result objects and return a :class:`plotly.graph_objects.Figure`; they never
run a model and never show a figure. Layers are 0-indexed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from anchor_flow.applications.diagnosis.distances import DiagnosisResult
from anchor_flow.applications.reweighting.protocol import ReweightingResult
from anchor_flow.errors import AnchorFlowError
from anchor_flow.report.figures.saliency import _cells

__all__ = [
    "plot_betas",
    "plot_confusion",
    "plot_confusion_correlation",
    "plot_reweighting_accuracy",
    "tick_label",
]

CONDITION_COLOURS = ("#7f7f7f", "#1f77b4", "#d62728")


def plot_betas(
    result: ReweightingResult, *, run: int | None = None, class_names: Sequence[str] | None = None
) -> go.Figure:
    """Heatmaps of beta (layer x head), one panel per class; the mean over runs by default.

    Example:
        >>> fig = plot_betas(result)  # doctest: +SKIP
        >>> len(fig.data) == result.betas.shape[-1]  # doctest: +SKIP
        True
    """
    if run is not None and not 0 <= run < result.n_runs:
        raise AnchorFlowError(f"run={run}; expected 0 <= run < {result.n_runs} or None (mean)")
    beta = result.betas.double().mean(0) if run is None else result.betas[run].double()
    n_classes = beta.shape[-1]
    names = list(class_names) if class_names else [f"class {c}" for c in range(n_classes)]
    if len(names) != n_classes:
        raise AnchorFlowError(f"{len(names)} class names for {n_classes} classes")
    bound = float(beta.abs().max()) or 1.0
    figure = make_subplots(rows=1, cols=n_classes, subplot_titles=names, shared_yaxes=True)
    for c in range(n_classes):
        figure.add_trace(
            go.Heatmap(
                z=[_cells(row) for row in beta[:, :, c]],
                x=list(range(beta.shape[1])),
                y=list(range(beta.shape[0])),
                zmin=-bound,
                zmax=bound,
                colorscale="RdBu",
                reversescale=True,
                showscale=c == n_classes - 1,
                colorbar={"title": {"text": "beta"}},
                name=names[c],
                hovertemplate="layer %{y}, head %{x}: beta = %{z:.3f}<extra></extra>",
            ),
            row=1,
            col=c + 1,
        )
        figure.update_xaxes(title_text="Head", row=1, col=c + 1)
    figure.update_yaxes(title_text="Layer", row=1, col=1)
    figure.update_xaxes(tickmode="linear", dtick=1, tick0=0)
    figure.update_yaxes(tickmode="linear", dtick=1, tick0=0)
    title = "mean over runs" if run is None else result.run_names[run]
    figure.update_layout(title=f"Anchor re-weighting: beta per layer and head ({title})",
                         template="plotly_white")  # fmt: skip
    return figure


def plot_reweighting_accuracy(result: ReweightingResult, *, level: float = 0.95) -> go.Figure:
    """Accuracy of vanilla 1-shot, vanilla k-shot and re-weighted ICL with interval whiskers.

    Example:
        >>> [bar["x"] for bar in plot_reweighting_accuracy(result).data]  # doctest: +SKIP
    """
    frame = result.summary_frame(level=level)
    shots = result.settings.get("k_shot_shots")
    labels = [c.replace("k-shot", f"{shots}-shot") if shots else c for c in frame["condition"]]
    figure = go.Figure(
        go.Bar(
            x=labels,
            y=frame["mean"].tolist(),
            marker={"color": list(CONDITION_COLOURS)},
            error_y={
                "type": "data",
                "symmetric": False,
                "array": (frame["ci_high"] - frame["mean"]).tolist(),
                "arrayminus": (frame["mean"] - frame["ci_low"]).tolist(),
            },
            hovertemplate="%{x}: %{y:.3f}<extra></extra>",
        )
    )
    over = frame["ci_over"].iloc[0]
    figure.update_layout(
        title=f"Anchor re-weighting vs vanilla ICL ({result.n_runs} runs; "
        f"{int(level * 100)}% interval over {over})",
        yaxis={"title": {"text": "Accuracy"}, "range": [0, 1.05]},
        xaxis={"title": {"text": "Method"}},
        template="plotly_white",
    )
    return figure


def tick_label(name: str, limit: int = 14) -> str:
    """A class name short enough for an axis: at most ``limit`` characters, "…" if cut.

    Example:
        >>> tick_label("Entity"), tick_label("Description and abstract concept")
        ('Entity', 'Description a…')
    """
    name = name.strip()
    return name if len(name) <= limit else name[: limit - 1].rstrip() + "…"


def plot_confusion(
    result: DiagnosisResult,
    *,
    layer: int | None = None,
    n_components: int | None = None,
    run: int = 0,
) -> go.Figure:
    """Predicted (left) and real (right) confusion heatmaps with class names (Fig. 6).

    Example:
        >>> [t["type"] for t in plot_confusion(result).to_dict()["data"]]  # doctest: +SKIP
        ['heatmap', 'heatmap']
    """
    predicted = result.predicted_confusion(layer, n_components, run)
    real = result.real_confusion(run)
    names = list(result.class_names)
    # Classes sit at 0..C-1 with shortened tick labels (full names on hover): long names
    # would squash the plot area, and two names shortened alike must stay two classes.
    ticks = {"tickmode": "array", "tickvals": list(range(len(names))),
             "ticktext": [tick_label(n) for n in names], "automargin": True}  # fmt: skip
    rho = result.correlation(layer, n_components, run)
    layer = int(result.settings.get("layer", 0)) if layer is None else layer
    figure = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=[f"Predicted confusion (layer {layer}, Eq. 11)", "Real confusion (AUC)"],
    )
    eye = torch.eye(len(names), dtype=torch.bool)
    for col, (matrix, label) in enumerate(((predicted, "predicted"), (real, "real")), start=1):
        # The diagonal (a class against itself) means nothing: blank. Each panel has its own
        # scale over its off-diagonal values, so that differences between pairs show.
        matrix = matrix.double().masked_fill(eye, math.nan)
        finite = matrix[torch.isfinite(matrix)]
        low, high = (float(finite.min()), float(finite.max())) if finite.numel() else (0.0, 1.0)
        if high - low < 1e-9:
            low, high = low - 0.05, high + 0.05
        figure.add_trace(
            go.Heatmap(
                z=[_cells(row) for row in matrix],
                x=list(range(len(names))),
                y=list(range(len(names))),
                zmin=low,
                zmax=high,
                colorscale="Viridis",
                colorbar={"x": 0.45 if col == 1 else 1.02, "len": 0.9, "thickness": 12},
                text=[[f"{label}: {a} vs {b}" for b in names] for a in names],
                texttemplate="%{z:.2f}" if high - low >= 0.05 else "%{z:.4f}",
                name=label,
                hovertemplate="%{text} = %{z:.3f}<extra></extra>",
            ),
            row=1,
            col=col,
        )
    figure.update_xaxes(tickangle=-30, **ticks)
    figure.update_yaxes(autorange="reversed", **ticks)
    off = real.double().masked_fill(eye, math.nan)
    values = off[torch.isfinite(off)]
    same = bool(values.numel()) and float(values.max() - values.min()) < 1e-9
    note = f"; every real pair {float(values[0]):.3f}: nothing to rank" if same else ""
    figure.update_layout(
        title=f"Anchor distances vs real confusion ({result.run_names[run]}; Spearman "
        f"rho = {rho:.2f} over {len(names) * (len(names) - 1) // 2} pairs; lower = more "
        f"confused{note})"
    )
    return figure


def plot_confusion_correlation(
    result: DiagnosisResult, *, n_components: Sequence[int] = (2, 5, 10, 20)
) -> go.Figure:
    """Spearman correlation of predicted and real confusion vs layer, one line per ``M``
    (mean over runs).

    Example:
        >>> plot_confusion_correlation(result).layout.xaxis.title.text  # doctest: +SKIP
        'Layer'
    """
    frame = result.sensitivity_frame(n_components)
    if frame.empty:
        raise AnchorFlowError(
            f"no feasible n_components among {tuple(n_components)} for this result; expected "
            "values no larger than the number of prompts and the query dimension"
        )
    mean = frame.groupby(["n_components", "layer"], as_index=False)["spearman"].mean()
    figure = go.Figure()
    dashes = ("solid", "dash", "dot", "dashdot", "longdash")
    symbols = ("circle", "square", "diamond", "cross", "x")
    for index, (m, rows) in enumerate(mean.groupby("n_components")):
        # Distinct dashes and markers: lines with equal values would hide each other.
        figure.add_trace(
            go.Scatter(
                x=rows["layer"].tolist(),
                y=_cells(torch.tensor(rows["spearman"].to_numpy())),
                mode="lines+markers",
                name=f"M = {m}",
                line={"dash": dashes[index % len(dashes)]},
                marker={"symbol": symbols[index % len(symbols)], "size": 9 - index},
            )
        )
    finite = set(mean.loc[mean["spearman"].notna(), "layer"].tolist())
    missing = [layer for layer in range(int(mean["layer"].max()) + 1) if layer not in finite]
    if missing:
        figure.add_annotation(
            text=f"no value in layer(s) {', '.join(map(str, missing))}: not recorded, or the "
            "rank correlation is undefined there (a constant input)",
            xref="paper", yref="paper", x=0, y=-0.28, showarrow=False, xanchor="left",
        )  # fmt: skip
    figure.update_layout(
        title="Rank correlation of predicted and real confusion per layer",
        xaxis={"title": {"text": "Layer"}, "tickmode": "linear", "dtick": 1, "tick0": 0},
        yaxis={"title": {"text": "Spearman rho"}, "range": [-1.05, 1.05]},
        template="plotly_white",
        margin={"b": 110},
    )
    return figure
