"""Issue 29: findings a reader trusts at a glance.

Verdicts that a null model can overturn, reasons, too few prompts, a ratio whose control is
at the floating-point floor, the applications' findings (A1-A3) on hand-made results whose
answer is worked out by hand, Spearman with ties against scipy's formula, and the one
default for combining seeds. No model runs here.
"""

from __future__ import annotations

import itertools
import json
import math
from importlib import resources
from typing import ClassVar

import jsonschema
import pytest
import torch

from anchor_flow.analysis.findings import (
    NOT_DISTINGUISHED,
    Finding,
    against_null,
    causal_anchors,
    findings_frame,
    verdict,
    verdict_reason,
)
from anchor_flow.analysis.flows import InformationFlow
from anchor_flow.analysis.isolation import IsolationCondition, IsolationResult
from anchor_flow.applications.compression.baselines import CompressionResult
from anchor_flow.applications.findings import (
    compression_finding,
    diagnosis_finding,
    reweighting_finding,
)
from anchor_flow.applications.reweighting.protocol import ReweightingResult
from anchor_flow.results.stats import spearman


def _finding(claim: str, subject: str, outcome: str, value: float = 2.0) -> Finding:
    return Finding(claim, subject, outcome, "ratio", value, value * 0.8, value * 1.2, 1.0,
                   "control", 0.1, f"The claim holds: a sentence about {claim}.", 100, (0,),
                   reason="why")  # fmt: skip


# --- verdicts ---------------------------------------------------------------------------------


def test_an_estimate_outside_its_interval_is_inconclusive_not_does_not_hold() -> None:
    # Narrow on one side, wide on the other: a skewed bootstrap over few prompts can put the
    # estimate (0.08, past the margin 0.05) outside its interval [-0.04, 0.049]. The old rule
    # looked at the interval alone and said "does not hold".
    assert verdict(0.08, -0.04, 0.049, "difference") == "inconclusive"
    assert verdict(1.5, 0.9, 1.2, "ratio") == "inconclusive"
    # A one-sided interval that reaches past the bar on one side only is undecided.
    assert verdict(0.01, -0.01, 0.3, "difference") == "inconclusive"
    assert verdict(-0.032, -0.052, -0.016, "difference") == "inconclusive"


def test_too_few_prompts_is_inconclusive_whatever_the_interval() -> None:
    assert verdict(0.0, -0.01, 0.01, "difference", n_prompts=3) == "inconclusive"
    assert verdict(0.0, -0.01, 0.01, "difference", n_prompts=10) == "does not hold"
    _, reason = verdict_reason(0.0, -0.01, 0.01, "difference", n_prompts=3)
    assert reason == "too few prompts (3 < 10)"


def test_c3_on_three_prompts_that_never_change_is_inconclusive() -> None:
    # Three prompts, loyalty 1 under every isolation: the bootstrap interval is [0, 0], which
    # the old rule read as "does not hold"; three prompts cannot rule out anything.
    conditions = tuple(IsolationCondition(c, p, 1) for c, p in
                       (("label", "first"), ("random", "first"), ("label", "last")))  # fmt: skip
    n = 3
    result = IsolationResult(
        conditions=conditions,
        baseline_predictions=torch.zeros(n, dtype=torch.long),
        predictions=torch.zeros(len(conditions), n, dtype=torch.long),
        word_jaccard=torch.ones(len(conditions), n),
        gold=torch.zeros(n, dtype=torch.long),
        run=torch.zeros(n, dtype=torch.long),
        run_names=("seed-42",),
    )
    finding = causal_anchors(result, 1)
    assert finding.verdict == "inconclusive"
    assert "too few prompts (3 < 10)" in finding.reason


def test_a_claim_its_null_model_also_holds_is_not_distinguished_from_the_null() -> None:
    found = against_null([
        _finding("C1", "model", "holds", 6.6), _finding("C1", "null model", "does not hold"),
        _finding("C2", "model", "holds", 6.6), _finding("C2", "null model", "holds", 1.9),
        _finding("C4", "model", "holds"),  # no null row: stays
    ])  # fmt: skip
    verdicts = {(f.claim, f.subject): f.verdict for f in found}
    assert verdicts[("C1", "model")] == "holds"
    assert verdicts[("C2", "model")] == NOT_DISTINGUISHED
    assert verdicts[("C2", "null model")] == "holds"
    assert verdicts[("C4", "model")] == "holds"
    c2 = next(f for f in found if f.claim == "C2" and f.subject == "model")
    assert c2.details["verdict_without_null"] == "holds"
    assert "null model meets the bar too (1.9" in c2.reason
    assert c2.sentence.startswith("Not distinguished from the null: a sentence about C2")


