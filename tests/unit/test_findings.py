"""Findings (issue 16): verdict rules, the shallow/deep layer rule and each claim's statistic
on hand-made result objects whose answer is known (no model)."""

from __future__ import annotations

import json
import math
from importlib import resources

import jsonschema
import pytest
import torch

from anchor_flow.analysis.deep import DeepResult
from anchor_flow.analysis.edges import FINE_GROUPS
from anchor_flow.analysis.findings import (
    causal_anchors,
    claim_layers,
    deep_prediction,
    deep_reading,
    findings_frame,
    shallow_aggregation,
    verdict,
)
from anchor_flow.analysis.isolation import IsolationCondition, IsolationResult
from anchor_flow.analysis.saliency.result import SaliencyResult
from anchor_flow.errors import AnchorFlowError
from anchor_flow.icl.roles import Role

B, T, F, L, Q = Role.BOS, Role.TEXT, Role.FORMAT, Role.LABEL, Role.TARGET


@pytest.mark.parametrize(
    ("value", "low", "high", "kind", "expected"),
    [
        (2.0, 1.5, 2.6, "ratio", "holds"),
        (0.4, 0.3, 0.6, "ratio", "inverted"),
        (1.02, 0.95, 1.1, "ratio", "does not hold"),
        (1.1, 1.05, 1.15, "ratio", "does not hold"),  # significant, below the margin
        (1.5, 0.7, 3.0, "ratio", "inconclusive"),
        (1.3, 1.1, 1.6, "ratio", "holds"),
        (math.inf, math.inf, math.inf, "ratio", "holds"),  # the control is exactly zero
        (0.3, 0.2, 0.4, "difference", "holds"),
        (-0.3, -0.4, -0.2, "difference", "inverted"),
        (0.0, -0.02, 0.03, "difference", "does not hold"),
        (0.9, 0.8, 0.95, "auc", "holds"),
        (0.01, 0.0, 0.05, "auc", "inverted"),
        (0.5, 0.48, 0.52, "auc", "does not hold"),
        (0.6, 0.4, 0.8, "auc", "inconclusive"),
        (math.nan, math.nan, math.nan, "auc", "inconclusive"),
    ],
)
def test_verdict_follows_the_interval_and_the_margin(value, low, high, kind, expected) -> None:
    assert verdict(value, low, high, kind) == expected


def test_claim_layers_are_the_first_and_last_third() -> None:
    assert claim_layers(12).shallow == (0, 1, 2, 3)
    assert claim_layers(12).deep == (8, 9, 10, 11)
    assert (claim_layers(6).shallow, claim_layers(6).deep) == ((0, 1), (4, 5))
    assert (claim_layers(2).shallow, claim_layers(2).deep) == ((0,), (1,))
    assert claim_layers(10, 0.2).deep == (8, 9)
    with pytest.raises(AnchorFlowError, match=r"fraction=0\.7; expected a share in \(0, 0\.5\]"):
        claim_layers(12, 0.7)


# One prompt: <bos> t t : L \n t t : L \n t t : (target). Label words at 4 and 9.
ROLES = [B, T, T, F, L, F, T, T, F, L, F, T, T, Q]


def _saliency(
    per_edge_row: torch.Tensor, n_prompts: int = 12, noise: float = 0.1
) -> SaliencyResult:
    """Text-row sums = per-edge value x number of text keys before the row, with noise."""
    roles = torch.tensor([ROLES] * n_prompts)
    text_before = (roles == T).double().cumsum(-1) - (roles == T).double()
    generator = torch.Generator().manual_seed(0)
    scale = 1 + noise * torch.rand(n_prompts, 1, 1, generator=generator, dtype=torch.float64)
    sums = (per_edge_row[None, None, :] * text_before[:, None, :]).expand(-1, 2, -1) * scale
    n_groups = len(FINE_GROUPS)
    return SaliencyResult(
        group_sums=torch.ones(n_prompts, 2, n_groups), group_counts=torch.ones(n_prompts, n_groups),
        label_probs=torch.full((n_prompts, 2), 0.5), gold=torch.zeros(n_prompts).long(),
        roles=roles, str_tokens=(("x",) * len(ROLES),) * n_prompts,
        text_row_sums=sums.float(),
    )  # fmt: skip


