"""Unit tests of anchor_flow.report.html: one self-contained HTML file, written atomically."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
import pytest
import torch

from anchor_flow.analysis.edges import FINE_GROUPS
from anchor_flow.analysis.flows import InformationFlow
from anchor_flow.analysis.saliency.result import SaliencyResult
from anchor_flow.errors import AnchorFlowError, ResultsError
from anchor_flow.icl.roles import Role
from anchor_flow.report.html import ReportSection, write_report
from anchor_flow.report.sections import saliency_report_sections

BUNDLE_BANNER = "* plotly.js v"
PLOT_DIV = 'class="plotly-graph-div"'


def make_flow(n_layers: int = 3) -> InformationFlow:
    return InformationFlow(values=torch.rand(4, 3, n_layers) + 0.1)


def make_result(*, maps: bool, n_layers: int = 3) -> SaliencyResult:
    roles = torch.tensor(
        [[int(r) for r in (Role.BOS, Role.FORMAT, Role.TEXT, Role.LABEL, Role.TARGET)]]
    )
    return SaliencyResult(
        group_sums=torch.rand(1, n_layers, len(FINE_GROUPS)),
        group_counts=torch.ones(1, len(FINE_GROUPS)),
        label_probs=torch.tensor([[0.6, 0.4]]),
        gold=torch.tensor([0]),
        roles=roles,
        str_tokens=(("<s>", "Review:", " ok", " Positive", ":"),),
        maps=torch.rand(1, n_layers, 5, 5) if maps else None,
    )


def section(title: str, explanation: str = "How to read it.") -> ReportSection:
    figure = go.Figure(go.Scatter(x=[0, 1], y=[1, 2], name=title))
    return ReportSection(title, figure, explanation)


class BrokenFigure(go.Figure):
    """A figure that fails while it renders."""

    def to_html(self, *args: object, **kwargs: object) -> str:
        raise RuntimeError("cannot render")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_report_is_one_self_contained_file(tmp_path: Path) -> None:
    sections = [section("First", "Curves of S_wp."), section("Second", "A heatmap.")]
    path = write_report(
        tmp_path / "report.html",
        sections,
        title="GPT2 <run>",
        settings={"model": "gpt2 & co", "seeds": [42, 43], "note": "<script>x</script>"},
    )
    assert path == tmp_path / "report.html"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert text.count(BUNDLE_BANNER) == 1
    assert text.count(PLOT_DIV) == len(sections)
    assert "<script src=" not in text  # nothing to fetch: works offline
    assert "Curves of S_wp." in text
    assert "A heatmap." in text
    assert "<h1>GPT2 &lt;run&gt;</h1>" in text
    assert "<td>gpt2 &amp; co</td>" in text
    assert "<td>[42, 43]</td>" in text
    assert "&lt;script&gt;x&lt;/script&gt;" in text
    assert "<script>x</script>" not in text
    assert leftovers(tmp_path) == ["report.html"]


def test_report_replaces_an_existing_file_and_creates_folders(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "folder" / "report.html"
    write_report(path, [section("Old")], title="old")
    write_report(path, [section("New")], title="new")
    text = path.read_text(encoding="utf-8")
    assert "<title>new</title>" in text
    assert "Old" not in text
    assert leftovers(path.parent) == ["report.html"]


def test_report_without_settings(tmp_path: Path) -> None:
    text = write_report(tmp_path / "r.html", [section("Only")], title="t").read_text()
    assert "No settings recorded." in text


def test_failed_render_leaves_nothing(tmp_path: Path) -> None:
    broken = ReportSection("Broken", BrokenFigure(), "never written")
    with pytest.raises(RuntimeError, match="cannot render"):
        write_report(tmp_path / "report.html", [section("Fine"), broken], title="t")
    assert leftovers(tmp_path) == []


def test_failed_render_keeps_the_previous_report(tmp_path: Path) -> None:
    path = write_report(tmp_path / "report.html", [section("Fine")], title="before")
    broken = ReportSection("Broken", BrokenFigure(), "never written")
    with pytest.raises(RuntimeError):
        write_report(path, [broken], title="after")
    assert "<title>before</title>" in path.read_text()
    assert leftovers(tmp_path) == ["report.html"]


def test_failed_write_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("anchor_flow.report.html.os.replace", fail)
    with pytest.raises(ResultsError, match=r"cannot write '.*report\.html' \(disk full\)"):
        write_report(tmp_path / "report.html", [section("Fine")], title="t")
    assert leftovers(tmp_path) == []


def test_report_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(AnchorFlowError, match="sections is empty; expected at least one"):
        write_report(tmp_path / "r.html", [], title="t")
    with pytest.raises(AnchorFlowError, match="is a folder; expected an HTML file path"):
        write_report(tmp_path, [section("x")], title="t")
    assert leftovers(tmp_path) == []


def test_section_validation() -> None:
    with pytest.raises(AnchorFlowError, match=r"ReportSection\.title is empty"):
        ReportSection(" ", go.Figure(), "text")


def test_saliency_sections_flow_only() -> None:
    sections = saliency_report_sections(make_flow())
    assert [s.title for s in sections] == [
        "Relative information flow per layer",
        "Mean saliency per edge",
    ]
    relative = sections[0].figure.to_dict()["layout"]["yaxis"]["title"]["text"]
    assert relative == "Relative saliency"
    assert "S_wp dominates in shallow layers" in sections[0].explanation
    assert "S_pq dominates in deep layers" in sections[0].explanation


def test_saliency_sections_with_maps(tmp_path: Path) -> None:
    flow = make_flow()
    sections = saliency_report_sections(flow, make_result(maps=True))
    assert [s.title for s in sections] == [
        "Relative information flow per layer",
        "Mean saliency per edge",
        "Role-to-role flow",
        "Saliency map, prompt 0, layer 0",
        "Saliency map, prompt 0, layer 2",
    ]
    text = write_report(tmp_path / "r.html", sections, title="t").read_text()
    assert text.count(PLOT_DIV) == 5
    assert text.count(BUNDLE_BANNER) == 1


def test_saliency_sections_one_layer_and_no_maps() -> None:
    one_layer = saliency_report_sections(make_flow(1), make_result(maps=True, n_layers=1))
    assert [s.title for s in one_layer][-1] == "Saliency map, prompt 0, layer 0"
    assert len(one_layer) == 4
    no_maps = saliency_report_sections(make_flow(), make_result(maps=False))
    assert [s.title for s in no_maps][-1] == "Role-to-role flow"


def test_saliency_sections_layer_mismatch() -> None:
    with pytest.raises(AnchorFlowError, match="flow has 4 layers but result has 3"):
        saliency_report_sections(make_flow(4), make_result(maps=False))


def test_a_run_builds_each_report_part_once_per_content(tmp_path: Path) -> None:
    from anchor_flow.report import folder

    calls: list[int] = []

    def build() -> tuple[list, list]:
        calls.append(1)
        return [], [("deep ", {"n": len(calls)})]

    record = {"experiments": {"deep": {"contents": {"deep.csv": "a"}}}}
    first = folder._memo(tmp_path, record, ("deep",), build)
    assert folder._memo(tmp_path, record, ("deep",), build) == first
    assert len(calls) == 1
    changed = {"experiments": {"deep": {"contents": {"deep.csv": "b"}}}}
    assert folder._memo(tmp_path, changed, ("deep",), build)[1] == [("deep ", {"n": 2})]
    folder._memo(tmp_path / "other", record, ("deep",), build)  # another folder
    folder._memo(tmp_path, None, ("deep",), build)  # no run record: never remembered
    folder._memo(tmp_path, None, ("deep",), build)
    assert len(calls) == 5
