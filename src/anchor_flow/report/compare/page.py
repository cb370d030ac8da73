"""The comparison page of ``anchor-flow compare``: sections of a :class:`RunComparison`.

:func:`comparison_sections` builds the sections (runs and the settings that differ, what
each run lacks, the findings matrix, flows and AUCROC_l over relative depth, isolation, the
applications' headline numbers, anchor heads); :func:`write_comparison` writes them as one
self-contained HTML page through :func:`anchor_flow.report.html.write_report` (plotly.js
embedded once, the page's own JavaScript-error capture). Runs no model.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from anchor_flow.report.compare.comparison import RunComparison
from anchor_flow.report.compare.figures import (
    plot_compare_auc,
    plot_compare_flows,
    plot_compare_heads,
    plot_compare_isolation,
)
from anchor_flow.report.compare.tables import format_value
from anchor_flow.report.html import ReportSection, write_report

__all__ = ["comparison_sections", "write_comparison"]

_RUNS = (
    "Each run is a results folder of anchor-flow run, labelled by its model and task (with "
    "its folder name where two runs share both). Every number on this page is the run's own, "
    "read from its files: intervals are that run's 95% bootstrap intervals over its prompts. "
    "The next table lists the settings that differ between the runs; the settings all runs "
    "share are at the end of the page. Runs that differ in more than the model (task, seeds, "
    "number of examples, layer fraction) differ in what they measure too."
)
_MISSING = (
    "What each run lacks: experiments not run or not complete (their numbers are not shown), "
    "files or columns absent (an older run), no findings or no null model. Nothing is left "
    "out silently: a run missing here shows a dash where its numbers would be."
)
_FINDINGS = (
    "The paper's claims (rows) against each run (columns), as the run's own findings judged "
    "them: verdict, the statistic and its 95% interval. Beside each run its null model (the "
    "same architecture re-initialised, same prompts): a claim that also 'holds' there is not "
    "evidence. C3 has no null row (its control is the random-row arm of the run itself). "
    "Claims added by newer versions appear as they are recorded; '—' means not measured."
)
_FLOWS = (
    "Normalised S_wp (text -> label words), S_pq (label words -> target) and S_ww (the rest) "
    "of every run, each layer at its relative depth layer / (n_layers - 1): 0 is the first "
    "layer, 1 the last, so models of different depth share one axis. Error bars: each run's "
    "95% interval. The paper's pattern: S_wp high in the shallow layers, S_pq rising to "
    "dominate in the deep ones; a re-initialised network already gives S_pq much of the "
    "mass, so read the curves with the findings' null-model column."
)
_AUC = (
    "AUCROC_l per layer at relative depth: how well the target's attention to each label "
    "word predicts the model's output (0.5 = chance), with each run's 95% interval. The "
    "paper finds it rising in the deep layers (about 0.8 and above for GPT2-XL and GPT-J)."
)
_ISOLATION = (
    "Label loyalty and word loyalty (1 = the output unchanged) after blocking the flow into "
    "the label words (dark) or into as many random rows (light), in the first (shallow, red) "
    "or the last (deep, blue) k layers. Each run shows the largest isolated layer count k "
    "not above its shallow layers (the count its C3 finding uses). The paper: isolating the "
    "label words in the shallow layers lowers loyalty most; deep isolation and random rows "
    "change little. The table lists every count each run isolated."
)
_APPLICATIONS = (
    "The applications' headline numbers per run with their 95% intervals: re-weighting "
    "(§3.1) accuracy next to vanilla 1-shot and k-shot ICL (the gain is the difference of "
    "the two means; read it against their intervals), compression (§3.2) Hidden_anchor's "
    "loyalty next to Hidden_random's (the control) and the wall-clock speed-up at the most "
    "demonstrations (one timing, no interval; the FLOP-ideal ratio beside it), diagnosis "
    "(§3.3) Spearman correlation of predicted and real confusion (n/a where undefined, e.g. "
    "a model that confuses nothing)."
)
_HEADS = (
    "The anchor heads experiment: the heads that gather text into the label words and read "
    "them at the target (their share over relative depth, right) and, causally, label "
    "loyalty after ablating those heads versus as many random heads (left), with 95% "
    "intervals. Runs without it are listed as 'no heads experiment'."
)


def _missing_table(comparison: RunComparison) -> pd.DataFrame:
    frame = comparison.missing
    if frame.empty:
        return pd.DataFrame({"run": comparison.labels, "missing": "nothing"})
    return frame[["run", "experiment", "what"]]


def _isolation_table(comparison: RunComparison) -> pd.DataFrame | None:
    frame = comparison.isolation
    if frame.empty:
        return None
    rows = frame[frame["depth_part"] != "none"].copy()
    rows["value [95% CI]"] = [
        f"{format_value(m)} [{format_value(lo)}, {format_value(hi)}]"
        for m, lo, hi in zip(rows["mean"], rows["ci_low"], rows["ci_high"], strict=True)
    ]
    wide = rows.pivot_table(index=["run", "control", "depth_part", "isolated_layers"],
                            columns="metric", values="value [95% CI]", aggfunc="first",
                            sort=False)  # fmt: skip
    return wide.reset_index().rename_axis(columns=None)


def _heads_table(comparison: RunComparison) -> pd.DataFrame:
    rows = []
    for label in comparison.labels:
        causal = comparison.heads_causal
        heads = comparison.heads
        mine = causal[causal["run"] == label] if len(causal) else causal
        top = heads[heads["run"] == label] if len(heads) else heads
        if mine.empty and top.empty:
            rows.append({"run": label, "heads": "no heads experiment"})
            continue
        parts = [
            f"{a} {m}: {format_value(v)} [{format_value(lo)}, {format_value(hi)}]"
            for a, m, v, lo, hi in zip(
                mine["arm"],
                mine["metric"],
                mine["mean"],
                mine["ci_low"],
                mine["ci_high"],
                strict=True,
            )
        ]
        tops = [
            f"{k} L{int(la)}H{int(h)} ({format_value(s)})"
            for k, la, h, s in zip(
                top["kind"], top["layer"], top["head"], top["share"], strict=True
            )
        ]
        rows.append({"run": label, "heads": "; ".join(parts + tops)})
    return pd.DataFrame(rows)


def comparison_sections(comparison: RunComparison) -> list[ReportSection]:
    """The sections of the comparison page, in order (see the module doc)."""
    runs = comparison.runs[["run", "path", "model", "task", "n_layers", "null_model",
                            "schema", "complete"]]  # fmt: skip
    has_heads = len(comparison.heads) > 0 or len(comparison.heads_causal) > 0
    differ = ("One row per setting whose value is not the same in every run ('(not "
              "recorded)': the run's record has no such setting).")  # fmt: skip
    isolation = plot_compare_isolation(comparison)
    heads = plot_compare_heads(comparison) if has_heads else None
    return [
        ReportSection("Runs compared", None, _RUNS, table=runs),
        ReportSection("Settings that differ", None, differ, table=comparison.settings_table()),
        ReportSection("What is missing", None, _MISSING, table=_missing_table(comparison)),
        ReportSection("Findings: claims x runs", None, _FINDINGS, comparison.findings_matrix()),
        ReportSection(
            "Information flow over relative depth", plot_compare_flows(comparison), _FLOWS
        ),
        ReportSection("AUCROC_l over relative depth", plot_compare_auc(comparison), _AUC),
        ReportSection(
            "Isolating label words: shallow vs deep",
            isolation,
            _ISOLATION,
            _isolation_table(comparison),
        ),
        ReportSection(
            "Applications: headline numbers", None, _APPLICATIONS, comparison.applications_table()
        ),
        ReportSection("Anchor heads", heads, _HEADS, _heads_table(comparison)),
    ]


def write_comparison(comparison: RunComparison, path: str | os.PathLike[str]) -> Path:
    """Write the comparison as one self-contained HTML page (works offline).

    Example:
        >>> comparison = compare_runs(["results/a", "results/b"])  # doctest: +SKIP
        >>> write_comparison(comparison, "compare.html")  # doctest: +SKIP
        PosixPath('compare.html')
    """
    n = len(comparison.labels)
    title = f"Comparison of {n} run{'s' if n != 1 else ''}: " + ", ".join(comparison.labels)
    return write_report(path, comparison_sections(comparison), title=title,
                        settings=comparison.shared_settings)  # fmt: skip
