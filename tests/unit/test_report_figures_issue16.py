"""Report figures as a reader saw them (issue 16): axes, ticks, templates, empty states."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from anchor_flow.analysis.deep import DeepResult
from anchor_flow.analysis.edges import FINE_GROUPS
from anchor_flow.analysis.flows import InformationFlow
from anchor_flow.analysis.saliency.result import SaliencyResult
from anchor_flow.applications.compression.baselines import CompressionResult
from anchor_flow.applications.compression.speedup_result import SpeedupResult
from anchor_flow.applications.diagnosis.distances import DiagnosisResult
from anchor_flow.applications.reweighting.protocol import ReweightingResult
from anchor_flow.errors import AnchorFlowError
from anchor_flow.icl.roles import Role
from anchor_flow.report.figures.analysis import plot_deep, plot_flows_with_auc
from anchor_flow.report.figures.applications import (
    plot_betas,
    plot_confusion,
    plot_confusion_correlation,
    plot_reweighting_accuracy,
)
from anchor_flow.report.figures.saliency import plot_group_matrix
from anchor_flow.report.findings import findings_section, plot_null_comparison
from anchor_flow.report.folder import render_results_folder
from anchor_flow.report.html import write_report
from anchor_flow.report.sections import compression_report_sections


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
    layout = plot_deep(_deep(torch.tensor([0, 1] * 10))).to_dict()["layout"]
    assert not any("single class" in a["text"] for a in layout.get("annotations", []))


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
    data = [t for t in data if t.get("mode") == "lines+markers"]  # not the interval bands
    dashed = [t["name"] for t in data if t["line"]["dash"] == "dash"]
    solid = [t["name"] for t in data if t["line"]["dash"] == "solid"]
    assert dashed == ["S_wp (null model)", "S_pq (null model)", "S_ww (null model)",
                      "AUCROC_l (null model)"]  # fmt: skip
    assert solid == ["S_wp", "S_pq", "S_ww", "AUCROC_l"]


# ---- the role-to-role matrix pools the seeds, as the flows do ----------------------------


def _saliency(n_prompts: int, value: float, n_layers: int = 3) -> SaliencyResult:
    roles = [int(r) for r in (Role.BOS, Role.TEXT, Role.LABEL, Role.FORMAT, Role.TARGET)]
    return SaliencyResult(
        group_sums=torch.full((n_prompts, n_layers, len(FINE_GROUPS)), value),
        group_counts=torch.ones(n_prompts, len(FINE_GROUPS)),
        label_probs=torch.tensor([[0.6, 0.4]]).repeat(n_prompts, 1),
        gold=torch.zeros(n_prompts).long(), roles=torch.tensor([roles] * n_prompts),
        str_tokens=(("<s>", " ok", " Positive", "\n", ":"),) * n_prompts,
    )  # fmt: skip


def test_role_matrix_of_a_run_pools_every_seed_and_counts_their_prompts(tmp_path: Path) -> None:
    seeds = {"seed-1": _saliency(3, 1.0), "seed-2": _saliency(2, 4.0)}
    for name, result in seeds.items():
        result.save(tmp_path / "saliency" / name)
    flow = InformationFlow.concat([r.flows() for r in seeds.values()])
    flow.save(tmp_path / "saliency.json")
    assert flow.n_prompts == 5
    render_results_folder(tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert "n_prompts=5, 2 runs pooled" in html
    assert "n_prompts=3" not in html
    figure = plot_group_matrix(list(seeds.values())).to_dict()
    # Per-edge means over the 5 prompts: (3 x 1.0 + 2 x 4.0) / 5, not the first seed's 1.0.
    assert figure["data"][0]["z"][0][0] == pytest.approx(2.2)
    with pytest.raises(AnchorFlowError, match="expected at least one result, all with the same"):
        plot_group_matrix([_saliency(2, 1.0), _saliency(2, 1.0, n_layers=4)])


# ---- the compression-speed table fits the page ------------------------------------------


class _Table(HTMLParser):
    """Header and cell texts of every ``table.data`` in a page, one list of rows per table."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and "data" in (dict(attrs).get("class") or "").split():
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("th", "td") and self.tables:
            self._cell = []

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("th", "td") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None


def _min_width_px(rows: list[list[str]]) -> float:
    """The narrowest a table can be: per column its longest unbreakable word at the report's
    0.88em x 16 px (about 7.7 px a character), plus 0.6em padding either side and a border."""
    columns = zip(*rows, strict=True)
    return sum(7.7 * max(len(w) for cell in col for w in cell.split()) + 19 for col in columns)


def _speed_folder(tmp_path: Path) -> Path:
    one, two = torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([3, 6])
    SpeedupResult(
        groups=("3 demonstrations", "6 demonstrations"), n_demonstrations=two,
        demo_length=one * 19, kept_length=one * 10, query_length=one * 4, n_contexts=two,
        n_queries=two, queries_per_build=one, full_ms=one * 16.46, compressed_ms=one * 15.56,
        build_ms=one * 16.95, floor_ms=one * 15.0, flop_ideal=one * 5.74,
    ).save(tmp_path / "compression_speed")  # fmt: skip
    CompressionResult(
        methods=("hidden_anchor",), baseline_predictions=torch.tensor([0, 1]),
        predictions=torch.tensor([[0, 0]]), word_jaccard=torch.tensor([[1.0, 0.5]]),
        gold=torch.tensor([0, 1]), run=torch.tensor([0, 0]), run_names=("seed-0",),
        trials=torch.zeros(1, 3, 3), chosen_trial=torch.tensor([0]),
    ).save(tmp_path / "compression")  # fmt: skip
    return tmp_path


