"""Report figures as a reader saw them (issue 16): axes, ticks, templates, empty states."""

from __future__ import annotations

import torch

from anchor_flow.analysis.deep import DeepResult
from anchor_flow.analysis.flows import InformationFlow
from anchor_flow.applications.reweighting.protocol import ReweightingResult
from anchor_flow.report.figures.analysis import plot_deep, plot_flows_with_auc
from anchor_flow.report.figures.applications import plot_betas, plot_reweighting_accuracy
from anchor_flow.report.findings import plot_null_comparison


def _deep(predictions: torch.Tensor, n_layers: int = 4) -> DeepResult:
    n = predictions.shape[0]
    scores = torch.rand(n, n_layers, 2, generator=torch.Generator().manual_seed(0))
    probs = torch.nn.functional.one_hot(predictions, 2).float()
    return DeepResult(scores, probs, predictions, torch.zeros(n).long(), ("seed-0",))


def _reweighting() -> ReweightingResult:
    return ReweightingResult(
        predictions=torch.tensor([[0, 1], [1, 1], [1, 1]]), gold=torch.tensor([[1, 1]] * 3),
        run=torch.tensor([0, 0]), run_names=("seed-0",), betas=torch.rand(1, 5, 3, 2),
        losses=torch.tensor([[0.7, 0.5]]),
    )  # fmt: skip


def test_r_curve_and_auc_share_one_scale_so_neither_hides_the_other() -> None:
    layout = plot_deep(_deep(torch.tensor([0, 1] * 10))).to_dict()["layout"]
    assert layout["yaxis"]["range"] == layout["yaxis2"]["range"]
    assert layout["yaxis"]["range"][0] <= 0
    assert layout["yaxis"]["range"][1] >= 1


def test_flows_and_auc_share_one_scale() -> None:
    flow = InformationFlow(torch.rand(5, 3, 4))
    layout = plot_flows_with_auc(flow, _deep(torch.tensor([0, 1] * 10))).to_dict()["layout"]
    assert layout["yaxis"]["range"] == layout["yaxis2"]["range"]


def test_a_model_at_chance_gets_a_sentence_instead_of_an_empty_figure() -> None:
    figure = plot_deep(_deep(torch.zeros(20).long())).to_dict()
    texts = [a["text"] for a in figure["layout"].get("annotations", [])]
    assert any("predicts a single class" in t for t in texts)
    assert not plot_deep(_deep(torch.tensor([0, 1] * 10))).to_dict()["layout"].get("annotations")


def test_beta_heatmap_has_integer_layer_ticks_and_the_shared_template() -> None:
    layout = plot_betas(_reweighting()).to_dict()["layout"]
    assert layout["yaxis"]["dtick"] == 1
    assert layout["xaxis"]["dtick"] == 1
    white = plot_deep(_deep(torch.tensor([0, 1] * 10))).to_dict()["layout"]["template"]
    assert layout["template"] == white
    assert plot_reweighting_accuracy(_reweighting()).to_dict()["layout"]["template"] == white


def test_null_model_curves_are_dashed_beside_the_model() -> None:
    flow, null_flow = InformationFlow(torch.rand(5, 3, 4)), InformationFlow(torch.rand(5, 3, 4))
    deep = _deep(torch.tensor([0, 1] * 10))
    data = plot_null_comparison(flow, null_flow, deep, deep).to_dict()["data"]
    dashed = [t["name"] for t in data if t["line"]["dash"] == "dash"]
    solid = [t["name"] for t in data if t["line"]["dash"] == "solid"]
    assert dashed == ["S_wp (null model)", "S_pq (null model)", "S_ww (null model)",
                      "AUCROC_l (null model)"]  # fmt: skip
    assert solid == ["S_wp", "S_pq", "S_ww", "AUCROC_l"]