def test_c1_compares_label_rows_with_the_rows_next_to_them() -> None:
    per_edge = torch.ones(len(ROLES), dtype=torch.float64)
    per_edge[torch.tensor(ROLES) == L] = 3.0
    finding = shallow_aggregation([_saliency(per_edge)], (0,))
    assert finding.verdict == "holds"
    assert finding.value == pytest.approx(3.0)
    assert finding.control_value == pytest.approx(1.0, rel=0.1)


def test_c1_is_not_fooled_by_per_edge_saliency_that_falls_with_position() -> None:
    # Every row's per-edge saliency is 1 / position: label words are late, so against all
    # non-label rows they would look weak; against their neighbours they are equal.
    per_edge = 1.0 / torch.arange(1, len(ROLES) + 1, dtype=torch.float64)
    neighbours_mean = (per_edge[3] + per_edge[5] + per_edge[8] + per_edge[10]) / 4
    labels_mean = (per_edge[4] + per_edge[9]) / 2
    finding = shallow_aggregation([_saliency(per_edge, noise=0.0)], (0,))
    assert finding.value == pytest.approx(float(labels_mean / neighbours_mean))
    assert finding.verdict == "does not hold"


def _deep_reading_result(label: float, rest: float) -> SaliencyResult:
    n, n_groups = 12, len(FINE_GROUPS)
    sums = torch.zeros(n, 2, n_groups)
    generator = torch.Generator().manual_seed(1)
    for g, name in enumerate(FINE_GROUPS):
        if name.startswith("target <- label ("):
            sums[:, :, g] = label
        elif name.startswith(("target <- text", "target <- format")):
            sums[:, :, g] = rest
        elif name.startswith("target <- bos"):
            sums[:, :, g] = 100.0  # the sink is left out
    sums = sums * (1 + 0.1 * torch.rand(n, 2, 1, generator=generator))
    return SaliencyResult(
        group_sums=sums, group_counts=torch.ones(n, n_groups), label_probs=torch.rand(n, 2),
        gold=torch.zeros(n).long(), roles=torch.tensor([ROLES] * n),
        str_tokens=(("x",) * len(ROLES),) * n,
    )  # fmt: skip


def test_c2_is_the_target_per_edge_ratio_label_over_text_and_format() -> None:
    finding = deep_reading([_deep_reading_result(label=4.0, rest=1.0)], (1,))
    # Per edge: 2 label groups of 4 over 2 edges; 4 text/format groups of 1 over 4 edges.
    assert finding.value == pytest.approx(4.0)
    assert finding.verdict == "holds"
    assert deep_reading([_deep_reading_result(1.0, 1.0)], (1,)).verdict == "does not hold"


def _isolation(label_first: list[int], random_first: list[int], label_last: list[int]):
    conditions = (IsolationCondition("label", "first", 1), IsolationCondition("random", "first", 1),
                  IsolationCondition("label", "last", 1))  # fmt: skip
    n = len(label_first)
    return IsolationResult(
        conditions=conditions, baseline_predictions=torch.zeros(n).long(),
        predictions=torch.tensor([label_first, random_first, label_last]),
        word_jaccard=torch.ones(3, n), gold=torch.zeros(n).long(), run=torch.zeros(n).long(),
        run_names=("seed-0",),
    )  # fmt: skip


def test_c3_needs_shallow_label_isolation_to_hurt_more_than_random_and_deep() -> None:
    n = 40
    hurt = [1] * 30 + [0] * 10  # prediction 1 != baseline 0: loyalty 0.25
    kept = [0] * n
    holds = causal_anchors(_isolation(hurt, kept, kept), n_shallow=2)
    assert holds.verdict == "holds"
    assert holds.value == pytest.approx(0.75)
    assert holds.details["k"] == 1
    # Random rows hurt as much: the label words are not special.
    assert causal_anchors(_isolation(hurt, hurt, kept), 2).verdict == "does not hold"
    # Nothing hurts anywhere: does not hold (not "inverted").
    assert causal_anchors(_isolation(kept, [1] * 10 + [0] * 30, kept), 2).verdict == (
        "does not hold"
    )


def _deep(scores: torch.Tensor, predictions: torch.Tensor) -> DeepResult:
    n = scores.shape[0]
    probs = torch.nn.functional.one_hot(predictions, scores.shape[-1]).float()
    return DeepResult(scores, probs, predictions, torch.zeros(n).long(), ("seed-0",))