def test_saved_findings_keep_their_old_fields_and_add_reason_and_the_floor_flag() -> None:
    old_keys = {"claim", "subject", "verdict", "statistic", "value", "interval", "no_effect",
                "control", "control_value", "sentence", "n_prompts", "layers",
                "details"}  # fmt: skip
    saved = _floor().to_dict()
    assert old_keys <= set(saved)
    assert saved["reason"] == "r"
    assert saved["value"] == 6.1e25  # the raw value stays in results.json
    assert saved["control_at_floor"] is True
    assert _finding("C2", "model", "holds").to_dict()["control_at_floor"] is False
    schema = json.loads(resources.files("anchor_flow").joinpath("data/results.schema.json")
                        .read_text())["properties"]["findings"]  # fmt: skip
    rows = [saved, against_null([_finding("C2", "model", "holds"),
                                 _finding("C2", "null model", "holds")])[0].to_dict()]  # fmt: skip
    jsonschema.validate(rows, schema)


def _floor() -> Finding:
    """Planted-anchor's C1: the matched rows draw 1.7e-27 per edge, the ratio is 6.1e25."""
    return Finding("C1", "model", "holds", "ratio", 6.1e25, 8.4e24, 3.9e27, 1.0,
                   "matched rows", 1.7e-27, "The claim holds: x.", 100, (0,),
                   reason="r")  # fmt: skip


def test_the_table_shows_control_near_zero_a_reason_and_no_bare_no_effect_column() -> None:
    floor = _floor()
    table = findings_frame([floor.to_dict(), _finding("C2", "model", "holds").to_dict()])
    assert "no effect" not in table.columns
    assert list(table.columns[:4]) == ["claim", "subject", "verdict", "reason"]
    assert table.loc[0, "value [95% CI]"] == "≫ 1 (control ≈ 0)"
    assert "6.1e+25" not in table.to_string()
    assert table.loc[0, "control"] == "matched rows: ≈ 0 (1.7e-27)"
    assert table.loc[1, "value [95% CI]"] == "2 [1.6, 2.4]"
    assert table.loc[1, "statistic"] == "ratio; no effect = 1"
    # A record written before the flag existed: a huge ratio still reads "control ≈ 0".
    old = {k: v for k, v in floor.to_dict().items() if k not in ("reason", "control_at_floor")}
    assert findings_frame([old]).loc[0, "value [95% CI]"] == "≫ 1 (control ≈ 0)"


# --- the applications -------------------------------------------------------------------------


def _reweighting(correct_by_condition: list[list[int]], runs: list[int]) -> ReweightingResult:
    n = len(runs)
    gold = torch.zeros(3, n, dtype=torch.long)
    predictions = torch.tensor([[0 if c else 1 for c in row] for row in correct_by_condition])
    return ReweightingResult(
        predictions=predictions, gold=gold, run=torch.tensor(runs),
        run_names=tuple(f"seed-{r}" for r in sorted(set(runs))),
        betas=torch.zeros(len(set(runs)), 1, 1, 2), losses=torch.zeros(len(set(runs)), 2),
    )  # fmt: skip


def test_a1_is_the_paired_gain_over_1_shot_mean_over_seeds_and_must_beat_k_shot_too() -> None:
    # Seed 0 (20 prompts): 1-shot right on 10, re-weighted on 18, k-shot on 5.
    # Seed 1 (10 prompts): 1-shot right on 4, re-weighted on 9, k-shot on 2.
    # Gain over 1-shot: mean of 8/20 = 0.4 and 5/10 = 0.5 -> 0.45 (pooled would be 13/30).
    one = [1] * 10 + [0] * 10 + [1] * 4 + [0] * 6
    k = [1] * 5 + [0] * 15 + [1] * 2 + [0] * 8
    rw = [1] * 18 + [0] * 2 + [1] * 9 + [0] * 1
    finding = reweighting_finding(_reweighting([one, k, rw], [0] * 20 + [1] * 10))
    assert finding.claim == "A1"
    assert finding.value == pytest.approx(0.45)
    assert finding.details["versus_k_shot"]["value"] == pytest.approx((13 / 20 + 7 / 10) / 2)
    assert finding.ci_low > 0.05
    assert finding.verdict == "holds"
    # Re-weighting that lowers accuracy (the demo model: 0.902 vs 0.934) cannot "hold".
    worse = reweighting_finding(_reweighting([rw, k, one], [0] * 20 + [1] * 10))
    assert worse.value == pytest.approx(-0.45)
    assert worse.verdict != "holds"
    assert "over 1-shot" in worse.reason


