"""Plotly figures of the isolation and deep-layer experiments (paper §2.2 Fig. 4/8, §2.3 Fig. 5).

* :func:`plot_isolation`: label and word loyalty per condition (label words vs random
  non-label words, first vs last k layers) as grouped bars with interval whiskers (Fig. 4/8).
* :func:`plot_deep`: AUCROC_l with its band and R_l (Eq. 5, right axis) per layer (Fig. 5).
* :func:`plot_flows_with_auc`: the normalised S_wp and S_pq of a saliency run with AUCROC_l of
  the deep-layer run on a second axis, to see the shallow/deep hand-over in one picture
  (not a figure of the paper).

Functions take result objects and return a :class:`plotly.graph_objects.Figure`; they never
run a model and never show a figure. Layers are 0-indexed, as everywhere in anchor_flow
(the paper's plots count from 1).
"""

from __future__ import annotations

import plotly.graph_objects as go
import torch

from anchor_flow.analysis.deep import DeepResult
from anchor_flow.analysis.flows import InformationFlow
from anchor_flow.analysis.isolation import METRICS, IsolationResult
from anchor_flow.errors import AnchorFlowError
from anchor_flow.report.figures.saliency import FLOW_COLOURS, _cells, _rgba

__all__ = ["plot_deep", "plot_flows_with_auc", "plot_isolation"]

METRIC_NAMES = {
    "label_loyalty": "Label loyalty",
    "word_loyalty": "Word loyalty",
    "accuracy": "Accuracy",
}
METRIC_COLOURS = {"label_loyalty": "#1f77b4", "word_loyalty": "#ff7f0e", "accuracy": "#2ca02c"}
AUC_COLOUR, R_COLOUR = "#2ca02c", "#9467bd"


