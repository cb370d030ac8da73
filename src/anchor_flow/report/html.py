"""Self-contained HTML reports: sections of figures, explanations and tables in one file.

:func:`write_report` renders a list of :class:`ReportSection` (a title, a figure, a paragraph
on how to read it, optionally a table) and a settings table into ONE HTML file with plotly.js
embedded once, so the report opens offline, with no server, and can be mailed around. The
page records its own JavaScript errors in ``<pre id="js-errors">`` and declares its figure
count in ``<meta name="anchor-flow-figures">``, so a headless browser can check that every
figure rendered. The standard sections of each experiment are built in
:mod:`anchor_flow.report.sections`; :func:`anchor_flow.report.folder.render_results_folder`
renders a whole results folder.

This module runs no model and computes no statistic.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from anchor_flow.errors import AnchorFlowError
from anchor_flow.results.files import write_atomic

__all__ = ["ReportSection", "write_report"]

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #222; background: #fafafa; line-height: 1.5; }
main { max-width: 1100px; margin: 0 auto; padding: 1.5em 2em 4em; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { font-size: 1.3em; margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
section { background: #fff; border: 1px solid #e4e4e4; border-radius: 6px; padding: 0.5em 1.2em 1em;
          margin: 1.5em 0; }
p.explanation { max-width: 70em; }
table.data { border-collapse: collapse; font-size: 0.88em; margin: 0.8em 0; }
table.data th, table.data td { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: right; }
table.data th { background: #f0f0f0; }
div.table { overflow-x: auto; }
#js-errors:empty { display: none; }
#js-errors { color: #a00; white-space: pre-wrap; }
.figure { width: 100%; }
table.settings { border-collapse: collapse; font-size: 0.9em; }
table.settings th, table.settings td { border: 1px solid #ddd; padding: 0.25em 0.7em;
          text-align: left; vertical-align: top; }
table.settings th { background: #f0f0f0; }
table.settings td { font-family: ui-monospace, Menlo, Consolas, monospace; white-space: pre-wrap; }
nav ol { padding-left: 1.5em; }
.verdict { font-weight: 700; white-space: nowrap; }
td.verdict { text-align: left; }
.v-holds { color: #1a7f37; } .v-does-not-hold { color: #b42318; }
.v-inverted { color: #7a2e9e; } .v-inconclusive { color: #5f6368; }
.v-not-distinguished-from-the-null { color: #b54708; }
span.verdict { padding: 0.05em 0.45em; border-radius: 4px; background: #f3f3f3; }
p.lead { font-size: 1.05em; }
p.notes { max-width: 70em; color: #444; font-size: 0.93em; }
table.data.text td { text-align: left; }
"""

VERDICT_WORDS = ("holds", "does not hold", "inverted", "inconclusive",
                 "not distinguished from the null")  # fmt: skip


@dataclass(frozen=True)
class ReportSection:
    """One section of a report: a figure and one paragraph on what it shows.

    Example:
        >>> section = ReportSection("Flows", go.Figure(), "S_wp, S_pq and S_ww per layer.")

    Attributes:
        title: the section heading (plain text).
        figure: the plotly figure.
        explanation: one paragraph (plain text) saying what the figure shows and how to read it.
        table: an optional table shown under the figure (e.g. the paper's Table 2 rows).
        verdict: a finding's verdict (e.g. ``"holds"``), shown in colour at the top.
        lead: one line beside the verdict (its reason), shown before everything else.
        notes: a paragraph shown after the figure and table (the method, in detail).
    """

    title: str
    figure: go.Figure | None
    explanation: str
    table: pd.DataFrame | None = None
    verdict: str = ""
    lead: str = ""
    notes: str = ""

    def __post_init__(self) -> None:
        if not self.title.strip():
            raise AnchorFlowError("ReportSection.title is empty; expected a heading")


def _readable(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _readable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_readable(v) for v in value]
    return value