def test_c4_takes_the_deep_layer_furthest_from_chance_and_calls_it_inverted_below() -> None:
    generator = torch.Generator().manual_seed(0)
    predictions = torch.randint(0, 2, (60,), generator=generator)
    right = torch.nn.functional.one_hot(predictions, 2).float()
    noise = torch.rand(60, 2, generator=generator)
    scores = torch.stack([noise, 0.6 * right + noise, 1 - right], dim=1)  # layers 0, 1, 2
    finding = deep_prediction(_deep(scores, predictions), (1, 2))
    assert finding.details["layer"] == 2
    assert finding.value == pytest.approx(0.0)
    assert finding.verdict == "inverted"
    assert deep_prediction(_deep(scores, predictions), (1,)).verdict == "holds"


def test_c4_on_a_model_that_predicts_one_class_says_why_it_is_inconclusive() -> None:
    scores = torch.rand(10, 3, 2)
    finding = deep_prediction(_deep(scores, torch.zeros(10).long()), (1, 2))
    assert finding.verdict == "inconclusive"
    assert "predicts a single class" in finding.sentence


def _ranked_attention(scale: float, n: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes; the predicted class always gets ``scale`` more of the target's attention
    than the others (a perfect ranking), on top of a uniform 0.07 per class."""
    predictions = torch.arange(3).repeat(n // 3)
    scores = 0.07 + scale * torch.nn.functional.one_hot(predictions, 3).double()
    return scores[:, None, :], predictions


def test_c4_does_not_hold_on_near_uniform_attention_that_ranks_perfectly() -> None:
    # A random-init network: the split of the target's attention moves by 1e-4 (its share
    # by ~5e-4), yet AUCROC ranks it perfectly. It cannot carry the prediction.
    flat = _deep(*_ranked_attention(1e-4))
    assert float(flat.auc()[0]) == pytest.approx(1.0)
    assert float(flat.share_spread()[0]) < 1e-3
    finding = deep_prediction(flat, (0,))
    assert finding.verdict == "does not hold"
    assert "hardly varies" in finding.sentence
    assert finding.details["share_spread"][0] < 1e-3
    # The same ranking with attention that moves: the claim holds.
    varying = _deep(*_ranked_attention(0.2))
    assert float(varying.share_spread()[0]) > 0.1
    assert deep_prediction(varying, (0,)).verdict == "holds"


def test_c4_decides_on_a_deep_layer_whose_attention_varies() -> None:
    flat, predictions = _ranked_attention(1e-4)  # AUC 1 on a near-uniform split
    weak = 0.07 + 0.2 * torch.rand(60, 1, 3, generator=torch.Generator().manual_seed(1))
    weak[:, 0, :] += 0.05 * torch.nn.functional.one_hot(predictions, 3)
    finding = deep_prediction(_deep(torch.cat([flat, weak], 1), predictions), (0, 1))
    assert finding.details["layer"] == 1


def test_share_spread_is_the_spread_of_each_predicted_class_share() -> None:
    scores = torch.tensor([[1.0, 3.0, 9.0], [3.0, 1.0, 9.0], [1.0, 1.0, 9.0]])[:, None, :]
    result = _deep(scores, torch.tensor([0, 1, 0]))  # class 2 never predicted: dropped
    shares = torch.tensor([[0.25, 0.75], [0.75, 0.25], [0.5, 0.5]], dtype=torch.float64)
    assert float(result.share_spread()[0]) == pytest.approx(float(shares.std(0).mean()))
    assert torch.isnan(_deep(scores, torch.zeros(3).long()).share_spread()).all()


def test_findings_match_the_json_schema_and_the_report_table() -> None:
    schema = json.loads(
        resources.files("anchor_flow").joinpath("data/results.schema.json").read_text()
    )
    per_edge = torch.ones(len(ROLES), dtype=torch.float64)
    findings = [
        shallow_aggregation([_saliency(per_edge)], (0,)).to_dict(),
        deep_prediction(_deep(torch.rand(10, 3, 2), torch.zeros(10).long()), (2,)).to_dict(),
    ]
    jsonschema.validate(findings, schema["properties"]["findings"])
    json.dumps(findings, allow_nan=False)  # NaN became null
    frame = findings_frame(findings)
    assert list(frame["verdict"]) == ["does not hold", "inconclusive"]
    assert frame["value [95% CI]"].iloc[1] == "n/a [n/a, n/a]"
