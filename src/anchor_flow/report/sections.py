"""The standard report sections of each experiment: a figure, a paragraph, maybe a table.

One function per experiment turns its result object into :class:`~anchor_flow.report.html.
ReportSection` values (paper §2.1 Fig. 3/7/9, §2.2 Fig. 4/8, §2.3 Fig. 5, §3.1 Table 1, §3.2
Table 2/3, §3.3 Fig. 6). Each paragraph says what the figure shows, how to read it, and what
the paper found, so a report can be read without the paper at hand. Runs no model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pandas as pd

from anchor_flow.analysis.deep import DeepResult
from anchor_flow.analysis.flows import InformationFlow
from anchor_flow.analysis.isolation import IsolationResult
from anchor_flow.analysis.saliency.result import SaliencyResult
from anchor_flow.errors import AnchorFlowError
from anchor_flow.report.figures.analysis import (
    plot_deep,
    plot_flows_with_auc,
    plot_isolation,
    r_defined,
)
from anchor_flow.report.figures.saliency import plot_flows, plot_group_matrix, plot_saliency_heatmap
from anchor_flow.report.html import ReportSection

__all__ = [
    "applications_report_sections",
    "compression_report_sections",
    "deep_report_sections",
    "interval_table",
    "isolation_report_sections",
    "saliency_report_sections",
    "speedup_report_section",
]


def interval_table(frame: pd.DataFrame, index: list[str], column: str) -> pd.DataFrame:
    """A long ``mean, ci_low, ci_high`` frame as a wide table of ``"0.812 [0.770, 0.850]"``.

    Example:
        >>> long = pd.DataFrame({"method": ["a"], "metric": ["accuracy"], "mean": [0.5],
        ...                      "ci_low": [0.4], "ci_high": [0.6]})
        >>> interval_table(long, ["method"], "metric").iloc[0].tolist()
        ['a', '0.500 [0.400, 0.600]']
    """
    cells = frame.assign(
        value=[f"{m:.3f} [{lo:.3f}, {hi:.3f}]"
               for m, lo, hi in zip(frame["mean"], frame["ci_low"], frame["ci_high"], strict=True)]
    )  # fmt: skip
    wide = cells.pivot(index=index, columns=column, values="value")
    order = list(dict.fromkeys(frame[column]))
    return wide[order].reindex(pd.MultiIndex.from_frame(frame[index].drop_duplicates())
                               if len(index) > 1 else list(dict.fromkeys(frame[index[0]]))
                               ).reset_index().rename_axis(columns=None)  # fmt: skip


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
    "each group belongs to. The means run over the prompts of every seed: the same prompts as "
    "the flows above."
)
_HEATMAP = (
    "The saliency map I_l(i, j) of prompt 0{run} in layer {layer}: row i is the position that "
    "reads, column j the position read, so row i shows where token i takes information from. Cells "
    "above the diagonal are blank because attention is causal. The coloured squares above the "
    "columns and left of the rows mark each token's role (label words, target, text, "
    "formatting, BOS); a saliency concentrated in the label-word rows suggests aggregation "
    "into the anchors (S_wp), one in the target row at the label-word columns suggests the "
    "prediction reading them (S_pq). Large values in the BOS column are common: the first "
    "token acts as an attention sink."
)


def seed_aggregation_note(flow: InformationFlow) -> str:
    """One sentence on how the seeds were combined (``flow.aggregation``)."""
    if flow.n_runs == 1:
        return " One seed (no aggregation over seeds)."
    if flow.aggregation == "per_seed":
        return (f" Seed aggregation per_seed (the paper's order): each of the {flow.n_runs} "
                "seeds' mean flows is normalised, then the curves are averaged; bands resample "
                "prompts within each seed.")  # fmt: skip
    return (f" Seed aggregation pooled: the prompts of all {flow.n_runs} seeds are pooled, "
            "then normalised once (the paper normalises each seed, then averages).")  # fmt: skip


def saliency_report_sections(
    flow: InformationFlow, result: SaliencyResult | Sequence[SaliencyResult] | None = None
) -> list[ReportSection]:
    """The standard sections of a saliency report.

    Example:
        >>> sections = saliency_report_sections(result.flows(), result)  # doctest: +SKIP
        >>> write_report("saliency.html", sections, title="GPT2-XL, SST-2")  # doctest: +SKIP

    Args:
        flow: the per-prompt flows (``result.flows()``, or loaded from ``saliency.json``).
        result: the saliency result, or one per run (seed) of the flows: the role-to-role
            matrix pools them as the flows do; when the first kept maps, the heatmaps of its
            prompt 0 in the first and last layer.

    Returns:
        Normalised flows with intervals, raw flows, then (with ``result``) the role-to-role
        matrix and the heatmaps.
    """
    results = [result] if isinstance(result, SaliencyResult) else list(result or ())
    for one in results:
        if one.n_layers != flow.n_layers:
            raise AnchorFlowError(
                f"flow has {flow.n_layers} layers but result has {one.n_layers}; expected the "
                "flows and the saliency result of the same run"
            )
    level = "95%"
    sections = [
        ReportSection(
            "Relative information flow per layer",
            plot_flows(flow, normalised=True, ci=True),
            _FLOWS_NORMALISED.format(level=level) + seed_aggregation_note(flow),
        ),
        ReportSection(
            "Mean saliency per edge",
            plot_flows(flow, normalised=False, ci=True),
            _FLOWS_RAW.format(level=level),
        ),
    ]
    if not results:
        return sections
    sections.append(
        ReportSection("Role-to-role flow", plot_group_matrix(results, layer=None), _GROUP_MATRIX)
    )
    first = results[0]
    if first.maps is not None:
        run = f" of the first of {len(results)} runs" if len(results) > 1 else ""
        for layer in dict.fromkeys((0, first.n_layers - 1)):
            sections.append(
                ReportSection(
                    f"Saliency map, prompt 0, layer {layer}",
                    plot_saliency_heatmap(first, prompt=0, layer=layer),
                    _HEATMAP.format(layer=layer, run=run),
                )
            )
    return sections


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
    "is read from the label words there. R_l is a share of the total AUC above 0.5, so it is "
    "hidden ('—') when the AUCs lie below 0.5 on balance, and a layer whose AUCROC_l is at or "
    "below 0.5 is flagged."
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
    table = interval_table(result.summary_frame(), ["control", "position", "n_layers"], "metric")
    title = "Isolating label words (shallow vs deep)"
    return [ReportSection(title, plot_isolation(result), text, table=table)]


def deep_report_sections(
    result: DeepResult, flow: InformationFlow | None = None
) -> list[ReportSection]:
    """AUCROC_l and R_l, and (with a saliency run's ``flow``) the overlay with S_wp / S_pq."""
    frame = result.summary_frame()[["layer", "auc_roc", "ci_low", "ci_high", "r"]]
    # R_l reads as a share only where the AUCs exceed 0.5 on balance; a layer at or below
    # chance is flagged (its R_l falls or stays).
    defined = r_defined(result.auc())
    frame["r"] = [("—" if not defined else f"{r:.3f}" + (" (AUCROC_l ≤ 0.5)" if a <= 0.5 else ""))
                  for r, a in zip(frame["r"], frame["auc_roc"], strict=True)]  # fmt: skip
    table = frame.rename(columns={"auc_roc": "AUCROC_l", "r": "R_l"})
    sections = [
        ReportSection("Deep layers: AUCROC_l and R_l", plot_deep(result), _DEEP, table=table)
    ]
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
_BETA = (
    "The fitted re-weighting parameters beta (Eq. 12), one heatmap per class: rows are layers, "
    "columns heads. exp(beta) multiplies the target's attention to that class's label words, "
    "so beta > 0 (red) strengthens and beta < 0 (blue) weakens the anchor's pull in that head; "
    "beta = 0 leaves the model unchanged (the initialisation). Large values concentrated in a "
    "few deep heads mean the fit mostly recalibrated the heads that read the anchors; values "
    "spread over all layers with little accuracy gain suggest overfitting the few training "
    "examples. Means over seeds."
)
_CORRELATION = (
    "How well the predicted confusion (anchor-key distances, Eq. 11) ranks the class pairs "
    "like the real confusion, as a Spearman correlation, for every layer (x axis) and number of "
    "principal components M (one line each); the paper uses layer 2/3 of the depth and M = 10 "
    "and shows agreement only qualitatively. Values near 1 mean the anchor geometry predicts "
    "which classes the model mixes up; near 0, that it does not. With K classes there are only "
    "K(K-1)/2 pairs, so with three classes a correlation of ±1 or ±0.5 is a coin toss: read it "
    "with the number of pairs in mind."
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
    from anchor_flow.report.figures import applications as plots

    sections = []
    if reweighting is not None:
        accuracy = plots.plot_reweighting_accuracy(reweighting)
        table = interval_table(reweighting.summary_frame(), ["condition"], "metric")
        sections.append(
            ReportSection("Anchor re-weighting: accuracy", accuracy, _REWEIGHT, table=table)
        )
        sections.append(
            ReportSection("Anchor re-weighting: beta", plots.plot_betas(reweighting), _BETA)
        )
    if diagnosis is not None:
        pairs = diagnosis.to_frame()
        sections.append(
            ReportSection(
                "Error diagnosis", plots.plot_confusion(diagnosis), _DIAGNOSE, table=pairs
            )
        )
        correlation = plots.plot_confusion_correlation(diagnosis)
        sections.append(
            ReportSection("Error diagnosis: correlation per layer", correlation, _CORRELATION)
        )
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
    from anchor_flow.applications.compression.baselines import CompressionResult
    from anchor_flow.report.figures.compression import plot_compression

    result = CompressionResult.load(directory)
    settings = result.settings
    text = _COMPRESSION.format(trials=settings.get("n_top_trials", 20),
                               top_k=settings.get("top_k", 5),
                               policy=settings.get("position_policy", "original"))  # fmt: skip
    table = interval_table(result.summary_frame(), ["method"], "metric")
    section = ReportSection(
        "Anchor-only context compression", plot_compression(result), text, table=table
    )
    sections = [section]
    speed_folder = os.path.join(directory, os.pardir, "compression_speed")
    if os.path.isfile(os.path.join(speed_folder, "speedup_meta.json")):
        sections.append(_speed_section(speed_folder))
    return sections, {f"compression {k}": v for k, v in result.settings.items()}


_SPEED = (
    "Speed of Hidden_anchor (paper §3.2, Table 3): per-query wall time of the full prompt "
    "divided by that of the query answered from the pre-built anchor cache (the one-time "
    "cache build excluded, as the paper; 'amortised' includes it), per number of "
    "demonstrations (x axis: tokens before the query). 'FLOP-ideal' (right axis) is the "
    "ratio of the attention and MLP multiply-adds; 'floor' is the full prompt's time over "
    "that of the query tokens alone with no context, the best any cache could do on this "
    "hardware. On small models and at batch 1 the per-layer overhead, not FLOPs, dominates, "
    "so the measured speed-up sits near the floor, far below the FLOP-ideal; the paper "
    "reports 1.1-2.5x for GPT2-XL on a GPU. Timings are medians on the machine that ran this "
    "report; compression_speed.csv also holds the prompt counts and the ratios to the ideal "
    "and floor."
)


# The report's speed table: what a reader compares, headers that wrap (the full frame,
# 18 columns, would overflow the page sideways; it is in compression_speed.csv).
_SPEED_COLUMNS = {
    "group": "group", "demo_length": "tokens before query", "kept_length": "tokens kept",
    "query_length": "query tokens", "full_ms": "full prompt (ms)",
    "compressed_ms": "from cache (ms)", "build_ms": "cache build (ms)", "speedup": "speed-up",
    "amortised_speedup": "amortised speed-up", "floor_ratio": "floor", "flop_ideal": "FLOP-ideal",
}  # fmt: skip


def speedup_report_section(result: Any) -> ReportSection:
    """The Table 3 section of a ``SpeedupResult``: the curve and a table that fits the page."""
    from anchor_flow.report.figures.compression import plot_speedup

    table = result.to_frame()[list(_SPEED_COLUMNS)]
    for column in ("demo_length", "kept_length", "query_length"):  # token counts: integers
        table[column] = table[column].round().astype("Int64")
    table = table.rename(columns=_SPEED_COLUMNS)
    return ReportSection("Compression speed-up vs demonstration length", plot_speedup(result),
                         _SPEED, table=table)  # fmt: skip


def _speed_section(folder: str) -> ReportSection:
    from anchor_flow.applications.compression.speedup_result import SpeedupResult

    return speedup_report_section(SpeedupResult.load(folder))