def plot_isolation(
    result: IsolationResult,
    *,
    metrics: tuple[str, ...] = ("label_loyalty", "word_loyalty"),
    level: float = 0.95,
) -> go.Figure:
    """Grouped bars: one group per condition, one bar per metric, whiskers = interval.

    Example:
        >>> fig = plot_isolation(result)  # doctest: +SKIP
        >>> [trace.name for trace in fig.data]  # doctest: +SKIP
        ['Label loyalty', 'Word loyalty']

    Args:
        result: an isolation run (or several seeds pooled with ``IsolationResult.concat``).
        metrics: which of ``"label_loyalty"``, ``"word_loyalty"``, ``"accuracy"`` to draw.
        level: coverage of the whiskers (over seeds with >= 2 runs, else over prompts).
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise AnchorFlowError(f"metrics={metrics!r}; expected a non-empty subset of {METRICS}")
    frame = result.summary_frame(level=level)
    frame = frame[frame["control"] != "none"]
    figure = go.Figure()
    for metric in metrics:
        rows = frame[frame["metric"] == metric]
        names = [
            f"{'label words' if c == 'label' else 'random'}, {p} {k}"
            for c, p, k in zip(rows["control"], rows["position"], rows["n_layers"], strict=True)
        ]
        figure.add_trace(
            go.Bar(
                x=names,
                y=rows["mean"].tolist(),
                name=METRIC_NAMES[metric],
                marker={"color": METRIC_COLOURS[metric]},
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": (rows["ci_high"] - rows["mean"]).tolist(),
                    "arrayminus": (rows["mean"] - rows["ci_low"]).tolist(),
                },
                hovertemplate=f"{METRIC_NAMES[metric]}<br>%{{x}}: %{{y:.3f}}<extra></extra>",
            )
        )
    over = "seeds" if result.n_runs >= 2 else "prompts"
    figure.update_layout(
        barmode="group",
        title={
            "text": "Isolating label words vs random non-label words"
            f"<br><sup>first / last k layers; n_prompts={result.n_prompts}, "
            f"n_runs={result.n_runs}; whiskers: {level:.0%} CI over {over}</sup>"
        },
        xaxis={"title": {"text": "Isolated rows, layers"}},
        yaxis={"title": {"text": "Loyalty"}, "range": [0, 1.05]},
        legend={"title": {"text": "Metric"}},
        template="plotly_white",
    )
    return figure


def _band(x: list[int], low: list[float | None], high: list[float | None], colour: str,
          name: str) -> go.Scatter:  # fmt: skip
    return go.Scatter(
        x=x + x[::-1], y=high + low[::-1], fill="toself", fillcolor=_rgba(colour, 0.2),
        line={"width": 0}, mode="lines", name=name, showlegend=False, hoverinfo="skip",
    )  # fmt: skip


def r_defined(auc: torch.Tensor) -> bool:
    """Whether R_l (Eq. 5) reads as a share: the total ``AUCROC_l - 0.5`` over the layers
    is positive. Otherwise R_l is a share of a negative sum (it can reach 1.0 in a layer
    whose AUC is 0.01), and the report hides it."""
    excess = auc.double() - 0.5
    total = float(excess[torch.isfinite(excess)].sum())
    return total > 0


def plot_deep(result: DeepResult, *, ci: bool = True, level: float = 0.95) -> go.Figure:
    """AUCROC_l (left axis, with a band) and R_l (right axis) per layer (Fig. 5).

    Example:
        >>> fig = plot_deep(result)  # doctest: +SKIP
        >>> [trace.name for trace in fig.data]  # doctest: +SKIP
        ['AUCROC_l 95% CI', 'AUCROC_l', 'R_l']
    """
    layers = list(range(result.n_layers))
    figure = go.Figure()
    if ci:
        low, high = result.interval(level=level)
        figure.add_trace(
            _band(layers, _cells(low), _cells(high), AUC_COLOUR, f"AUCROC_l {level:.0%} CI")
        )
    figure.add_trace(
        go.Scatter(x=layers, y=_cells(result.auc()), mode="lines+markers", name="AUCROC_l",
                   line={"color": AUC_COLOUR, "width": 2},
                   hovertemplate="AUCROC_l, layer %{x}: %{y:.3f}<extra></extra>")
    )  # fmt: skip
    shown = r_defined(result.auc())
    r_values = _cells(result.r_curve()) if shown else [None] * result.n_layers
    figure.add_trace(
        go.Scatter(x=layers, y=r_values, mode="lines+markers", name="R_l",
                   yaxis="y2", line={"color": R_COLOUR, "width": 2, "dash": "dash"},
                   hovertemplate="R_l, layer %{x}: %{y:.3f}<extra></extra>")
    )  # fmt: skip
    figure.add_hline(y=0.5, line={"color": "#999", "dash": "dot"})
    if not shown and not bool(result.auc().isnan().all()):
        figure.add_annotation(
            text="R_l not shown: AUCROC_l lies below 0.5 on balance, so R_l would be a share "
            "of a negative sum", xref="paper", yref="paper", x=0.5, y=0.05, showarrow=False,
        )  # fmt: skip
    if bool(result.auc().isnan().all()):
        figure.add_annotation(
            text="AUCROC_l is undefined in every layer: the model predicts a single class on "
            "every prompt, so there is nothing to classify", xref="paper", yref="paper",
            x=0.5, y=0.5, showarrow=False,
        )  # fmt: skip
    # One shared range for both axes: each curve is drawn at its own value, so R_l is not
    # laid exactly over AUCROC_l by two autoscaled axes.
    r = [v for v in r_values if v is not None]
    shared = [min([0.0, *r]) - 0.05, max([1.0, *r]) + 0.05]
    figure.update_layout(
        title={"text": "Target attention to label words as a classifier of the prediction"
               f"<br><sup>n_prompts={result.n_prompts}, n_runs={result.n_runs}</sup>"},
        xaxis={"title": {"text": "Layer"}, "tickmode": "linear", "dtick": 1},
        yaxis={"title": {"text": "AUCROC_l"}, "range": shared},
        yaxis2={"title": {"text": "R_l"}, "overlaying": "y", "side": "right", "range": shared},
        hovermode="x unified", template="plotly_white",
    )  # fmt: skip
    return figure


def plot_flows_with_auc(flow: InformationFlow, deep: DeepResult) -> go.Figure:
    """Normalised S_wp and S_pq (left axis) with AUCROC_l (right axis) of the same setup.

    Example:
        >>> fig = plot_flows_with_auc(saliency.flows(), deep)  # doctest: +SKIP
        >>> [trace.name for trace in fig.data]  # doctest: +SKIP
        ['S_wp', 'S_pq', 'AUCROC_l']
    """
    if flow.n_layers != deep.n_layers:
        raise AnchorFlowError(
            f"flow has {flow.n_layers} layers but deep has {deep.n_layers}; expected the same model"
        )
    layers = list(range(flow.n_layers))
    shares = flow.normalised()
    figure = go.Figure()
    for index, name in enumerate(("S_wp", "S_pq")):
        figure.add_trace(
            go.Scatter(x=layers, y=_cells(shares[index]), mode="lines+markers", name=name,
                       line={"color": FLOW_COLOURS[name], "width": 2})
        )  # fmt: skip
    figure.add_trace(
        go.Scatter(x=layers, y=_cells(deep.auc()), mode="lines+markers", name="AUCROC_l",
                   yaxis="y2", line={"color": AUC_COLOUR, "width": 2, "dash": "dash"})
    )  # fmt: skip
    figure.update_layout(
        title={"text": "Shallow aggregation and deep reading: S_wp, S_pq and AUCROC_l"
               f"<br><sup>saliency prompts={flow.n_prompts}, deep prompts={deep.n_prompts}</sup>"},
        xaxis={"title": {"text": "Layer"}, "tickmode": "linear", "dtick": 1},
        yaxis={"title": {"text": "Relative saliency"}, "range": [-0.02, 1.02]},
        yaxis2={"title": {"text": "AUCROC_l"}, "overlaying": "y", "side": "right",
                "range": [-0.02, 1.02]},  # the same scale: no accidental overlap
        hovermode="x unified", template="plotly_white",
    )  # fmt: skip
    return figure
