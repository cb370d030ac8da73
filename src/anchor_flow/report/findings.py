"""The findings at the top of a run's report (issue 16), and the null model beside the curves.

* :func:`findings_section`: a headline (model, task, vanilla ICL accuracy with its interval
  next to chance) and the compact table of ``results.json["findings"]``: one row per claim
  and subject (the model, its re-initialised null model), verdict, statistic with its 95%
  interval, the control's value.
* :func:`plot_null_comparison`: the normalised flows (Fig. 3) and AUCROC_l (Fig. 5) of the
  model (solid) and of its null model (dashed), so that a reader sees which part of a curve
  a network that learned nothing already draws.

Runs no model; reads result objects and the run record.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from anchor_flow.analysis.deep import DeepResult
from anchor_flow.analysis.edges import PAPER_FLOWS
from anchor_flow.analysis.findings.verdicts import MARGINS, MIN_PROMPTS, findings_frame
from anchor_flow.analysis.flows import InformationFlow
from anchor_flow.analysis.saliency.result import SaliencyResult
from anchor_flow.report.figures.analysis import AUC_COLOUR, _band
from anchor_flow.report.figures.saliency import FLOW_COLOURS, _cells
from anchor_flow.report.html import ReportSection
from anchor_flow.results.runs import run_folders

__all__ = [
    "NULL_SENTENCE",
    "findings_section",
    "findings_sections",
    "headline",
    "load_null_results",
    "plot_null_comparison",
    "with_verdicts",
]

NULL_SENTENCE = (
    "Bands: 95% bootstrap intervals over prompts; shaded: the shallow and deep layers that the "
    "claims read. "
    "Dashed: the same architecture with re-initialised weights (the null model), same prompts: "
    "what a network that learned nothing draws, e.g. S_pq takes most of the normalised mass "
    "at random initialisation, so only the gap between solid and dashed says something."
)

_FINDINGS = (
    "Does this run show the paper's claims? C1: in the shallow layers label words draw more "
    "saliency per edge from the text before them than the text and formatting positions next "
    "to them. C2: in the deep layers the target draws more saliency per edge from the label "
    "words than from its other text and formatting positions. C3: isolating the label words in "
    "the shallow layers lowers label loyalty more than isolating as many random rows there, and "
    "more than isolating them in as many deep layers (paired over prompts). C4: in the deep "
    "layer where AUCROC_l is furthest from 0.5, the target's attention to the label words "
    "predicts the model's output (above 0.5; below is 'inverted'). H1 (beyond the paper): "
    "blocking the label-word flow in the top gathering and reading heads lowers label loyalty "
    "more than blocking it in as many random heads of the same layers (paired). A1: re-weighted "
    "ICL beats "
    "vanilla 1-shot and k-shot ICL in accuracy (paired per prompt within each seed). A2: "
    "Hidden_anchor keeps the full prompt's predictions (label loyalty) better than Hidden_random "
    "and Text_anchor. A3: the predicted confusion ranks the class pairs like the real one "
    "(Spearman, against a permutation null; fewer than 6 class pairs is 'inconclusive'). "
    "Shallow layers {shallow}, "
    "deep layers {deep} (the first and last {fraction} of the layers). Intervals are 95% "
    "bootstrap intervals over prompts. A claim 'holds' when its interval excludes no effect and "
    "the estimate clears a margin (ratio {ratio}, loyalty difference {difference}, AUC 0.5 ± "
    "{auc}; for C4 also attention that varies: near-uniform attention, whose split between the "
    "classes moves by less than {share} between prompts, cannot carry a prediction, so there C4 "
    "does not hold whatever its AUC); 'does not hold' when the interval rules out an effect "
    "that large; 'inverted' when "
    "the opposite holds; else 'inconclusive' (always with fewer than {min_prompts} prompts). "
    "{null} A ratio whose control is below float32 resolution of the compared value reads "
    "'control ≈ 0' (the raw numbers are in results.json). Claims whose experiment was not run "
    "are not listed."
)


def headline(record: dict[str, Any]) -> str:
    """Model, task, vanilla ICL accuracy with its interval next to chance (one line)."""
    model = record.get("model", {}).get("source") or record.get("model", {}).get("name", "model")
    resolved = record.get("settings_resolved", {})
    task = resolved.get("task") or record.get("settings", {}).get("task", "task")
    classes = resolved.get("class_names") or []
    chance = f"chance {1 / len(classes):.2f}" if classes else "chance unknown"
    summary = record.get("experiments", {}).get("isolation", {}).get("summary", {})
    rows = [r for r in summary.get("means", []) if r.get("control") == "none"]
    if rows:
        row = rows[0]
        accuracy = (f"vanilla ICL accuracy {row['mean']:.3f} [{row['ci_low']:.3f}, "
                    f"{row['ci_high']:.3f}]")  # fmt: skip
    else:
        per_seed = record.get("experiments", {}).get("saliency", {}).get("summary", {})
        values = list(per_seed.get("accuracy", {}).values())
        accuracy = "vanilla ICL accuracy not measured"
        if values:
            accuracy = (f"vanilla ICL accuracy {sum(values) / len(values):.3f} (mean over "
                        f"{len(values)} seed(s))")  # fmt: skip
    return f"Model {model}, task {task}: {accuracy}, {chance}."


def findings_section(record: dict[str, Any]) -> ReportSection | None:
    """The first section of a run's report, or None when the record has no findings yet."""
    findings = record.get("findings")
    if not findings:
        return None
    layers = record.get("claim_layers", {})
    null = record.get("null_model", {})
    if null.get("kind") == "random-init":
        null_text = (f"The null model is the same architecture re-initialised (seed "
                     f"{null.get('seed')}) on the prompts of {null.get('prompts', 'one seed')}: "
                     "on it no claim should hold. Where it does, the claim's bar is met by a "
                     "network that learned nothing, so the model's verdict for that claim "
                     "reads 'not distinguished from the null' instead of 'holds'. It has no "
                     "C3 row: C3's control is the random-row isolation arm on the model "
                     "itself, so the null model runs no isolation; the applications (A1-A3) "
                     "have no null row either.")  # fmt: skip
    else:
        null_text = f"No null model: {null.get('reason', 'none was run')}."
    text = _FINDINGS.format(
        shallow=layers.get("shallow"), deep=layers.get("deep"),
        fraction=f"{layers.get('fraction', 1 / 3):.3g}", null=null_text,
        min_prompts=MIN_PROMPTS, **MARGINS,
    )  # fmt: skip
    counts = Counter(f["verdict"] for f in findings if f["subject"] == "model")
    lead = "The model: " + ", ".join(f"{n} {v}" for v, n in counts.most_common()) + "."
    return ReportSection(
        "Findings: " + headline(record), None,
        "One row per claim and subject, its verdict and why; how the verdicts are made is "
        "below the table.", table=findings_frame(findings), lead=lead, notes=text,
    )  # fmt: skip


