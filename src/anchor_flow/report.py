"""Self-contained HTML reports of a results folder (paper §2.1–§2.3; Fig. 3, 4, 5, 7 and 9).

:func:`write_report` renders a list of :class:`ReportSection` (a title, a figure and a
paragraph on how to read it) and a settings table into ONE HTML file with plotly.js embedded
once, so the report opens offline, with no server, and can be mailed around.
:func:`saliency_report_sections` builds the standard sections from the results of
:func:`anchor_flow.saliency.run_saliency`, :func:`isolation_report_sections` and
:func:`deep_report_sections` those of the isolation and deep-layer experiments, and
:func:`render_results_folder` renders whatever a results folder holds.

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

from anchor_flow.deep import DeepResult
from anchor_flow.errors import AnchorFlowError, ResultsError
from anchor_flow.flows import InformationFlow
from anchor_flow.isolation import IsolationResult
from anchor_flow.plotting import (
    plot_flows,
    plot_group_matrix,
    plot_saliency_heatmap,
)
from anchor_flow.plotting_experiments import plot_deep, plot_flows_with_auc, plot_isolation
from anchor_flow.saliency_result import SaliencyResult

__all__ = [
    "ReportSection",
    "applications_report_sections",
    "deep_report_sections",
    "isolation_report_sections",
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


_ISOLATION = (
    "Isolation (paper §2.2, Fig. 4/8): in the first or last k layers the label words' attention "
    "to every earlier position is blocked (the self-edge stays; mode {mode}), or, as a control, "
    "that of as many randomly drawn non-label positions (seeded, fresh per layer and prompt). "
    "Label loyalty is the share of prompts whose label-restricted prediction is unchanged; word "
    "loyalty the Jaccard similarity of the top-{top_k} vocabulary tokens at the target with and "
    "without blocking. The paper finds that isolating label words in the first layers sharply "
    "lowers both loyalties, while last-layer or random isolation is nearly harmless: the "
    "shallow label words must gather the demonstrations' information for ICL to work. "
    "Whiskers are 95% bootstrap intervals over seeds (over prompts with one seed)."
)
_DEEP = (
    "Deep layers (paper §2.3, Fig. 5): in every layer the target's attention to each class's "
    "label words, summed over heads, is used as a classifier of the model's own prediction. "
    "AUCROC_l is its ROC-AUC (binary: the second class's raw score; more classes: macro "
    "one-vs-one after renormalising over the predicted classes; classes never predicted are "
    "dropped, as the official code); 0.5 is chance. R_l (dashed, right axis) is the share of "
    "the total AUC above 0.5 accumulated up to layer l (Eq. 5). The paper finds AUCROC_l near "
    "0.8 in deep layers and R_l rising mainly in the middle and later layers: the prediction "
    "is read from the label words there."
)
_OVERLAY = (
    "The saliency flows S_wp (text to label words) and S_pq (label words to target), normalised "
    "per layer, together with AUCROC_l of the deep-layer run (right axis). Under the paper's "
    "hypothesis S_wp dominates where AUCROC_l is still near 0.5, and AUCROC_l rises where S_pq "
    "takes over. The two runs use different prompts (saliency: per-example demonstrations)."
)


def isolation_report_sections(result: IsolationResult) -> list[ReportSection]:
    """The isolation bar chart with its explanation."""
    text = _ISOLATION.format(mode=result.settings.get("mode", "renormalise"),
                             top_k=result.settings.get("top_k", 5))  # fmt: skip
    return [ReportSection("Isolating label words (shallow vs deep)", plot_isolation(result), text)]


def deep_report_sections(
    result: DeepResult, flow: InformationFlow | None = None
) -> list[ReportSection]:
    """AUCROC_l and R_l, and (with a saliency run's ``flow``) the overlay with S_wp / S_pq."""
    sections = [ReportSection("Deep layers: AUCROC_l and R_l", plot_deep(result), _DEEP)]
    if flow is not None and flow.n_layers == result.n_layers:
        sections.append(
            ReportSection(
                "Saliency flows and AUCROC_l", plot_flows_with_auc(flow, result), _OVERLAY
            )
        )
    return sections


_REWEIGHT = (
    "Anchor re-weighting (paper §3.1, Table 1): one beta per layer, head and class multiplies "
    "the target's attention to that class's label words by exp(beta) (Eq. 12), fitted with "
    "the model frozen on 4 extra examples per class. Bars: vanilla ICL with the same "
    "demonstrations, vanilla ICL with the extra examples as demonstrations, and re-weighted "
    "ICL; whiskers are 95% bootstrap intervals over seeds (over prompts with one seed). The "
    "paper reports 51.9 / 46.9 / 68.6 average accuracy for GPT2-XL. The heatmaps show beta."
)
_DIAGNOSE = (
    "Error diagnosis (paper §3.3, Fig. 6): distances between the label words' keys, projected "
    "on the top principal directions of the target's queries, predict which classes the model "
    "confuses (Eq. 11; 0 = most confused). The real confusion is the AUC of p_a / (p_a + p_b) "
    "over examples of classes a and b (App. K). Beyond the paper: the Spearman rank "
    "correlation of the two over class pairs, per layer and number of components M."
)


def applications_report_sections(
    reweighting: Any = None, diagnosis: Any = None
) -> list[ReportSection]:
    """Sections of a ``ReweightingResult`` and / or a ``DiagnosisResult`` (either may be None)."""
    from anchor_flow import plotting_applications as plots

    sections = []
    if reweighting is not None:
        accuracy = plots.plot_reweighting_accuracy(reweighting)
        sections.append(ReportSection("Anchor re-weighting: accuracy", accuracy, _REWEIGHT))
        sections.append(
            ReportSection("Anchor re-weighting: beta", plots.plot_betas(reweighting), "")
        )
    if diagnosis is not None:
        sections.append(
            ReportSection("Error diagnosis", plots.plot_confusion(diagnosis), _DIAGNOSE)
        )
        correlation = plots.plot_confusion_correlation(diagnosis)
        sections.append(ReportSection("Error diagnosis: correlation per layer", correlation, ""))
    return sections


_COMPRESSION = (
    "Anchor-only context compression (paper §3.2, Table 2): the demonstrations run once and "
    "every layer keeps keys/values only at their formatting and label words (Hidden_anchor); "
    "Hidden_random swaps the label words for random text positions of the same "
    "demonstration, Hidden_random-top keeps the best of {trials} such sets by label loyalty, "
    "Text_anchor keeps the formatting and labels as text. Loyalties compare with full-prompt "
    "ICL (word loyalty: top-{top_k} tokens); query positions: {policy}. GPT2-XL in the paper: "
    "Hidden_anchor 79.5 / 62.2 / 45.0 (label loyalty / word loyalty / accuracy) vs ICL "
    "accuracy 51.9."
)


def compression_report_sections(
    directory: str | os.PathLike[str],
) -> tuple[list[ReportSection], dict[str, Any]]:
    """The Table 2 bar chart of a saved ``CompressionResult`` and its prefixed settings."""
    from anchor_flow.compression_baselines import CompressionResult
    from anchor_flow.plotting_compression import plot_compression

    result = CompressionResult.load(directory)
    settings = result.settings
    text = _COMPRESSION.format(trials=settings.get("n_top_trials", 20),
                               top_k=settings.get("top_k", 5),
                               policy=settings.get("position_policy", "original"))  # fmt: skip
    section = ReportSection("Anchor-only context compression", plot_compression(result), text)
    return [section], {f"compression {k}": v for k, v in result.settings.items()}


def render_results_folder(directory: str | os.PathLike[str]) -> Path:
    """Render ``report.html`` from every result in ``directory``.

    Reads what the CLI wrote: ``saliency.json`` (+ ``saliency/``), ``isolation/`` and ``deep/``;
    each present part adds its sections.

    Example:
        >>> render_results_folder("results/quickstart")  # doctest: +SKIP
        PosixPath('results/quickstart/report.html')
    """
    directory = Path(directory)
    summary = directory / "saliency.json"
    flow = InformationFlow.load(summary) if summary.is_file() else None
    isolation = directory / "isolation" / "isolation_meta.json"
    deep = directory / "deep" / "deep_meta.json"
    reweighting = directory / "reweighting" / "reweighting_meta.json"
    diagnosis = directory / "diagnosis" / "diagnosis_meta.json"
    applications = reweighting.is_file() or diagnosis.is_file()
    compression = directory / "compression" / "compression_meta.json"
    applications_or_compression = applications or compression.is_file()
    if (
        flow is None
        and not isolation.is_file()
        and not deep.is_file()
        and not applications_or_compression
    ):
        raise ResultsError(
            f"{str(directory)!r} holds no saliency.json, isolation/ or deep/ (nor reweighting/, "
            "diagnosis/, compression/); expected a results folder written by `anchor-flow "
            "saliency`, `isolation` or `deep` (a run that finished), `reweight`, `diagnose` "
            "or `compress`"
        )
    sections: list[ReportSection] = []
    settings: dict[str, Any] = {}
    if flow is not None:
        # Raw results: saliency/ or saliency/<run>/ (one per seed); heatmaps use the first.
        runs = sorted(meta.parent for meta in (directory / "saliency").rglob("saliency_meta.json"))
        sections += saliency_report_sections(flow, SaliencyResult.load(runs[0]) if runs else None)
        settings.update(flow.settings)
    if isolation.is_file():
        isolation_result = IsolationResult.load(isolation.parent)
        sections += isolation_report_sections(isolation_result)
        settings.update({f"isolation {k}": v for k, v in isolation_result.settings.items()})
    if deep.is_file():
        deep_result = DeepResult.load(deep.parent)
        sections += deep_report_sections(deep_result, flow)
        settings.update({f"deep {k}": v for k, v in deep_result.settings.items()})
    if applications:
        from anchor_flow.diagnosis import DiagnosisResult
        from anchor_flow.reweighting_protocol import ReweightingResult

        loaded = [
            ReweightingResult.load(reweighting.parent) if reweighting.is_file() else None,
            DiagnosisResult.load(diagnosis.parent) if diagnosis.is_file() else None,
        ]
        sections += applications_report_sections(*loaded)
        for prefix, result in zip(("reweighting", "diagnosis"), loaded, strict=True):
            settings.update(
                {f"{prefix} {k}": v for k, v in getattr(result, "settings", {}).items()}
            )
        settings.setdefault("model", next((r.settings.get("model") for r in loaded if r), None))
    if compression.is_file():
        compression_result = compression_report_sections(compression.parent)
        sections += compression_result[0]
        settings.update(compression_result[1])
        settings.setdefault("model", settings.get("compression model"))
    model = settings.get("model") or settings.get("isolation model") or settings.get("deep model")
    title = f"Information flow: {model or 'model'}"
    return write_report(directory / "report.html", sections, title=title, settings=settings)
