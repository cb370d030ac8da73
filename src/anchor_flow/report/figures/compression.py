"""Plotly figures of context compression (paper §3.2, Table 2 and Table 3; PAPER.md §5.3–5.4).

* :func:`plot_compression`: Table 2 as grouped bars: one group per method (ICL, Text_anchor,
  Hidden_random, Hidden_random-top, Hidden_anchor), one bar per metric (label loyalty, word
  loyalty, accuracy), whiskers = bootstrap interval.
* :func:`plot_speedup`: a
  :class:`~anchor_flow.applications.compression.speedup_result.SpeedupResult` (measured, amortised,
  floor and FLOP-ideal ratios) or named series vs demonstration length, with the paper's GPT2-XL /
  GPT-J points.

Functions take results (or plain numbers) and return a figure; they never run a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from anchor_flow.applications.compression.baselines import METRICS, CompressionResult
from anchor_flow.applications.compression.speedup_result import SpeedupResult
from anchor_flow.errors import AnchorFlowError

__all__ = ["METHOD_NAMES", "PAPER_SPEEDUPS", "plot_compression", "plot_speedup"]

METHOD_NAMES = {
    "icl": "ICL", "text_anchor": "Text_anchor", "hidden_random": "Hidden_random",
    "hidden_random_top": "Hidden_random-top", "hidden_anchor": "Hidden_anchor",
}  # fmt: skip
METRIC_NAMES = {"label_loyalty": "Label loyalty", "word_loyalty": "Word loyalty",
                "accuracy": "Accuracy"}  # fmt: skip
METRIC_COLOURS = {"label_loyalty": "#1f77b4", "word_loyalty": "#ff7f0e", "accuracy": "#2ca02c"}
_Series = dict[str, tuple[Sequence[Any], Sequence[Any]]]
# Table 3: L_demo -> speed-up, per model (SST-2, TREC, AGNews, EmoC).
PAPER_SPEEDUPS = {
    "GPT2-XL (paper)": ((18, 61, 151, 53), (1.1, 1.5, 2.5, 1.4)),
    "GPT-J (paper)": ((18, 61, 151, 53), (1.5, 2.2, 2.9, 1.9)),
}


def plot_compression(result: CompressionResult, *, level: float = 0.95) -> go.Figure:
    """Table 2 as grouped bars with interval whiskers.

    Example:
        >>> fig = plot_compression(result)  # doctest: +SKIP
        >>> [trace.name for trace in fig.data]  # doctest: +SKIP
        ['Label loyalty', 'Word loyalty', 'Accuracy']
    """
    frame = result.summary_frame(level=level)
    figure = go.Figure()
    for metric in METRICS:
        rows = frame[frame["metric"] == metric]
        figure.add_trace(
            go.Bar(
                x=[METHOD_NAMES.get(m, m) for m in rows["method"]], y=rows["mean"].tolist(),
                name=METRIC_NAMES[metric], marker={"color": METRIC_COLOURS[metric]},
                error_y={"type": "data", "symmetric": False,
                         "array": (rows["ci_high"] - rows["mean"]).tolist(),
                         "arrayminus": (rows["mean"] - rows["ci_low"]).tolist()},
                hovertemplate=f"{METRIC_NAMES[metric]}<br>%{{x}}: %{{y:.3f}}<extra></extra>",
            )
        )  # fmt: skip
    over = "seeds" if result.n_runs >= 2 else "prompts"
    policy = result.settings.get("position_policy", "original")
    figure.update_layout(
        barmode="group",
        title={"text": "Anchor-only context compression (Table 2)"
               f"<br><sup>n_prompts={result.n_prompts}, n_runs={result.n_runs}, positions: "
               f"{policy}; whiskers: {level:.0%} CI over {over}</sup>"},
        xaxis={"title": {"text": "Method"}},
        yaxis={"title": {"text": "Loyalty / accuracy"}, "range": [0, 1.05]},
        legend={"title": {"text": "Metric"}}, template="plotly_white",
    )  # fmt: skip
    return figure


def plot_speedup(
    result: SpeedupResult | Mapping[str, tuple[Sequence[int], Sequence[float]]],
    *,
    ideal: tuple[Sequence[int], Sequence[float]] | None = None,
    paper: bool = True,
) -> go.Figure:
    """Speed-up (full prompt time / compressed query time) vs demonstration length.

    Given a :class:`~anchor_flow.applications.compression.speedup_result.SpeedupResult`: the
    measured speed-up (cache build excluded, as the paper), the amortised one, the floor (query
    alone) and the FLOP-ideal ratio per group. A mapping ``name -> (lengths, speed-ups)`` of series
    (e.g. several models) is drawn as given, with ``ideal`` dashed.

    Example:
        >>> fig = plot_speedup({"GPT2-small (CPU)": ([18, 61], [1.7, 3.7])})
        >>> [trace.name for trace in fig.data]
        ['GPT2-small (CPU)', 'GPT2-XL (paper)', 'GPT-J (paper)']

    Args:
        result: a speed-up result, or named series.
        ideal: (lengths, FLOP-ideal ratios) for a mapping; a result carries its own.
        paper: add the paper's Table 3 points (GPT2-XL, GPT-J).
    """
    series: _Series
    bounds: _Series
    if isinstance(result, SpeedupResult):
        x = result.demo_length.tolist()
        series = {
            "Speed-up (cache pre-built)": (x, result.speedup.tolist()),
            "Amortised (incl. cache build)": (x, result.amortised_speedup.tolist()),
        }
        bounds = {"Floor (query alone)": (x, result.floor_ratio.tolist()),
                  "FLOP-ideal": (x, result.flop_ideal.tolist())}  # fmt: skip
        settings = result.settings
        subtitle = (f"<br><sup>{settings.get('model', '')} ({settings.get('tl_class', '')}), "
                    f"{settings.get('device', '')}, batch {settings.get('batch_size', '')}; "
                    "lengths in tokens before the query</sup>")  # fmt: skip
    else:
        series = dict(result)
        bounds = {} if ideal is None else {"FLOP-ideal": ideal}
        subtitle = ""
    for name, (x_values, y_values) in {**series, **bounds}.items():
        if len(x_values) != len(y_values) or not len(x_values):
            raise AnchorFlowError(
                f"series {name!r} has {len(x_values)} lengths and {len(y_values)} speed-ups; "
                "expected the same non-zero number"
            )
    figure = go.Figure()

    def add(name: str, x: Sequence[Any], y: Sequence[Any], **style: Any) -> None:
        order = sorted(range(len(x)), key=lambda i: x[i])
        # The FLOP-ideal ratio (up to ~20x) has its own axis on the right: on the measured
        # speed-ups' axis it would squash them into the bottom tenth.
        axis = {"yaxis": "y2"} if name == "FLOP-ideal" else {}
        figure.add_trace(go.Scatter(x=[x[i] for i in order], y=[y[i] for i in order],
                                    name=name, mode="lines+markers", **axis, **style))  # fmt: skip

    for name, (x_values, y_values) in series.items():
        add(name, x_values, y_values)
    if paper:
        for name, (x_values, y_values) in PAPER_SPEEDUPS.items():
            add(name, x_values, y_values, line={"dash": "dot"})
    styles = {"FLOP-ideal": {"dash": "dash", "color": "grey"},
              "Floor (query alone)": {"dash": "dashdot", "color": "black"}}  # fmt: skip
    for name, (x_values, y_values) in bounds.items():
        add(name, x_values, y_values, line=styles[name])
    figure.update_layout(
        title={"text": "Hidden_anchor speed-up vs demonstration length (Table 3)" + subtitle},
        xaxis={"title": {"text": "Demonstration length L_demo (tokens)"}},
        yaxis={"title": {"text": "Speed-up (×)"}, "rangemode": "tozero"},
        template="plotly_white",
        legend={"x": 1.08},
    )
    if "FLOP-ideal" in bounds:
        figure.update_layout(yaxis2={
            "title": {"text": "FLOP-ideal ratio (×, grey dashed)"}, "overlaying": "y",
            "side": "right", "rangemode": "tozero", "showgrid": False, "tickformat": ".1f",
        })  # fmt: skip
    return figure