# Which report section shows which finding: the section leads with its verdict and reason.
SECTION_CLAIMS = {
    "Relative information flow per layer": ("C1", "C2"),
    "Isolating label words (shallow vs deep)": ("C3",),
    "Deep layers: AUCROC_l and R_l": ("C4",),
    "Anchor re-weighting: accuracy": ("A1",),
    "Anchor-only context compression": ("A2",),
    "Error diagnosis": ("A3",),
    "Anchor heads: blocking them vs random heads": ("H1",),
}


def with_verdicts(sections: list[ReportSection], record: dict[str, Any]) -> list[ReportSection]:
    """``sections`` with the model's verdict and reason at the top of each section that shows
    a claim (:data:`SECTION_CLAIMS`); unchanged without findings."""
    model = {f["claim"]: f for f in record.get("findings") or () if f["subject"] == "model"}
    out = []
    for section in sections:
        found = [model[c] for c in SECTION_CLAIMS.get(section.title, ()) if c in model]
        if found:
            verdicts = {f["verdict"] for f in found}
            verdict = found[0]["verdict"] if len(verdicts) == 1 else ""
            lead = " ".join(
                (f"{f['claim']} {f['verdict']}: " if len(found) > 1 else "")
                + f["sentence"].split(": ", 1)[-1]
                + (f" (why: {f['reason']}.)" if f.get("reason") else "")
                for f in found
            )
            section = replace(section, verdict=verdict, lead=lead)
        out.append(section)
    return out