def _compression(loyal: dict[str, list[int]], right: list[int]) -> CompressionResult:
    methods = tuple(loyal)
    n = len(right)
    baseline = torch.zeros(n, dtype=torch.long)  # ICL predicts class 0 everywhere
    predictions = torch.tensor([[0 if v else 1 for v in loyal[m]] for m in methods])
    gold = torch.tensor([0 if r else 2 for r in right])
    return CompressionResult(
        methods=methods, baseline_predictions=baseline, predictions=predictions,
        word_jaccard=torch.ones(len(methods), n), gold=gold,
        run=torch.zeros(n, dtype=torch.long), run_names=("seed-42",),
        trials=torch.zeros(1, 0, 3), chosen_trial=torch.tensor([-1]),
    )  # fmt: skip


def test_a2_compares_hidden_anchor_with_random_and_text_anchor_and_reports_chance() -> None:
    loyal = {"text_anchor": [1] * 12 + [0] * 28, "hidden_random": [1] * 10 + [0] * 30,
             "hidden_anchor": [1] * 36 + [0] * 4}  # fmt: skip
    finding = compression_finding(_compression(loyal, [1] * 30 + [0] * 10), n_classes=3)
    assert finding.value == pytest.approx(0.9 - 0.25)
    assert finding.details["comparisons"]["text_anchor"]["value"] == pytest.approx(0.9 - 0.3)
    assert finding.verdict == "holds"
    # Hidden_anchor no better than random, accuracy at chance (the demo model: 0.344, 1/3).
    loyal["hidden_anchor"] = [1] * 10 + [0] * 30
    at_chance = [1] * 13 + [0] * 27  # accuracy: ICL right where hidden_anchor is loyal
    finding = compression_finding(_compression(loyal, at_chance), n_classes=3)
    assert finding.verdict != "holds"
    assert finding.details["accuracy_at_chance"] is True
    assert "at chance 0.333" in finding.reason


def _pairs_finding(predicted: list[float], real: list[float]) -> Finding:
    """A3 through diagnosis_finding's statistic on given off-diagonal values (one seed)."""

    class Fake:
        n_runs = 1
        settings: ClassVar[dict[str, int]] = {"layer": 0, "n_components": 2}
        gold = torch.zeros(len(real) * 10, dtype=torch.long)

        @staticmethod
        def predicted_confusion(run: int = 0) -> torch.Tensor:
            return _square(predicted)

        @staticmethod
        def real_confusion(run: int = 0) -> torch.Tensor:
            return _square(real)

    return diagnosis_finding(Fake(), n_samples=500)


def _square(values: list[float]) -> torch.Tensor:
    k = round((1 + math.sqrt(1 + 8 * len(values))) / 2)
    matrix = torch.zeros(k, k, dtype=torch.float64)
    index = torch.triu_indices(k, k, 1)
    matrix[index[0], index[1]] = torch.tensor(values, dtype=torch.float64)
    return matrix + matrix.T


def test_a3_with_three_class_pairs_is_inconclusive_too_few_pairs() -> None:
    finding = _pairs_finding([0.2, 0.5, 0.9], [0.3, 0.6, 0.95])  # a perfect rank on 3 pairs
    assert finding.value == pytest.approx(1.0)
    assert finding.verdict == "inconclusive"
    assert finding.reason.startswith("too few class pairs (3 < 6)")
    assert finding.details["n_pairs"] == 3
    # Every one of the 3! orders is equally likely under the null: P(rho >= 1) = 1/6.
    assert finding.details["p_value"] == pytest.approx(1 / 6)


def test_a3_on_ten_pairs_holds_beyond_its_permutation_null() -> None:
    real = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    predicted = [0.15, 0.1, 0.35, 0.3, 0.5, 0.65, 0.6, 0.8, 0.95, 0.9]
    finding = _pairs_finding(predicted, real)
    d = torch.tensor([1.0, -1, 1, -1, 0, 1, -1, 0, 1, -1])  # rank differences
    assert finding.value == pytest.approx(1 - 6 * float(d.square().sum()) / (10 * 99))
    assert finding.verdict == "holds"
    assert finding.value > finding.control_value
    unrelated = _pairs_finding(predicted, [real[i] for i in (4, 9, 0, 7, 2, 5, 8, 1, 6, 3)])
    assert unrelated.verdict != "holds"


