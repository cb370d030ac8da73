"""Issue 29: the report a reader trusts at a glance (no model runs here).

Verdicts in colour and weight, the table before the method, application sections that lead
with their verdict, R_l hidden where it is a share of a negative sum, the speed-up's
FLOP-ideal on its own axis and integer token counts, diagnosis heatmaps without the diagonal
and with a scale of their own, a settings table without doubled prefixes that shows requested
and resolved values, and the null-model panel with intervals and the claim layers shaded.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import torch

from anchor_flow.analysis.deep import DeepResult
from anchor_flow.analysis.flows import InformationFlow
from anchor_flow.applications.compression.baselines import CompressionResult
from anchor_flow.applications.compression.speedup_result import SpeedupResult
from anchor_flow.applications.diagnosis.distances import DiagnosisResult
from anchor_flow.report.figures.applications import plot_confusion
from anchor_flow.report.figures.compression import plot_speedup
from anchor_flow.report.findings import findings_section, plot_null_comparison, with_verdicts
from anchor_flow.report.folder import _merge, _run_settings
from anchor_flow.report.html import ReportSection, write_report
from anchor_flow.report.sections import deep_report_sections, speedup_report_section

FINDING = {"claim": "A1", "subject": "model", "verdict": "does not hold", "statistic": "gain",
           "value": -0.03, "interval": [-0.04, -0.02], "no_effect": 0.0, "control": "1-shot",
           "control_value": 0.93, "sentence": "The claim does not hold: re-weighting lowers "
           "accuracy by -0.03.", "n_prompts": 500, "layers": [], "details": {},
           "reason": "interval [-0.04, -0.02] lies within -0.05 and 0.05"}  # fmt: skip


def test_verdicts_are_coloured_and_the_table_comes_before_the_method(tmp_path: Path) -> None:
    record = {"findings": [FINDING], "claim_layers": {"shallow": [0], "deep": [1]},
              "null_model": {"kind": "none", "reason": "switched off"}}  # fmt: skip
    section = findings_section(record)
    assert section is not None
    page = write_report(tmp_path / "r.html", [section], title="t").read_text()
    assert '<td class="verdict v-does-not-hold">does not hold</td>' in page
    assert ".v-does-not-hold { color: #b42318; }" in page
    body = page[page.index('<section id="section-0">') :]
    # The lead, then the table, then the method (the long paragraph) below it.
    assert body.index('class="lead"') < body.index("<table") < body.index('class="notes"')
    assert "A claim &#x27;holds&#x27; when" in body[body.index('class="notes"') :]
    assert "interval [-0.04, -0.02] lies within -0.05 and 0.05" in body


def test_an_application_section_leads_with_its_verdict_and_reason(tmp_path: Path) -> None:
    plain = ReportSection("Anchor re-weighting: accuracy", None, "How Table 1 is made.")
    other = ReportSection("Anchor re-weighting: beta", None, "Betas.")
    led, untouched = with_verdicts([plain, other], {"findings": [FINDING]})
    assert led.verdict == "does not hold"
    assert led.lead.startswith("re-weighting lowers accuracy by -0.03")
    assert "why: interval [-0.04, -0.02]" in led.lead
    assert untouched == other
    page = write_report(tmp_path / "r.html", [led], title="t").read_text()
    body = page[page.index('<section id="section-0">') :]
    assert body.index('<span class="verdict v-does-not-hold">') < body.index("How Table 1")


def _deep(auc_below: bool) -> DeepResult:
    """Two classes, 20 prompts; the score follows the prediction (AUC 1) or opposes it."""
    predictions = torch.tensor([0, 1] * 10)
    sign = -1.0 if auc_below else 1.0
    base = torch.linspace(0.1, 0.9, 20)
    second = 0.5 + sign * (predictions.double() - 0.5) * base
    scores = torch.stack([1 - second, second], -1)[:, None, :].repeat(1, 3, 1).float()
    probs = torch.nn.functional.one_hot(predictions, 2).float()
    return DeepResult(scores, probs, predictions, torch.zeros(20).long(), ("seed-0",))


def test_r_l_is_hidden_where_it_would_be_a_share_of_a_negative_sum() -> None:
    below = _deep(auc_below=True)
    assert float(below.auc().max()) < 0.5  # every layer below chance
    assert float(below.r_curve()[-1]) == 1.0  # Eq. 5 still says 1.0: a share of a negative sum
    table = deep_report_sections(below)[0].table
    assert table is not None
    assert set(table["R_l"]) == {"—"}
    figure = deep_report_sections(below)[0].figure.to_dict()
    r_trace = next(t for t in figure["data"] if t["name"] == "R_l")
    assert all(v is None for v in r_trace["y"])
    above = deep_report_sections(_deep(auc_below=False))[0].table
    assert above is not None
    assert list(above["R_l"])[-1] == "1.000"


def _speed() -> SpeedupResult:
    one = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    return SpeedupResult(
        groups=("3 demonstrations", "6 demonstrations", "12 demonstrations"),
        n_demonstrations=torch.tensor([3, 6, 12]), demo_length=torch.tensor([19.0, 37, 73]),
        kept_length=torch.tensor([10.0, 19, 37]), query_length=one * 0 + 4,
        n_contexts=torch.tensor([3, 6, 12]), n_queries=torch.tensor([3, 6, 12]),
        queries_per_build=one, full_ms=one * 60, compressed_ms=one * 50, build_ms=one * 55,
        floor_ms=one * 45, flop_ideal=torch.tensor([5.7, 10.2, 19.2], dtype=torch.float64),
    )  # fmt: skip


def test_speed_up_has_flop_ideal_on_its_own_axis_and_token_counts_as_integers(
    tmp_path: Path,
) -> None:
    figure = plot_speedup(_speed()).to_dict()
    ideal = next(t for t in figure["data"] if t["name"] == "FLOP-ideal")
    measured = next(t for t in figure["data"] if t["name"].startswith("Speed-up"))
    assert ideal["yaxis"] == "y2"
    assert measured.get("yaxis", "y") == "y"
    assert figure["layout"]["yaxis2"]["overlaying"] == "y"
    section = speedup_report_section(_speed())
    page = write_report(tmp_path / "r.html", [section], title="t").read_text()
    cells = re.findall(r"<td>([^<]*)</td>", page)
    assert "19" in cells
    assert "37" in cells
    assert "19.000" not in cells
    assert "10.000" not in cells


def _diagnosis() -> DiagnosisResult:
    generator = torch.Generator().manual_seed(0)
    n, c, d = 24, 4, 6
    return DiagnosisResult(
        queries=torch.randn(n, 1, d, generator=generator, dtype=torch.float64),
        keys=torch.randn(1, 1, c, d, generator=generator, dtype=torch.float64),
        label_probs=torch.softmax(3 * torch.randn(n, c, generator=generator), -1).double(),
        gold=torch.arange(c).repeat(n // c), run=torch.zeros(n).long(), run_names=("seed-0",),
        layers=(1,), class_names=("a", "b", "c", "d"), settings={"layer": 1, "n_components": 2},
    )  # fmt: skip


def test_diagnosis_heatmaps_leave_the_diagonal_blank_and_scale_the_pairs() -> None:
    result = _diagnosis()
    figure = plot_confusion(result).to_dict()
    for trace, matrix in zip(figure["data"],
                             (result.predicted_confusion(), result.real_confusion()),
                             strict=True):  # fmt: skip
        z = trace["z"]
        assert all(z[i][i] is None for i in range(4))
        off = [float(matrix[i, j]) for i in range(4) for j in range(4) if i != j]
        assert trace["zmin"] == min(off)
        assert trace["zmax"] == max(off)


def test_settings_show_requested_and_resolved_values_once_without_doubled_prefixes(
    tmp_path: Path,
) -> None:
    record = {"model": {"name": "demo", "dtype": "torch.float32"},
              "settings": {"task": "demo-k3", "prepend_bos": "auto", "reweighting_epochs": 10,
                           "claim_layer_fraction": 1 / 3, "diagnosis_layer": None},
              "settings_resolved": {"task": "demo-k3", "prepend_bos": True},
              "experiments": {}}  # fmt: skip
    settings = _run_settings(record)
    assert settings["prepend_bos"] == "auto (resolved: true)"
    assert settings["task"] == "demo-k3"
    _merge(settings, "reweighting ", {"epochs": 10, "seed": 42, "task": "demo-k3"}, record)
    _merge(settings, "diagnosis ", {"layer": 4, "experiment": "diagnosis"}, record)
    assert "reweighting epochs" not in settings  # the run's reweighting_epochs says it
    assert "reweighting task" not in settings
    assert settings["reweighting seed"] == 42
    assert settings["diagnosis layer"] == 4  # resolved from diagnosis_layer = null: shown
    assert "diagnosis experiment" not in settings
    page = write_report(tmp_path / "r.html", [ReportSection("s", None, "x")], title="t",
                        settings=settings).read_text()  # fmt: skip
    assert "<td>0.3333</td>" in page
    assert "<td>float32</td>" in page
    assert "0.3333333333333333" not in page


def test_the_compression_settings_are_not_prefixed_twice(tmp_path: Path) -> None:
    from anchor_flow.report.folder import _compression_part

    CompressionResult(
        methods=("hidden_anchor",), baseline_predictions=torch.tensor([0, 1]),
        predictions=torch.tensor([[0, 0]]), word_jaccard=torch.tensor([[1.0, 0.5]]),
        gold=torch.tensor([0, 1]), run=torch.tensor([0, 0]), run_names=("seed-0",),
        trials=torch.zeros(1, 0, 3), chosen_trial=torch.tensor([-1]),
        settings={"model": "demo", "n_top_trials": 20},
    ).save(tmp_path / "compression")  # fmt: skip
    settings: dict = {}
    _, parts = _compression_part(tmp_path / "compression")
    for prefix, extra in parts:
        _merge(settings, prefix, extra, None)
    assert "compression n_top_trials" in settings
    assert not any(k.startswith("compression compression") for k in settings)


def test_null_panel_has_intervals_and_shades_the_claim_layers() -> None:
    generator = torch.Generator().manual_seed(0)
    flow = InformationFlow(torch.rand(8, 3, 6, generator=generator))
    null = InformationFlow(torch.rand(8, 3, 6, generator=generator))
    deep = _deep(auc_below=False)  # 3 layers
    figure = plot_null_comparison(flow, null, deep, deep,
                                  layers={"shallow": [0, 1], "deep": [4, 5]}).to_dict()  # fmt: skip
    bands = [t for t in figure["data"] if t.get("fill") == "toself"]
    assert len(bands) == 8  # three flows and AUCROC_l, model and null
    low, high = flow.interval(normalised=True)
    band = next(t for t in bands if t["name"] == "S_wp 95% CI")
    assert band["y"][:6] == high[0].tolist()
    assert band["y"][6:] == low[0].tolist()[::-1]
    spans = sorted((s["x0"], s["x1"]) for s in figure["layout"]["shapes"])
    assert spans == [(-0.5, 1.5), (-0.5, 1.5), (3.5, 5.5), (3.5, 5.5)]


def test_findings_table_has_no_no_effect_column_in_the_page(tmp_path: Path) -> None:
    record = {"findings": [FINDING], "claim_layers": {"shallow": [0], "deep": [1]},
              "null_model": {"kind": "none"}}  # fmt: skip
    section = findings_section(record)
    assert section is not None
    assert isinstance(section.table, pd.DataFrame)
    assert "no effect" not in section.table.columns


def test_the_heads_blocking_section_leads_with_h1() -> None:
    """Merge of issues 24 and 29: the head-level causal check leads with its verdict too."""
    h1 = {**FINDING, "claim": "H1", "verdict": "holds", "sentence": "The claim holds: yes.",
          "reason": "interval [0.6, 0.9] excludes 0 and 0.767 clears 0.05"}  # fmt: skip
    section = ReportSection("Anchor heads: blocking them vs random heads", None, "text")
    (led,) = with_verdicts([section], {"findings": [h1, FINDING]})
    assert led.verdict == "holds"
    assert "why: interval [0.6, 0.9] excludes 0" in led.lead