def plot_null_comparison(
    flow: InformationFlow | None,
    null_flow: InformationFlow | None,
    deep: DeepResult | None,
    null_deep: DeepResult | None,
    *,
    layers: dict[str, Any] | None = None,
) -> go.Figure:
    """Normalised flows and AUCROC_l per layer: the model solid, its null model dashed, each
    with its 95% bootstrap band; ``layers`` (``results.json["claim_layers"]``) shades the
    shallow and deep layers that the claims read.

    Example:
        >>> fig = plot_null_comparison(flow, null_flow, deep, null_deep)  # doctest: +SKIP
    """
    figure = make_subplots(rows=1, cols=2, subplot_titles=("Normalised flows", "AUCROC_l"))
    for source, dash, suffix in ((flow, "solid", ""), (null_flow, "dash", " (null model)")):
        if source is None:
            continue
        values = source.normalised()
        low, high = source.interval(normalised=True)
        x = list(range(source.n_layers))
        for index, name in enumerate(PAPER_FLOWS):
            band = _band(x, _cells(low[index]), _cells(high[index]), FLOW_COLOURS[name],
                         f"{name}{suffix} 95% CI")  # fmt: skip
            figure.add_trace(band, row=1, col=1)
            figure.add_trace(
                go.Scatter(x=list(range(source.n_layers)), y=values[index].tolist(),
                           name=name + suffix, mode="lines+markers",
                           line={"color": FLOW_COLOURS[name], "dash": dash}),
                row=1, col=1,
            )  # fmt: skip
    for result, dash, suffix in ((deep, "solid", ""), (null_deep, "dash", " (null model)")):
        if result is None:
            continue
        low, high = result.interval()
        x = list(range(result.n_layers))
        figure.add_trace(_band(x, _cells(low), _cells(high), AUC_COLOUR,
                               f"AUCROC_l{suffix} 95% CI"), row=1, col=2)  # fmt: skip
        figure.add_trace(
            go.Scatter(x=list(range(result.n_layers)), y=result.auc().tolist(),
                       name="AUCROC_l" + suffix, mode="lines+markers",
                       line={"color": AUC_COLOUR, "dash": dash}),
            row=1, col=2,
        )  # fmt: skip
    # Shaded after the traces: plotly leaves out shapes of subplots that are still empty.
    for name, colour in (("shallow", "rgba(31,119,180,0.13)"), ("deep", "rgba(214,39,40,0.10)")):
        chosen = (layers or {}).get(name) or []
        for col in (1, 2):
            if chosen:
                label = ({"annotation_text": f"{name} layers", "annotation_position": "top left"}
                         if col == 1 else {})  # fmt: skip
                figure.add_vrect(x0=min(chosen) - 0.5, x1=max(chosen) + 0.5, fillcolor=colour,
                                 line_width=0, layer="below", row=1, col=col,
                                 **label)  # fmt: skip
    figure.update_xaxes(title_text="layer", dtick=1, tick0=0)
    figure.update_yaxes(title_text="share of the three flows", range=[0, 1], row=1, col=1)
    figure.update_yaxes(title_text="AUCROC_l", range=[0, 1], row=1, col=2)
    figure.update_layout(template="plotly_white", height=420)
    return figure


def load_null_results(directory: str | Path) -> tuple[list[SaliencyResult], DeepResult | None]:
    """The null model's saliency results (one per seed) and deep result, or ``[]`` / None."""
    folder = Path(directory) / "null_model"
    saliency = [SaliencyResult.load(run)
                for run in run_folders(folder / "saliency", "saliency_meta.json")]  # fmt: skip
    deep = DeepResult.load(folder / "deep") if (folder / "deep").is_dir() else None
    return saliency, deep


def findings_sections(directory: str | Path, record: dict[str, Any]) -> list[ReportSection]:
    """The findings table and, with a null model, the model-vs-null figure (report top)."""
    first = findings_section(record)
    if first is None:
        return []
    sections = [first]
    if record.get("null_model", {}).get("status") != "complete":
        return sections
    directory = Path(directory)
    complete = {
        n for n, e in record.get("experiments", {}).items() if e.get("status") == "complete"
    }
    null_saliency, null_deep = load_null_results(directory)
    flow = InformationFlow.load(directory / "saliency.json") if "saliency" in complete else None
    deep = DeepResult.load(directory / "deep") if "deep" in complete else None
    # The null model's seeds combine as the model's do (the run's seed_aggregation).
    null_flow = (InformationFlow.concat([r.flows() for r in null_saliency],
                                        aggregation=flow.aggregation)
                 if null_saliency and flow is not None else None)  # fmt: skip
    null_deep = null_deep if deep is not None else None
    if flow is None and deep is None:
        return sections
    figure = plot_null_comparison(flow, null_flow, deep, null_deep,
                                  layers=record.get("claim_layers"))  # fmt: skip
    sections.append(ReportSection("The model against its null model", figure, NULL_SENTENCE))
    return sections
