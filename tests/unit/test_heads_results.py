"""Anchor heads without a model (issue 24): shares, enrichment and margins on hand-made sums,
claim H1's verdicts on hand-made outcomes, the report's figures and sections."""

from __future__ import annotations

import pytest
import torch

from anchor_flow.analysis.edges import FINE_GROUPS
from anchor_flow.analysis.findings import CLAIMS, anchor_heads_frame, causal_heads
from anchor_flow.analysis.heads import HeadBlockingResult, HeadFlows
from anchor_flow.analysis.heads.flows import kind_groups
from anchor_flow.errors import AnchorFlowError
from anchor_flow.report.figures.heads import plot_head_blocking, plot_head_shares
from anchor_flow.report.heads import heads_report_sections

G = len(FINE_GROUPS)


def hand_made_flows(n_prompts: int = 4) -> HeadFlows:
    """2 layers x 2 heads; one edge per fine group, so the gathering kind has 2 of 27 edges.

    Layer 0: head 0 puts 4 on each gathering group (nothing else), head 1 puts 1 on each of
    the 23 groups of neither kind: shares 1 and 0; head 0's enrichment (8 / 2) / (8 / 27) = 13.5.
    Layer 1: head 0 has all of a gathering flow of 2e-20 (share 1, enrichment ~1e-20).
    """
    gathering = kind_groups("gathering")
    assert [FINE_GROUPS[g] for g in gathering] == ["label <- text (same demo)",
                                                   "label <- text (earlier)"]  # fmt: skip
    others = [g for g in range(G) if g not in gathering + kind_groups("reading")]
    sums = torch.zeros(n_prompts, 2, 2, G)
    sums[:, 0, 0, gathering] = 4.0
    sums[:, 0, 1, others] = 1.0
    sums[:, 1, 0, gathering] = 1e-20
    sums[:, 1, 0, others] = 1.0
    sums[:, 1, 1, others] = 1.0
    signed = sums.clone()
    signed[:, 0, 1] *= -1  # signs differ from the absolute sums
    run = torch.zeros(n_prompts, dtype=torch.long)
    counts = torch.ones(n_prompts, G)
    return HeadFlows(head_sums=signed, head_abs_sums=sums, group_counts=counts, run=run,
                     run_names=("seed-1",))  # fmt: skip


def test_shares_enrichment_and_margins_by_hand():
    flows = hand_made_flows()
    shares = flows.shares("gathering")
    assert shares[0].tolist() == [[1.0, 0.0], [1.0, 0.0]]
    frame = anchor_heads_frame(flows, "gathering")
    assert list(zip(frame["layer"], frame["head"], strict=True))[:2] == [(0, 0), (1, 0)]
    assert frame.loc[0, "enrichment"] == pytest.approx(13.5)
    assert frame.loc[1, "enrichment"] == pytest.approx(1e-20 * 27 / (2e-20 + 23), rel=1e-4)
    assert frame["clears_margin"].tolist() == [True, False, False, False]
    assert flows.top_heads("gathering", 1) == [(0, 0)]
    assert flows.top_heads("gathering", 1, layers=[1]) == [(1, 0)]  # share alone ranks it
    # The reading kind has no flow anywhere: every share undefined, no head listed.
    assert bool(flows.shares("reading").isnan().all())
    assert flows.top_heads("reading", 2) == []
    assert flows.signed_layer_sums()[0, 0, 5].item() == pytest.approx(-1.0)


def test_head_flows_refuse_bad_shapes():
    with pytest.raises(AnchorFlowError, match=r"expected \[prompt, layer, head, 27\] twice"):
        HeadFlows(head_sums=torch.zeros(2, 1, 1, 5), head_abs_sums=torch.zeros(2, 1, 1, 5),
                  group_counts=torch.ones(2, 5), run=torch.zeros(2, dtype=torch.long),
                  run_names=("a",))  # fmt: skip


def blocking_result(anchor_loyal: bool, n: int = 20) -> HeadBlockingResult:
    baseline = torch.arange(n) % 3
    anchor = baseline if anchor_loyal else (baseline + 1) % 3
    return HeadBlockingResult(
        gathering_heads=((0, 0),), reading_heads=((1, 0),), baseline_predictions=baseline,
        predictions=torch.stack([anchor, baseline]), word_jaccard=torch.ones(2, n),
        gold=baseline, random_gathering=torch.ones(n, 1, dtype=torch.long),
        random_reading=torch.ones(n, 1, dtype=torch.long),
        run=torch.zeros(n, dtype=torch.long), run_names=("seed-1",),
    )  # fmt: skip


def test_h1_verdicts_by_hand():
    assert "H1" in CLAIMS
    margins = {"gathering": True, "reading": False}
    broken = causal_heads(blocking_result(anchor_loyal=False), margins=margins)
    # Every prompt changes under the anchor heads, none under random heads: +1 [1, 1].
    assert (broken.claim, broken.verdict, broken.value) == ("H1", "holds", 1.0)
    assert (broken.ci_low, broken.ci_high, broken.control_value) == (1.0, 1.0, 0.0)
    assert "heads clearing the share margin: gathering" in broken.sentence
    intact = causal_heads(blocking_result(anchor_loyal=True))
    assert (intact.verdict, intact.value) == ("does not hold", 0.0)
    frame = blocking_result(False).summary_frame()
    assert list(frame.columns) == ["arm", "metric", "mean", "ci_low", "ci_high", "n_prompts"]
    row = frame.set_index(["arm", "metric"])
    assert row.loc[("anchor_heads", "label_loyalty"), "mean"] == 0.0
    assert row.loc[("random_heads", "accuracy"), "mean"] == 1.0


def test_figures_and_sections():
    flows = hand_made_flows()
    fig = plot_head_shares(flows).to_dict()
    assert [t["type"] for t in fig["data"]] == ["heatmap", "heatmap"]
    assert fig["data"][0]["z"][0] == [1.0, 0.0]
    assert fig["data"][1]["z"][0] == [None, None]  # no reading flow: blank, not 0
    assert fig["layout"]["xaxis"]["title"]["text"] == "head"
    assert fig["layout"]["yaxis"]["title"]["text"] == "layer"
    bars = plot_head_blocking(blocking_result(False)).to_dict()
    assert [t["name"] for t in bars["data"]] == ["anchor heads", "random heads"]
    assert bars["data"][0]["y"][0] == 0.0
    assert bars["data"][1]["y"][0] == 1.0
    sections = heads_report_sections(flows, blocking_result(False))
    titles = ["Anchor heads: who gathers, who reads", "Anchor heads: blocking them vs random heads"]
    assert [s.title for s in sections] == titles
    assert sections[0].table is not None
    assert "clears margin" in sections[0].table.columns
    assert "(0, 0)" in sections[0].table["(layer, head)"].tolist()