def test_compression_speed_table_fits_the_page(tmp_path: Path) -> None:
    sections, _ = compression_report_sections(_speed_folder(tmp_path) / "compression")
    speed = [s for s in sections if "speed-up" in s.title]
    assert len(speed) == 1
    html = write_report(tmp_path / "r.html", speed, title="t").read_text()
    parser = _Table()
    parser.feed(html)
    (rows,) = parser.tables
    # main is 1100 px wide, less 2em padding either side and the section's 1.2em.
    assert _min_width_px(rows) <= 1100 - 64 - 40, rows[0]
    assert rows[0][0] == "group"
    assert "speed-up" in rows[0]
    assert rows[1][0] == "3 demonstrations"
    assert '<div class="table">' in html  # and, if a reader's window is narrower, it scrolls


# ---- long class names do not squash the diagnosis heatmaps -------------------------------


def _diagnosis(names: tuple[str, ...], layers: tuple[int, ...] = (1, 2, 3)) -> DiagnosisResult:
    generator = torch.Generator().manual_seed(0)
    n, c, d = 24, len(names), 6
    gold = torch.arange(c).repeat(n // c)
    return DiagnosisResult(
        queries=torch.randn(n, len(layers), d, generator=generator, dtype=torch.float64),
        keys=torch.randn(1, len(layers), c, d, generator=generator, dtype=torch.float64),
        label_probs=torch.softmax(torch.randn(n, c, generator=generator), -1).double(),
        gold=gold, run=torch.zeros(n).long(), run_names=("seed-0",), layers=layers,
        class_names=names, settings={"layer": layers[-1], "n_components": 2},
    )  # fmt: skip


LONG = ("Description and abstract concept", "Description and abstract entity", "Human being",
        "Numeric value or quantity of something")  # fmt: skip


def test_long_class_names_are_shortened_on_the_axes_and_whole_on_hover() -> None:
    figure = plot_confusion(_diagnosis(LONG)).to_dict()
    layout = figure["layout"]
    for axis in ("xaxis", "yaxis", "xaxis2", "yaxis2"):
        ticks = list(layout[axis]["ticktext"])
        assert len(ticks) == len(LONG)
        assert max(len(t) for t in ticks) <= 14
        assert ticks[2] == "Human being"  # a short name stays whole
        assert list(layout[axis]["tickvals"]) == [0, 1, 2, 3]
    for trace in figure["data"]:
        # Two names that shorten alike stay two classes: one column per class.
        assert len(trace["z"]) == len(trace["z"][0]) == len(LONG)
        hover = [cell for row in trace["text"] for cell in row]
        assert any(LONG[0] in cell and LONG[3] in cell for cell in hover)
        assert "%{text}" in trace["hovertemplate"]


# ---- the diagnosis correlation chart: integer ticks, every M visible, the missing layer ----


def test_correlation_chart_has_integer_ticks_distinct_lines_and_names_the_missing_layer() -> None:
    figure = plot_confusion_correlation(_diagnosis(("a", "b", "c")), n_components=(2, 3, 5))
    data, layout = figure.to_dict()["data"], figure.to_dict()["layout"]
    assert layout["xaxis"]["dtick"] == 1
    assert layout["xaxis"].get("tickmode") == "linear"
    assert [t["name"] for t in data] == ["M = 2", "M = 3", "M = 5"]
    # Lines with equal values would hide each other: every M has its own dash and marker.
    styles = {(t["line"]["dash"], t["marker"]["symbol"]) for t in data}
    assert len(styles) == len(data)
    texts = " ".join(a["text"] for a in layout.get("annotations", []))
    assert "layer(s) 0" in texts  # recorded layers 1-3: layer 0 is said to be missing
    recorded = plot_confusion_correlation(_diagnosis(("a", "b", "c"), layers=(0, 1, 2)))
    assert not recorded.to_dict()["layout"].get("annotations")


def test_findings_note_says_why_the_null_model_has_no_c3_row() -> None:
    finding = {"claim": "C4", "subject": "null model", "verdict": "does not hold",
               "statistic": "AUCROC_l", "value": 0.8, "interval": [0.7, 0.9], "no_effect": 0.5,
               "control": "chance", "control_value": 0.5, "sentence": "s", "n_prompts": 30,
               "layers": [1], "details": {}}  # fmt: skip
    record = {"findings": [finding], "claim_layers": {"shallow": [0], "deep": [1]},
              "null_model": {"kind": "random-init", "seed": 42}}  # fmt: skip
    section = findings_section(record)
    assert section is not None
    assert "C3's control is the random-row isolation arm" in section.notes  # below the table
    assert "less than 0.01" in section.notes  # C4's attention margin is stated
