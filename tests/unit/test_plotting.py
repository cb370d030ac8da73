"""Unit tests of anchor_flow.report.figures.saliency: figures from synthetic result objects, no
model."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from anchor_flow.analysis.edges import FINE_GROUPS, PAPER_FLOWS
from anchor_flow.analysis.flows import InformationFlow
from anchor_flow.analysis.saliency.result import SaliencyResult
from anchor_flow.errors import AnchorFlowError
from anchor_flow.icl.roles import Role
from anchor_flow.report.figures.saliency import (
    FLOW_COLOURS,
    ROLE_NAMES,
    plot_flows,
    plot_group_matrix,
    plot_saliency_heatmap,
    readable_token,
)

B, T, F, L, R, P = Role.BOS, Role.TEXT, Role.FORMAT, Role.LABEL, Role.LABEL_REST, Role.TARGET
ROLES = [
    [B, F, T, T, F, L, F, T, F, P, Role.PAD, Role.PAD],
    [B, F, T, F, L, R, F, T, T, T, F, P],
]
TOKENS = (
    ("<|endoftext|>", "Review:", " great", " film", "\nSentiment:", " Positive", "\n"),
    ("<|endoftext|>", "Review:", " dull", "\nSentiment:", " Neg", "ative", "\n"),
)


def make_flow(n_prompts: int = 6, n_layers: int = 4) -> InformationFlow:
    values = torch.rand(
        n_prompts, len(PAPER_FLOWS), n_layers, generator=torch.Generator().manual_seed(0)
    )
    return InformationFlow(values=values + 0.1)


def make_result(*, maps: bool = True, n_layers: int = 3) -> SaliencyResult:
    roles = torch.tensor([[int(r) for r in row] for row in ROLES])
    lengths = (roles != Role.PAD).sum(-1).tolist()
    str_tokens = tuple(
        TOKENS[row] + tuple(f" w{k}" for k in range(lengths[row] - len(TOKENS[row])))
        for row in range(2)
    )
    generator = torch.Generator().manual_seed(1)
    n_groups = len(FINE_GROUPS)
    counts = torch.ones(2, n_groups)
    sums = torch.rand(2, n_layers, n_groups, generator=generator)
    never = FINE_GROUPS.index("other <- label rest (earlier)")
    counts[:, never] = 0
    sums[:, :, never] = 0
    return SaliencyResult(
        group_sums=sums,
        group_counts=counts,
        label_probs=torch.tensor([[0.7, 0.3], [0.4, 0.6]]),
        gold=torch.tensor([0, 1]),
        roles=roles,
        str_tokens=str_tokens,
        maps=torch.rand(2, n_layers, 12, 12, generator=generator) if maps else None,
    )


def traces(figure: go.Figure) -> list[dict]:
    return figure.to_dict()["data"]


def as_array(values: list) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in values], dtype=float)


# ---- plot_flows --------------------------------------------------------------------------


@pytest.mark.parametrize("normalised", [True, False])
def test_flow_curves_equal_the_flow_statistics(normalised: bool) -> None:
    flow = make_flow()
    expected = flow.normalised() if normalised else flow.mean()
    lines = [t for t in traces(plot_flows(flow, normalised=normalised)) if t["mode"] != "lines"]
    assert [t["name"] for t in lines] == list(PAPER_FLOWS)
    for index, trace in enumerate(lines):
        assert trace["type"] == "scatter"
        assert list(trace["x"]) == list(range(flow.n_layers))
        np.testing.assert_allclose(as_array(trace["y"]), expected[index].numpy())
        assert trace["line"]["color"] == FLOW_COLOURS[trace["name"]]


def test_flow_axis_titles_and_prompt_count() -> None:
    flow = make_flow(n_prompts=7)
    layout = plot_flows(flow).to_dict()["layout"]
    assert layout["xaxis"]["title"]["text"] == "Layer"
    assert layout["yaxis"]["title"]["text"] == "Relative saliency"
    assert "n_prompts=7" in layout["title"]["text"]
    raw = plot_flows(flow, normalised=False, title="GPT2-XL").to_dict()["layout"]
    assert raw["yaxis"]["title"]["text"] == "Mean saliency per edge"
    assert raw["title"]["text"].startswith("GPT2-XL")


@pytest.mark.parametrize("normalised", [True, False])
def test_flow_bands_are_the_bootstrap_interval(normalised: bool) -> None:
    flow = make_flow()
    low, high = flow.interval(normalised=normalised, level=0.9)
    figure = plot_flows(flow, normalised=normalised, level=0.9)
    bands = [t for t in traces(figure) if t["name"].endswith("90% CI")]
    assert [t["name"] for t in bands] == [f"{name} 90% CI" for name in PAPER_FLOWS]
    for index, band in enumerate(bands):
        assert band["fill"] == "toself"
        assert band["legendgroup"] == PAPER_FLOWS[index]
        expected = torch.cat([high[index], low[index].flip(0)]).numpy()
        np.testing.assert_allclose(as_array(band["y"]), expected)


def test_flow_bands_absent_without_ci() -> None:
    data = traces(plot_flows(make_flow(), ci=False))
    assert [t["name"] for t in data] == list(PAPER_FLOWS)
    assert all("fill" not in t for t in data)


def test_flow_nan_layers_become_gaps() -> None:
    values = torch.rand(3, 3, 4) + 0.1
    values[:, 0, 2] = math.nan  # S_wp undefined in layer 2 for every prompt
    lines = traces(plot_flows(InformationFlow(values=values), ci=False))
    assert lines[0]["y"][2] is None


def test_flow_colours_match_across_figures() -> None:
    flow = make_flow()
    for figure in (plot_flows(flow), plot_flows(flow, normalised=False, ci=False)):
        colours = {t["name"]: t["line"]["color"] for t in traces(figure) if "fill" not in t}
        assert colours == FLOW_COLOURS


@pytest.mark.parametrize("level", [0.0, 1.0, 1.5])
def test_flow_bad_level(level: float) -> None:
    with pytest.raises(AnchorFlowError, match=rf"level={level}.*strictly between 0 and 1"):
        plot_flows(make_flow(), level=level)


# ---- plot_saliency_heatmap ---------------------------------------------------------------


@pytest.mark.parametrize(("prompt", "length"), [(0, 10), (1, 12)])
def test_heatmap_is_the_unpadded_map(prompt: int, length: int) -> None:
    result = make_result()
    assert result.maps is not None
    data = traces(plot_saliency_heatmap(result, prompt=prompt, layer=2))
    heatmap = data[0]
    assert heatmap["type"] == "heatmap"
    z = np.array([as_array(row) for row in heatmap["z"]])
    assert z.shape == (length, length)
    expected = result.maps[prompt, 2, :length, :length].double().numpy()
    lower = np.tril(np.ones((length, length), dtype=bool))
    np.testing.assert_allclose(z[lower], expected[lower])
    assert np.isnan(z[~lower]).all()  # key after query: no causal edge


def test_heatmap_axes_show_readable_tokens() -> None:
    figure = plot_saliency_heatmap(make_result(), prompt=0)
    layout = figure.to_dict()["layout"]
    ticks = layout["xaxis"]["ticktext"]
    assert ticks[:4] == ["0:&lt;|endoftext|&gt;", "1:Review:", "2:␣great", "3:␣film"]
    assert ticks[4] == "4:↵Sentiment:"
    assert layout["yaxis"]["ticktext"] == ticks
    assert len(set(ticks)) == len(ticks)
    assert "Query" in layout["yaxis"]["title"]["text"]
    assert "Key" in layout["xaxis"]["title"]["text"]


def test_heatmap_role_legend() -> None:
    data = traces(plot_saliency_heatmap(make_result(), prompt=1))
    markers = {t["name"]: t for t in data[1:]}
    expected_roles = [B, T, F, L, R, P]
    assert list(markers) == [ROLE_NAMES[r] for r in expected_roles]
    label = markers[ROLE_NAMES[Role.LABEL]]
    assert label["x"][0] == 4  # above column 4 ...
    assert label["y"][1] == 4  # ... and left of row 4
    assert all(t.get("showlegend", True) for t in markers.values())


def test_heatmap_max_tokens_keeps_the_last_positions() -> None:
    result = make_result()
    figure = plot_saliency_heatmap(result, prompt=1, max_tokens=5)
    heatmap = traces(figure)[0]
    assert list(heatmap["x"]) == [7, 8, 9, 10, 11]
    assert len(heatmap["z"]) == 5
    assert figure.to_dict()["layout"]["xaxis"]["ticktext"][-1] == "11:␣w4"


def test_heatmap_without_maps() -> None:
    with pytest.raises(AnchorFlowError, match="keep_maps=True"):
        plot_saliency_heatmap(make_result(maps=False))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": 2}, r"prompt=2 is out of range; expected 0 <= prompt < 2"),
        ({"prompt": -1}, r"prompt=-1 is out of range; expected 0 <= prompt < 2"),
        ({"layer": 3}, r"layer=3 is out of range; expected 0 <= layer < 3"),
        ({"max_tokens": 0}, r"max_tokens=0: expected a positive number"),
    ],
)
def test_heatmap_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(AnchorFlowError, match=message):
        plot_saliency_heatmap(make_result(), **kwargs)


def test_readable_token() -> None:
    assert readable_token(" a\tb\r\n") == "␣a⇥b↵"
    assert readable_token("Ċ") == "↵"
    assert readable_token("<b>&") == "&lt;b&gt;&amp;"
    assert readable_token("") == "∅"


# ---- plot_group_matrix -------------------------------------------------------------------


def test_group_matrix_one_layer() -> None:
    result = make_result()
    figure = plot_group_matrix(result, layer=1)
    heatmap = traces(figure)[0]
    assert heatmap["type"] == "heatmap"
    assert list(heatmap["y"]) == ["label", "target", "other"]
    assert len(heatmap["x"]) == 9
    means = result.group_means()[1]
    for r, row in enumerate(heatmap["y"]):
        for c, column in enumerate(heatmap["x"]):
            value = heatmap["z"][r][c]
            expected = float(means[FINE_GROUPS.index(f"{row} <- {column}")])
            if math.isnan(expected):
                assert value is None
            else:
                assert value == pytest.approx(expected)
    assert heatmap["z"][2][8] is None  # "other <- label rest (earlier)" never occurs
    assert figure.to_dict()["layout"]["yaxis"]["title"]["text"] == "Reader"


def test_group_matrix_all_layers() -> None:
    result = make_result()
    heatmap = traces(plot_group_matrix(result))[0]
    assert list(heatmap["x"]) == list(FINE_GROUPS)
    assert list(heatmap["y"]) == [0, 1, 2]
    z = np.array([as_array(row) for row in heatmap["z"]])
    np.testing.assert_allclose(z, result.group_means().numpy())


def test_group_matrix_bad_layer() -> None:
    with pytest.raises(AnchorFlowError, match=r"layer=5 is out of range; expected 0 <= layer < 3"):
        plot_group_matrix(make_result(), layer=5)