def test_spearman_gives_tied_values_their_average_rank() -> None:
    # Real confusion is often exactly 1.0 for several class pairs. By hand: x ranks
    # 3, 1, 5, 2, 6, 4; y = [1, 1, 0.5, 1, 0.2, 0.7] ranks 5, 5, 2, 5, 1, 3 (the three 1.0s
    # share ranks 4-6, average 5). Centred: dx = -.5 -2.5 1.5 -1.5 2.5 .5, dy = 1.5 1.5
    # -1.5 1.5 -2.5 -.5; rho = sum(dx dy) / sqrt(sum dx^2 sum dy^2) = -15.5 / sqrt(17.5 * 15.5).
    # (Ordinal ranks 4, 5, 6 for the ties would give -0.943.)
    x = torch.tensor([0.3, 0.1, 0.5, 0.2, 0.9, 0.4])
    y = torch.tensor([1.0, 1.0, 0.5, 1.0, 0.2, 0.7])
    assert spearman(x, y) == pytest.approx(-15.5 / math.sqrt(17.5 * 15.5), abs=1e-12)
    scipy_stats = pytest.importorskip("scipy.stats")
    for a, b in itertools.product([[1, 1, 2, 3, 3, 3], [2, 1, 2, 1, 2, 1]], repeat=2):
        expected = scipy_stats.spearmanr(a, b).statistic
        got = spearman(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
        assert got == pytest.approx(expected, abs=1e-12) or (
            math.isnan(got) and math.isnan(expected)
        )


# --- one default for combining seeds ----------------------------------------------------------


def test_information_flow_combines_seeds_per_seed_by_default_as_the_run_does() -> None:
    # Seed a: one prompt, flows (1, 1, 2) in one layer -> shares (0.25, 0.25, 0.5).
    # Seed b: two prompts, means (6, 2, 2) -> shares (0.6, 0.2, 0.2).
    # Per seed (the paper's, the run's): the shares' mean (0.425, 0.225, 0.35).
    # Pooled would normalise the 3-prompt mean (13/3, 5/3, 2) / 8 = (0.5417, 0.2083, 0.25).
    a = InformationFlow(torch.tensor([[[1.0], [1.0], [2.0]]]))
    b = InformationFlow(torch.tensor([[[4.0], [1.0], [2.0]], [[8.0], [3.0], [2.0]]]))
    combined = InformationFlow.concat([a, b])
    assert combined.aggregation == "per_seed"
    assert combined.normalised()[:, 0].tolist() == pytest.approx([0.425, 0.225, 0.35])
    assert InformationFlow(a.values).aggregation == "per_seed"


def test_c1_with_its_control_at_the_float_floor_says_so_instead_of_quoting_1e24() -> None:
    # planted-anchor: the rows next to the label words draw ~1e-26 per edge, the label rows
    # ~0.1, so the ratio (1e24 and up) measures float rounding, not a size of effect.
    from anchor_flow.analysis.edges import FINE_GROUPS
    from anchor_flow.analysis.findings import shallow_aggregation
    from anchor_flow.analysis.saliency.result import SaliencyResult
    from anchor_flow.icl.roles import Role

    b, t, f, lab, q = Role.BOS, Role.TEXT, Role.FORMAT, Role.LABEL, Role.TARGET
    roles = torch.tensor([[b, t, t, f, lab, f, t, t, f, lab, f, t, t, q]] * 12)
    per_edge = torch.full((14,), 1e-26, dtype=torch.float64)
    per_edge[roles[0] == lab] = 0.1
    text_before = (roles == t).double().cumsum(-1) - (roles == t).double()
    sums = (per_edge[None, None, :] * text_before[:, None, :]).expand(-1, 2, -1).clone()
    result = SaliencyResult(
        group_sums=torch.ones(12, 2, len(FINE_GROUPS)),
        group_counts=torch.ones(12, len(FINE_GROUPS)), label_probs=torch.full((12, 2), 0.5),
        gold=torch.zeros(12).long(), roles=roles, str_tokens=(("x",) * 14,) * 12,
        text_row_sums=sums.float(),
    )  # fmt: skip
    finding = shallow_aggregation([result], (0,))
    assert finding.verdict == "holds"
    assert finding.value > 1e20
    assert finding.to_dict()["control_at_floor"] is True
    assert finding.reason.startswith("the control is ≈ 0 (1e-26 per edge")
    assert "e+2" not in finding.reason
    assert findings_frame([finding.to_dict()]).loc[0, "value [95% CI]"] == "≫ 1 (control ≈ 0)"
