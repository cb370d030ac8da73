"""Plotly figures of the information-flow analysis (paper §2.1; Fig. 3, 7 and 9).

* :func:`plot_flows` draws S_wp, S_pq and S_ww against the layer index, as the paper's
  Fig. 3 (SST-2, AGNews), Fig. 7 (TREC, EmoC) and Fig. 9 (two demonstrations per class) do,
  with bootstrap bands over prompts that the paper does not show.
* :func:`plot_saliency_heatmap` draws one prompt's saliency map ``I_l`` (Eq. 1) of one layer,
  with the role of every token marked along both axes.
* :func:`plot_group_matrix` draws the finer role-to-role flow behind the three paper flows.

Every function takes result objects and returns a :class:`plotly.graph_objects.Figure`. This
module never runs a model and never shows a figure; call ``fig.show()`` or
:func:`anchor_flow.report.html.write_report` for that. It does not reproduce Fig. 1 (drawn by the
authors with bertviz and hand-made highlights).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go
import torch

from anchor_flow.analysis.edges import FINE_GROUPS, PAPER_FLOWS, fine_group_flow
from anchor_flow.analysis.flows import InformationFlow
from anchor_flow.analysis.saliency.result import SaliencyResult
from anchor_flow.errors import AnchorFlowError
from anchor_flow.icl.roles import Role

__all__ = [
    "FLOW_COLOURS",
    "ROLE_COLOURS",
    "plot_flows",
    "plot_group_matrix",
    "plot_saliency_heatmap",
    "readable_token",
]

FLOW_COLOURS: dict[str, str] = {"S_wp": "#1f77b4", "S_pq": "#d62728", "S_ww": "#7f7f7f"}
"""One colour per paper flow, shared by every figure."""

FLOW_DESCRIPTIONS: dict[str, str] = {
    "S_wp": "text → label words",
    "S_pq": "label words → target",
    "S_ww": "all other edges",
}

ROLE_COLOURS: dict[Role, str] = {
    Role.BOS: "#000000",
    Role.TEXT: "#bcbd22",
    Role.FORMAT: "#9467bd",
    Role.LABEL: "#1f77b4",
    Role.LABEL_REST: "#17becf",
    Role.TARGET: "#d62728",
}
"""Marker colour of each real token role in :func:`plot_saliency_heatmap`."""

ROLE_NAMES: dict[Role, str] = {
    Role.BOS: "BOS",
    Role.TEXT: "text",
    Role.FORMAT: "format",
    Role.LABEL: "label word",
    Role.LABEL_REST: "label word (rest)",
    Role.TARGET: "target",
}
"""Legend name of each real token role."""

_SEPARATOR = " <- "


def _rgba(hex_colour: str, alpha: float) -> str:
    red, green, blue = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red},{green},{blue},{alpha})"


def _cells(values: torch.Tensor) -> list[float | None]:
    """A 1-D tensor as plotly data, NaN/inf as ``None`` (a gap or a blank cell)."""
    return [v if math.isfinite(v) else None for v in values.double().tolist()]


def _check_index(name: str, value: int, size: int, what: str) -> None:
    if not 0 <= value < size:
        raise AnchorFlowError(
            f"{name}={value} is out of range; expected 0 <= {name} < {size} ({size} {what})"
        )


def plot_flows(
    flow: InformationFlow,
    *,
    normalised: bool = True,
    ci: bool = True,
    level: float = 0.95,
    title: str | None = None,
) -> go.Figure:
    """Layer-wise curves of S_wp, S_pq and S_ww (the paper's Fig. 3/7/9).

    Example:
        >>> flow = InformationFlow(values=torch.rand(8, 3, 4))
        >>> [trace.name for trace in plot_flows(flow, ci=False).data]
        ['S_wp', 'S_pq', 'S_ww']

    Args:
        flow: per-prompt flows of a saliency run.
        normalised: plot the paper's relative sizes (the three mean flows divided by their sum
            per layer) instead of the mean saliency per edge.
        ci: add a shaded percentile-bootstrap band over prompts around every curve.
        level: coverage of the band.
        title: figure title; by default it says which quantity is plotted.

    Returns:
        One line trace per flow (named ``"S_wp"``, ``"S_pq"``, ``"S_ww"``), preceded by its
        band trace (``"S_wp 95% CI"``, ...) when ``ci`` is true.
    """
    if not 0.0 < level < 1.0:
        raise AnchorFlowError(f"level={level!r}: expected a coverage strictly between 0 and 1")
    centre = flow.normalised() if normalised else flow.mean()
    if ci:
        low, high = flow.interval(normalised=normalised, level=level)
    else:
        low = high = torch.full_like(centre, math.nan)
    layers = list(range(flow.n_layers))
    band_label = f"{level:.0%} CI"
    figure = go.Figure()
    for index, name in enumerate(PAPER_FLOWS):
        colour = FLOW_COLOURS[name]
        if ci:
            figure.add_trace(
                go.Scatter(
                    x=layers + layers[::-1],
                    y=_cells(high[index]) + _cells(low[index])[::-1],
                    fill="toself",
                    fillcolor=_rgba(colour, 0.2),
                    line={"width": 0},
                    mode="lines",
                    name=f"{name} {band_label}",
                    legendgroup=name,
                    showlegend=False,
                    hoverinfo="skip",
                )
            )
        interval_hover = (
            f"<br>{band_label} [%{{customdata[0]:.3g}}, %{{customdata[1]:.3g}}]" if ci else ""
        )
        figure.add_trace(
            go.Scatter(
                x=layers,
                y=_cells(centre[index]),
                customdata=[
                    [lo, hi] for lo, hi in zip(_cells(low[index]), _cells(high[index]), strict=True)
                ],
                mode="lines+markers",
                name=name,
                legendgroup=name,
                line={"color": colour, "width": 2},
                marker={"size": 5},
                hovertemplate=(
                    f"{name} ({FLOW_DESCRIPTIONS[name]})<br>layer %{{x}}: %{{y:.3g}}"
                    f"{interval_hover}<extra></extra>"
                ),
            )
        )
    quantity = "Relative saliency" if normalised else "Mean saliency per edge"
    heading = title if title is not None else f"{quantity} of the information flows"
    band_note = f", shaded: {band_label} over prompts" if ci else ""
    figure.update_layout(
        title={"text": f"{heading}<br><sup>n_prompts={flow.n_prompts}{band_note}</sup>"},
        xaxis={"title": {"text": "Layer"}, "tickmode": "linear", "dtick": 1},
        yaxis={"title": {"text": quantity}},
        legend={"title": {"text": "Flow"}},
        hovermode="x unified",
        template="plotly_white",
    )
    return figure


def readable_token(token: str) -> str:
    """A token as a tick label: visible whitespace markers, no plotly markup.

    Example:
        >>> readable_token(" great"), readable_token("Ġgreat"), readable_token("\\n")
        ('␣great', '␣great', '↵')
    """
    text = token.replace("Ġ", " ").replace("Ċ", "\n")
    text = text.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥").replace("\r", "")
    # Plotly reads tags such as <b> and <br> in labels; "<|endoftext|>" must stay literal.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") or "∅"


def plot_saliency_heatmap(
    result: SaliencyResult,
    *,
    prompt: int = 0,
    layer: int = 0,
    max_tokens: int | None = None,
) -> go.Figure:
    """The saliency map ``I_l(i, j)`` (Eq. 1) of one prompt and layer, token roles marked.

    Rows are the reading position (``query_pos`` i), columns the position read (``key_pos``
    j). Padding is left out; cells a causal model cannot fill (j > i) are blank. The role of
    every token is a coloured square above its column and left of its row, one legend
    entry per role.

    Example:
        >>> fig = plot_saliency_heatmap(result, prompt=0, layer=11)  # doctest: +SKIP

    Args:
        result: a saliency run with maps kept (``run_saliency(..., keep_maps=True)``).
        prompt: which prompt of ``result``.
        layer: which layer.
        max_tokens: show only the last ``max_tokens`` positions (the target row stays in
            view); ``None`` shows the whole prompt.
    """
    if result.maps is None:
        raise AnchorFlowError(
            "result.maps is None: this saliency result kept no maps; pass keep_maps=True to "
            "run_saliency to plot a saliency heatmap"
        )
    _check_index("prompt", prompt, result.n_prompts, "prompts")
    _check_index("layer", layer, result.n_layers, "layers")
    if max_tokens is not None and max_tokens < 1:
        raise AnchorFlowError(f"max_tokens={max_tokens}: expected a positive number or None")
    roles = result.roles[prompt]
    length = int((roles != Role.PAD).sum())
    tokens = result.str_tokens[prompt]
    if len(tokens) != length:
        raise AnchorFlowError(
            f"result.str_tokens[{prompt}] has {len(tokens)} tokens but result.roles marks "
            f"{length} real positions; expected equal lengths"
        )
    start = 0 if max_tokens is None else max(0, length - max_tokens)
    positions = list(range(start, length))
    labels = [f"{pos}:{readable_token(tokens[pos])}" for pos in positions]
    block = result.maps[prompt, layer, start:length, start:length].double()
    causal = torch.ones_like(block, dtype=torch.bool).tril()
    z = [_cells(row) for row in torch.where(causal, block, math.nan)]
    hover = [
        [f"{labels[i]} ← {labels[j]}" for j in range(len(positions))] for i in range(len(positions))
    ]

    figure = go.Figure(
        go.Heatmap(
            x=positions,
            y=positions,
            z=z,
            text=hover,
            colorscale="Viridis",
            colorbar={"title": {"text": "saliency"}},
            hoverongaps=False,
            hovertemplate="%{text}<br>saliency %{z:.3g}<extra></extra>",
            name="saliency",
            showlegend=False,
        )
    )
    strip = start - 1  # the role markers sit just outside the matrix
    row_roles = [Role(int(r)) for r in roles[start:length]]
    for role, colour in ROLE_COLOURS.items():
        members = [k for k, r in enumerate(row_roles) if r == role]
        if not members:
            continue
        figure.add_trace(
            go.Scatter(
                x=[positions[k] for k in members] + [strip] * len(members),
                y=[strip] * len(members) + [positions[k] for k in members],
                text=[labels[k] for k in members] * 2,
                mode="markers",
                marker={"symbol": "square", "size": 9, "color": colour},
                name=ROLE_NAMES[role],
                legendgroup=ROLE_NAMES[role],
                hovertemplate=f"%{{text}}<br>{ROLE_NAMES[role]}<extra></extra>",
            )
        )
    ticks = {"tickvals": positions, "ticktext": labels, "showgrid": False, "zeroline": False}
    shown = "" if start == 0 else f", last {len(positions)} of {length} tokens"
    figure.update_layout(
        title={
            "text": f"Saliency map, prompt {prompt}, layer {layer}"
            f"<br><sup>I_l(i, j): flow from token j (column) to token i (row){shown}</sup>"
        },
        xaxis={"title": {"text": "Key position j (read)"}, "range": [strip - 0.5, length - 0.5]}
        | ticks,
        yaxis={
            "title": {"text": "Query position i (reading)"},
            "range": [length - 0.5, strip - 0.5],
            "scaleanchor": "x",
        }
        | ticks,
        legend={"title": {"text": "Role"}, "orientation": "h", "yanchor": "bottom", "y": 1.02},
        template="plotly_white",
        margin={"t": 120},
    )
    return figure


def _split_group(group: str) -> tuple[str, str]:
    row, column = group.split(_SEPARATOR)
    return row, column


def plot_group_matrix(
    result: SaliencyResult | Sequence[SaliencyResult], *, layer: int | None = None
) -> go.Figure:
    """The finer role-to-role flow: mean saliency per edge of every fine edge group.

    With ``layer`` given, a reader x source matrix for that layer: rows are the reading
    position (label word, target, other token), columns what is read (names of
    :data:`anchor_flow.analysis.edges.FINE_GROUPS`). With ``layer=None``, a layers x groups matrix.
    Groups that have no edge in any prompt are blank. Several results (e.g. one per seed)
    are pooled over their prompts, as the flows are.

    Example:
        >>> fig = plot_group_matrix(result, layer=0)  # doctest: +SKIP
        >>> fig = plot_group_matrix([seed_42, seed_43])  # doctest: +SKIP
    """
    results = [result] if isinstance(result, SaliencyResult) else list(result)
    means = SaliencyResult.pooled_group_means(results)
    n_layers, n_prompts = results[0].n_layers, sum(r.n_prompts for r in results)
    pooled = f", {len(results)} runs pooled" if len(results) > 1 else ""
    flow_of = dict(zip(FINE_GROUPS, fine_group_flow(), strict=True))
    if layer is not None:
        _check_index("layer", layer, n_layers, "layers")
        rows = list(dict.fromkeys(_split_group(g)[0] for g in FINE_GROUPS))
        columns = list(dict.fromkeys(_split_group(g)[1] for g in FINE_GROUPS))
        index = {group: g for g, group in enumerate(FINE_GROUPS)}
        layer_means = _cells(means[layer])
        z = [[layer_means[index[f"{r}{_SEPARATOR}{c}"]] for c in columns] for r in rows]
        text = [
            [f"{r}{_SEPARATOR}{c} ({flow_of[f'{r}{_SEPARATOR}{c}']})" for c in columns]
            for r in rows
        ]
        x: list[str] = columns
        y: list[str] | list[int] = rows
        title = f"Role-to-role flow, layer {layer}"
        axes = ("Source (read)", -35, "Reader")
        hover = "%{text}<br>mean %{z:.3g}<extra></extra>"
    else:
        x, y = list(FINE_GROUPS), list(range(n_layers))
        z = [_cells(row) for row in means]
        text = [[f"{g} ({flow_of[g]})" for g in x] for _ in y]
        title = "Role-to-role flow per layer"
        axes = ("Edge group (reader <- source)", -45, "Layer")
        hover = "%{text}<br>layer %{y}: mean %{z:.3g}<extra></extra>"
    figure = go.Figure(
        go.Heatmap(
            x=x,
            y=y,
            z=z,
            text=text,
            texttemplate="%{z:.2g}" if layer is not None else None,
            colorscale="Viridis",
            colorbar={"title": {"text": "saliency per edge"}},
            hoverongaps=False,
            hovertemplate=hover,
            name="group means",
        )
    )
    figure.update_layout(
        title={"text": f"{title}<br><sup>n_prompts={n_prompts}{pooled}</sup>"},
        xaxis={"title": {"text": axes[0]}, "tickangle": axes[1]},
        yaxis={"title": {"text": axes[2]}},
    )
    if layer is not None:
        figure.update_yaxes(autorange="reversed")
    else:
        figure.update_yaxes(tickmode="linear", dtick=1)
        figure.update_layout(margin={"b": 160})
    figure.update_layout(template="plotly_white")
    return figure