def _setting_text(value: Any) -> str:
    """A setting's value for the table: strings as they are (``torch.float32`` as
    ``float32``), floats to 4 significant digits (0.3333), the rest as JSON."""
    if isinstance(value, str):
        return value.removeprefix("torch.")
    return json.dumps(_readable(value), default=str, sort_keys=True)


def _settings_table(settings: Mapping[str, Any]) -> str:
    if not settings:
        return "<p>No settings recorded.</p>"
    rows = "\n".join(
        f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(_setting_text(value))}</td></tr>"
        for key, value in settings.items()
    )
    return f'<table class="settings">\n{rows}\n</table>'


def _badge(verdict: str, tag: str = "span") -> str:
    css = "v-" + verdict.replace(" ", "-")
    return f'<{tag} class="verdict {css}">{html.escape(verdict)}</{tag}>'


def _table(frame: pd.DataFrame) -> str:
    words = not any(pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns)  # sentences
    text = frame.to_html(index=False, classes="data text" if words else "data", border=0,
                         na_rep="—", float_format=lambda x: f"{x:.3f}")  # fmt: skip
    for word in VERDICT_WORDS:  # verdict cells in colour and weight
        text = text.replace(f"<td>{html.escape(word)}</td>", _badge(word, "td"))
    return f'<div class="table">{text}</div>\n'


# Before plotly.js: collect every uncaught error and rejected promise into the page itself.
_ERROR_CAPTURE = """<script>
(function () {
  function record(text) {
    var box = document.getElementById("js-errors");
    if (box) { box.textContent += text + "\\n"; return; }
    (window.__jsErrors = window.__jsErrors || []).push(text);
  }
  window.addEventListener("error", function (e) { record("error: " + e.message); });
  window.addEventListener("unhandledrejection", function (e) { record("rejection: " + e.reason); });
  document.addEventListener("DOMContentLoaded", function () {
    (window.__jsErrors || []).forEach(record);
  });
})();
</script>
"""


def _render(sections: Sequence[ReportSection], title: str, settings: Mapping[str, Any]) -> str:
    parts, n_figures = [], 0
    for index, section in enumerate(sections):
        figure_html = ""
        if section.figure is not None:
            figure_html = section.figure.to_html(
                full_html=False,
                include_plotlyjs=False,
                div_id=f"figure-{index}",
                default_width="100%",
                default_height="560px",
                config={"displaylogo": False, "responsive": True},
            )
            figure_html = f'<div class="figure">{figure_html}</div>\n'
            n_figures += 1
        table_html = "" if section.table is None else _table(section.table)
        lead = ""
        if section.verdict or section.lead:
            badge = _badge(section.verdict) + " " if section.verdict else ""
            lead = f'<p class="lead">{badge}{html.escape(section.lead)}</p>\n'
        explanation = (f'<p class="explanation">{html.escape(section.explanation)}</p>\n'
                       if section.explanation else "")  # fmt: skip
        notes = f'<p class="notes">{html.escape(section.notes)}</p>\n' if section.notes else ""
        parts.append(
            f'<section id="section-{index}">\n'
            f"<h2>{html.escape(section.title)}</h2>\n"
            f"{lead}{explanation}{figure_html}{table_html}{notes}</section>"
        )
    contents = "\n".join(
        f'<li><a href="#section-{index}">{html.escape(section.title)}</a></li>'
        for index, section in enumerate(sections)
    )
    # One plotly.js bundle in <head>; "</script" cannot occur in it, so it embeds verbatim.
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n"
        f'<meta name="anchor-flow-figures" content="{n_figures}">\n{_ERROR_CAPTURE}'
        "<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>\n"
        f'<script type="text/javascript">{get_plotlyjs()}</script>\n</head>\n<body>\n<main>\n'
        f'<h1>{html.escape(title)}</h1>\n<pre id="js-errors"></pre>\n<nav><ol>\n{contents}\n'
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
    report, also when a figure fails to render (or the disk fills up). A report that would
    not change is not rewritten.

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
    data = page.encode("utf-8")
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return path  # nothing changed: not rewritten (the report is ~5 MB)
    write_atomic(path, lambda handle: handle.write(data))
    return path
