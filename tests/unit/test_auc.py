"""ROC-AUC (stats) against brute-force pairwise counts; the paper's classifier rule and R_l."""

from __future__ import annotations

import itertools

import pytest
import torch

from anchor_flow.analysis.deep import classifier_auc, cumulative_auc_ratio
from anchor_flow.errors import AnchorFlowError
from anchor_flow.results.stats import roc_auc, roc_auc_ovo


def brute_force_auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Share of (positive, negative) pairs ranked right, ties 1/2, by looping over pairs."""
    wins, pairs = 0.0, 0
    for i, j in itertools.product(range(len(scores)), repeat=2):
        if bool(positive[i]) and not bool(positive[j]):
            pairs += 1
            wins += 1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0
    return wins / pairs


def brute_force_ovo(scores: torch.Tensor, labels: torch.Tensor) -> float:
    present = sorted(set(labels.tolist()))
    pair_values = []
    for a, b in itertools.combinations(present, 2):
        keep = (labels == a) | (labels == b)
        is_a = labels[keep] == a
        pair_values.append(
            (brute_force_auc(scores[keep, a], is_a) + brute_force_auc(scores[keep, b], ~is_a)) / 2
        )
    return sum(pair_values) / len(pair_values)


@pytest.mark.parametrize("seed", range(5))
def test_binary_auc_equals_pairwise_count_with_ties(seed):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 6, (40,), generator=generator).double()  # many ties
    positive = torch.rand(40, generator=generator) < 0.4
    assert roc_auc(scores, positive) == pytest.approx(brute_force_auc(scores, positive), abs=1e-12)


@pytest.mark.parametrize("n_classes", [3, 4])
def test_one_vs_one_auc_equals_pairwise_count(n_classes):
    generator = torch.Generator().manual_seed(n_classes)
    scores = torch.rand(30, n_classes, generator=generator)
    scores[::3, 0] = scores[::3, 1]  # ties across classes
    labels = torch.randint(0, n_classes, (30,), generator=generator)
    expected = brute_force_ovo(scores, labels)
    assert roc_auc_ovo(scores, labels) == pytest.approx(expected, abs=1e-12)


def test_perfect_reversed_and_constant_scores():
    positive = torch.tensor([False, False, True, True])
    assert roc_auc(torch.tensor([0.0, 1.0, 2.0, 3.0]), positive) == 1.0
    assert roc_auc(torch.tensor([3.0, 2.0, 1.0, 0.0]), positive) == 0.0
    assert roc_auc(torch.ones(4), positive) == 0.5


def test_auc_errors_name_the_bad_input():
    with pytest.raises(AnchorFlowError, match="both classes; got 2 positives and 0 negatives"):
        roc_auc(torch.tensor([0.1, 0.2]), torch.tensor([True, True]))
    with pytest.raises(AnchorFlowError, match="NaN or infinite"):
        roc_auc(torch.tensor([0.1, float("nan")]), torch.tensor([True, False]))
    with pytest.raises(AnchorFlowError, match="shapes"):
        roc_auc(torch.zeros(3), torch.zeros(2).bool())
    with pytest.raises(AnchorFlowError, match="at least two classes"):
        roc_auc_ovo(torch.rand(3, 3), torch.tensor([1, 1, 1]))
    with pytest.raises(AnchorFlowError, match="out of range"):
        roc_auc_ovo(torch.rand(3, 2), torch.tensor([0, 1, 2]))


def test_classifier_auc_follows_the_official_rule():
    scores = torch.tensor([[0.6, 0.3, 0.1], [0.1, 0.7, 0.2], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6]])
    # Never-predicted classes are dropped: with predictions in {0, 1}, the binary AUC of the
    # raw score of class 1 (the second kept class) against "predicted 1".
    binary = torch.tensor([0, 1, 0, 1])
    assert classifier_auc(scores, binary) == roc_auc(scores[:, 1].double(), binary == 1)
    # Three classes predicted: renormalise over them, then macro one-vs-one.
    three = torch.tensor([0, 1, 0, 2])
    renormalised = scores / scores.sum(-1, keepdim=True)
    assert classifier_auc(scores, three) == pytest.approx(brute_force_ovo(renormalised, three))
    # Classes 0 and 2 only (class 1 dropped): still the second kept class, 2.
    assert classifier_auc(scores, torch.tensor([0, 2, 0, 2])) == roc_auc(
        scores[:, 2].double(), torch.tensor([False, True, False, True])
    )
    assert torch.isnan(torch.tensor(classifier_auc(scores, torch.zeros(4).long())))


def test_r_curve_is_cumulative_and_ends_at_one():
    generator = torch.Generator().manual_seed(0)
    auc = 0.5 + 0.4 * torch.rand(12, generator=generator)
    r = cumulative_auc_ratio(auc)
    assert float(r[-1]) == pytest.approx(1.0)
    assert torch.all(r.diff() >= 0)
    assert cumulative_auc_ratio(torch.tensor([0.5, 0.7, 0.9])).tolist() == pytest.approx(
        [0.0, 1 / 3, 1.0]
    )


def test_classifier_auc_renormalises_over_the_predicted_classes():
    # Row sums differ (class 3, never predicted, takes most of the mass in some rows), so
    # renormalising over the kept classes 0-2 changes the ranking: the two rules disagree.
    scores = torch.tensor(
        [[0.30, 0.20, 0.10, 0.40], [0.05, 0.10, 0.05, 0.80], [0.20, 0.50, 0.10, 0.20],
         [0.02, 0.04, 0.03, 0.91], [0.10, 0.10, 0.40, 0.40], [0.01, 0.02, 0.05, 0.92]],
        dtype=torch.float64,
    )  # fmt: skip
    predictions = torch.tensor([0, 0, 1, 1, 2, 2])
    kept = scores[:, :3]
    raw = brute_force_ovo(kept, predictions)
    renormalised = brute_force_ovo(kept / kept.sum(-1, keepdim=True), predictions)
    assert raw == pytest.approx(0.6875)
    assert renormalised == pytest.approx(11 / 12)
    assert classifier_auc(scores, predictions) == pytest.approx(renormalised, abs=1e-12)


def test_deep_result_scores_against_the_prediction_not_the_gold_label():
    from anchor_flow.analysis.deep import DeepResult

    # The attention tracks the prediction perfectly; gold is the opposite class on every
    # prompt, so scoring against gold would give AUC 0 instead of 1.
    predicted = torch.tensor([0, 1, 0, 1, 1, 0])
    probs = torch.nn.functional.one_hot(predicted, 2).double() * 0.6 + 0.2
    attention = torch.tensor([0.1, 0.7, 0.2, 0.9, 0.6, 0.3], dtype=torch.float64)
    scores = torch.stack([1 - attention, attention], -1)[:, None, :]
    result = DeepResult(scores, probs, 1 - predicted, torch.zeros(6).long(), ("seed-0",))
    assert result.predictions.tolist() == predicted.tolist()
    assert float(result.auc()[0]) == 1.0


@pytest.mark.parametrize("seed", range(40))
def test_the_per_layer_auc_curve_equals_classifier_auc_layer_by_layer(seed):
    from anchor_flow.analysis.deep import _auc_curve

    generator = torch.Generator().manual_seed(seed)
    n, layers, classes = 5 + seed, 1 + seed % 4, 2 + seed % 3
    scores = torch.randint(0, 4, (n, layers, classes), generator=generator).float() / 3  # ties
    if seed % 2:
        scores = torch.rand(n, layers, classes, generator=generator)
    if seed % 5 == 0:
        scores[:, :, 0] = 0.0  # a column of one value; rows summing to 0 in the 3-class case
    predictions = torch.randint(0, classes - seed % 2, (n,), generator=generator)
    expected = [classifier_auc(scores[:, layer], predictions) for layer in range(layers)]
    assert _auc_curve(scores, predictions).tolist() == pytest.approx(expected, abs=0, nan_ok=True)


def test_column_auc_refuses_what_roc_auc_refuses():
    from anchor_flow.results.stats import roc_auc_columns

    with pytest.raises(AnchorFlowError, match="both classes"):
        roc_auc_columns(torch.rand(3, 2), torch.tensor([True, True, True]))
    with pytest.raises(AnchorFlowError, match="NaN or infinite"):
        roc_auc_columns(torch.tensor([[float("nan")], [0.0]]), torch.tensor([True, False]))
