"""Self-contained HTML reports of a saliency run (paper §2.1; Fig. 3, 7 and 9).

:func:`write_report` renders a list of :class:`ReportSection` (a title, a figure and a
paragraph on how to read it) and a settings table into ONE HTML file with plotly.js embedded
once, so the report opens offline, with no server, and can be mailed around.
:func:`saliency_report_sections` builds the standard sections from the results of
:func:`anchor_flow.saliency.run_saliency`.

This module runs no model and computes no statistic; the figures come from
:mod:`anchor_flow.plotting`.
"""

from __future__ import annotations

import html
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from anchor_flow.errors import AnchorFlowError, ResultsError
from anchor_flow.flows import InformationFlow
from anchor_flow.plotting import (
    plot_flows,
    plot_group_matrix,
    plot_saliency_heatmap,
)
from anchor_flow.saliency_result import SaliencyResult

__all__ = [
    "ReportSection",
    "render_results_folder",
    "saliency_report_sections",
    "write_report",
    "write_saliency_report",
]

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #222; background: #fafafa; line-height: 1.5; }
main { max-width: 1100px; margin: 0 auto; padding: 1.5em 2em 4em; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { font-size: 1.3em; margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
section { background: #fff; border: 1px solid #e4e4e4; border-radius: 6px; padding: 0.5em 1.2em 1em;
          margin: 1.5em 0; }
p.explanation { max-width: 70em; }
.figure { width: 100%; }
table.settings { border-collapse: collapse; font-size: 0.9em; }
table.settings th, table.settings td { border: 1px solid #ddd; padding: 0.25em 0.7em;
          text-align: left; vertical-align: top; }
table.settings th { background: #f0f0f0; }
table.settings td { font-family: ui-monospace, Menlo, Consolas, monospace; white-space: pre-wrap; }
nav ol { padding-left: 1.5em; }
"""


@dataclass(frozen=True)
class ReportSection:
    """One section of a report: a figure and one paragraph on what it shows.

    Example:
        >>> section = ReportSection("Flows", go.Figure(), "S_wp, S_pq and S_ww per layer.")

    Attributes:
        title: the section heading (plain text).
        figure: the plotly figure.
        explanation: one paragraph (plain text) saying what the figure shows and how to read it.
    """

    title: str
    figure: go.Figure
    explanation: str

    def __post_init__(self) -> None:
        if not self.title.strip():
            raise AnchorFlowError("ReportSection.title is empty; expected a heading")


def _setting_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str, sort_keys=True)


def _settings_table(settings: Mapping[str, Any]) -> str:
    if not settings:
        return "<p>No settings recorded.</p>"
    rows = "\n".join(
        f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(_setting_text(value))}</td></tr>"
        for key, value in settings.items()
    )
    return f'<table class="settings">\n{rows}\n</table>'


def _render(sections: Sequence[ReportSection], title: str, settings: Mapping[str, Any]) -> str:
    parts = []
    for index, section in enumerate(sections):
        figure_html = section.figure.to_html(
            full_html=False,
            include_plotlyjs=False,
            div_id=f"figure-{index}",
            default_width="100%",
            default_height="560px",
            config={"displaylogo": False, "responsive": True},
        )
        parts.append(
            f'<section id="section-{index}">\n'
            f"<h2>{html.escape(section.title)}</h2>\n"
            f'<p class="explanation">{html.escape(section.explanation)}</p>\n'
            f'<div class="figure">{figure_html}</div>\n</section>'
        )
    contents = "\n".join(
        f'<li><a href="#section-{index}">{html.escape(section.title)}</a></li>'
        for index, section in enumerate(sections)
    )
    # One plotly.js bundle in <head>; "</script" cannot occur in it, so it embeds verbatim.
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n"
        "<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>\n"
        f'<script type="text/javascript">{get_plotlyjs()}</script>\n</head>\n<body>\n<main>\n'
        f"<h1>{html.escape(title)}</h1>\n<nav><ol>\n{contents}\n"
        '<li><a href="#settings">Settings</a></li>\n</ol></nav>\n'
        + "\n".join(parts)
        + '\n<section id="settings">\n<h2>Settings</h2>\n'
        + _settings_table(settings)
        + "\n</section>\n</main>\n</body>\n</html>\n"
    )


def write_report(
    path: str | os.PathLike[str],
    sections: Sequence[ReportSection],
    *,
    title: str,
    settings: Mapping[str, Any] | None = None,
) -> Path:
    """Write one self-contained HTML report (plotly.js embedded once, works offline).

    The whole page is rendered in memory first and then written to a temporary file in the
    destination folder that is renamed into place, so ``path`` never holds a half-written
    report, also when a figure fails to render.

    Example:
        >>> sections = saliency_report_sections(result.flows(), result)  # doctest: +SKIP
        >>> write_report("saliency.html", sections, title="toy-gpt2")  # doctest: +SKIP

    Args:
        path: the HTML file to write; its folder is created if missing.
        sections: the sections, in order; at least one.
        title: page title and heading.
        settings: shown as a key/value table (values that are not strings as JSON).

    Returns:
        The path written.
    """
    path = Path(path)
    if not sections:
        raise AnchorFlowError("sections is empty; expected at least one ReportSection")
    if path.exists() and path.is_dir():
        raise AnchorFlowError(f"path {str(path)!r} is a folder; expected an HTML file path")
    page = _render(sections, title, dict(settings or {}))
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(page)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


_FLOWS_NORMALISED = (
    "The relative size of the paper's three information flows per layer (Fig. 3/7/9): S_wp, "
    "the mean saliency of the edges into the label words (text to label words); S_pq, the edges "
    "from the label words to the target position; S_ww, every other edge. Each is a mean "
    "saliency per edge over prompts, and the three are divided by their sum in every layer, "
    "so the curves sum to 1. The paper finds that S_wp dominates in shallow layers while S_pq "
    "is low, that S_pq dominates in deep layers, and that both usually lie above S_ww: label "
    "words first gather the demonstrations' information, then the prediction reads it from "
    "them. The shaded bands are {level} percentile-bootstrap intervals over prompts."
)
_FLOWS_RAW = (
    "The same three flows before the per-layer normalisation: the mean saliency |A ⊙ ∂L/∂A| "
    "per edge (Eq. 2-4), averaged over prompts. Dividing by the number of edges makes flows "
    "with very different edge counts comparable; the absolute scale varies between layers "
    "and models, which is why the paper compares the normalised sizes. Bands are {level} "
    "bootstrap intervals over prompts."
)
_GROUP_MATRIX = (
    "The role-to-role flow behind the three paper flows: every layer (row) and fine edge group "
    "(column, 'reader <- source'), coloured by the mean saliency per edge over the prompts in "
    "which the group has edges. S_wp pools the 'label <- ...' groups (it is their "
    "edge-weighted average), S_pq the 'target <- label (...)' groups and S_ww the rest; "
    "'same demo' means the source lies in the reader's own "
    "demonstration, 'earlier' in an earlier one. Blank cells are groups that never occur (for "
    "example 'label rest' when every label word is a single token). Hover for the paper flow "
    "each group belongs to."
)
_HEATMAP = (
    "The saliency map I_l(i, j) of prompt 0 in layer {layer}: row i is the position that reads, "
    "column j the position read, so row i shows where token i takes information from. Cells "
    "above the diagonal are blank because attention is causal. The coloured squares above the "
    "columns and left of the rows mark each token's role (label words, target, text, "
    "formatting, BOS); a saliency concentrated in the label-word rows suggests aggregation "
    "into the anchors (S_wp), one in the target row at the label-word columns suggests the "
    "prediction reading them (S_pq). Large values in the BOS column are common: the first "
    "token acts as an attention sink."
)


def saliency_report_sections(
    flow: InformationFlow, result: SaliencyResult | None = None
) -> list[ReportSection]:
    """The standard sections of a saliency report.

    Example:
        >>> sections = saliency_report_sections(result.flows(), result)  # doctest: +SKIP
        >>> write_report("saliency.html", sections, title="GPT2-XL, SST-2")  # doctest: +SKIP

    Args:
        flow: the per-prompt flows (``result.flows()``, or loaded from ``saliency.json``).
        result: the saliency result, for the role-to-role matrix and, when it kept maps, the
            heatmaps of prompt 0 in the first and last layer.

    Returns:
        Normalised flows with intervals, raw flows, then (with ``result``) the role-to-role
        matrix and the heatmaps.
    """
    if result is not None and result.n_layers != flow.n_layers:
        raise AnchorFlowError(
            f"flow has {flow.n_layers} layers but result has {result.n_layers}; expected the "
            "flows and the saliency result of the same run"
        )
    level = "95%"
    sections = [
        ReportSection(
            "Relative information flow per layer",
            plot_flows(flow, normalised=True, ci=True),
            _FLOWS_NORMALISED.format(level=level),
        ),
        ReportSection(
            "Mean saliency per edge",
            plot_flows(flow, normalised=False, ci=True),
            _FLOWS_RAW.format(level=level),
        ),
    ]
    if result is None:
        return sections
    sections.append(
        ReportSection("Role-to-role flow", plot_group_matrix(result, layer=None), _GROUP_MATRIX)
    )
    if result.maps is not None:
        for layer in dict.fromkeys((0, result.n_layers - 1)):
            sections.append(
                ReportSection(
                    f"Saliency map, prompt 0, layer {layer}",
                    plot_saliency_heatmap(result, prompt=0, layer=layer),
                    _HEATMAP.format(layer=layer),
                )
            )
    return sections


def write_saliency_report(
    path: str | os.PathLike[str], flow: InformationFlow, result: SaliencyResult | None = None
) -> Path:
    """The standard saliency report of one run, with ``flow.settings`` as its settings table."""
    model = flow.settings.get("model", "model")
    return write_report(
        path,
        saliency_report_sections(flow, result),
        title=f"Information flow: {model}",
        settings=flow.settings,
    )


def render_results_folder(directory: str | os.PathLike[str]) -> Path:
    """Re-render ``report.html`` from what ``anchor-flow saliency`` wrote into ``directory``.

    Example:
        >>> render_results_folder("results/quickstart")  # doctest: +SKIP
        PosixPath('results/quickstart/report.html')
    """
    directory = Path(directory)
    summary = directory / "saliency.json"
    if not summary.is_file():
        raise ResultsError(
            f"{str(directory)!r} holds no saliency.json; expected a results folder written by "
            "`anchor-flow saliency` (a run that finished)"
        )
    flow = InformationFlow.load(summary)
    # Raw results live in saliency/ or, one per seed, in saliency/<run>/; heatmaps use the first.
    runs = sorted(meta.parent for meta in (directory / "saliency").rglob("saliency_meta.json"))
    result = SaliencyResult.load(runs[0]) if runs else None
    return write_saliency_report(directory / "report.html", flow, result)
