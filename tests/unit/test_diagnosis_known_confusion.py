"""Anchor-distance diagnosis on hand-built recorded vectors with a known confused pair.

Anchor keys lie on a line along the queries' main direction; the label probabilities come
from a noisy read-out of that line, so the classes whose anchors are close (0 and 1 at the
diagnosis layer) are the ones the "model" confuses. Other recorded layers hold anchors in a
different order, so a result that reads the wrong layer names another pair.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from anchor_flow.applications.diagnosis.confusion import off_diagonal
from anchor_flow.applications.diagnosis.distances import DiagnosisResult

PAIRS = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]  # off_diagonal's order
# Anchor positions along the queries' first principal direction, per recorded layer.
ANCHORS = {0: [0.0, 5.0, 6.5, 1.2], 1: [0.0, 1.0, 3.0, 7.0], 2: [0.0, 6.0, 1.0, 3.5]}


def known_confusion(n_per_class: int = 40, noise: float = 1.2, seed: int = 0) -> DiagnosisResult:
    generator = torch.Generator().manual_seed(seed)
    n, layers = 4 * n_per_class, (0, 1, 2)
    gold = torch.arange(4).repeat_interleave(n_per_class)
    # Queries spread along dim 0 at the diagnosis layer and along dim 1 elsewhere; only the
    # diagnosis layer's anchors also differ along dim 1, where its own queries barely vary.
    queries = torch.randn(n, len(layers), 3, generator=generator, dtype=torch.float64)
    queries *= torch.tensor([[0.3, 3.0, 0.05], [3.0, 0.3, 0.05], [0.3, 3.0, 0.05]])
    keys = torch.zeros(1, len(layers), 4, 3, dtype=torch.float64)
    keys[0, 1, :, 1] = torch.tensor([0.0, 8.0, 0.0, 8.0])
    for index, layer in enumerate(layers):
        keys[0, index, :, 0] = torch.tensor(ANCHORS[layer])
        queries[:, index, 0] += torch.tensor(ANCHORS[layer])[gold] / 10  # a layer-specific mean
    # The read-out: a noisy position near the gold class's anchor at the diagnosis layer.
    where = torch.tensor(ANCHORS[1], dtype=torch.float64)
    x = where[gold] + noise * torch.randn(n, generator=generator, dtype=torch.float64)
    label_probs = torch.softmax(-((x[:, None] - where[None]) ** 2), -1)
    return DiagnosisResult(
        queries=queries, keys=keys, label_probs=label_probs, gold=gold,
        run=torch.zeros(n, dtype=torch.long), run_names=("seed-0",), layers=layers,
        class_names=("a", "b", "c", "d"), settings={"layer": 1, "n_components": 2},
    )  # fmt: skip


def most_confused(matrix: torch.Tensor) -> tuple[int, int]:
    return PAIRS[int(off_diagonal(matrix).argmin())]


@pytest.fixture(scope="module")
def result() -> DiagnosisResult:
    return known_confusion()


def test_the_data_has_a_confusion_to_find(result):
    real = result.real_confusion()
    assert most_confused(real) == (0, 1)
    assert float(real[0, 1]) < 0.8
    assert float(real[0, 3]) > 0.99


def test_the_closest_anchors_are_predicted_most_confused_and_the_correlation_is_positive(result):
    assert most_confused(result.predicted_confusion()) == (0, 1)
    # Small distance (predicted confusion near 0) goes with a low real AUC: positive rank
    # correlation on this data, far from 0.
    assert result.correlation() > 0.8
    assert result.summary()["spearman"]["per_run"][0] > 0.8


def test_the_configured_layer_is_the_one_used(result):
    # The other layers hold the anchors in another order and predict another pair; the
    # diagnosis layer's anchors seen through another layer's queries too.
    other_queries = replace(result, queries=result.queries[:, [0, 0, 2]])
    assert most_confused(other_queries.predicted_confusion()) == (0, 2)
    assert most_confused(result.predicted_confusion(layer=0)) == (0, 3)
    assert most_confused(result.predicted_confusion(layer=2)) == (0, 2)
    assert result.correlation(layer=0) < 0.5
    assert result.correlation(layer=2) < 0.5
    moved = replace(result, settings={**result.settings, "layer": 0})
    assert most_confused(moved.predicted_confusion()) == (0, 3)
    assert moved.correlation() < 0.5
    frame = result.to_frame()
    closest = frame.loc[frame["predicted"].idxmin()]
    assert (closest["class_a"], closest["class_b"]) == ("a", "b")
