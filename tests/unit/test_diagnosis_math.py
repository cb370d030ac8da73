"""Anchor-distance diagnosis without a model: PCA, anchor features, confusions and the rank
correlation against brute-force computations on small random data (paper §3.3, App. K)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from anchor_flow.applications.diagnosis.confusion import (
    DiagnosisError,
    anchor_features,
    default_layer,
    off_diagonal,
    predicted_confusion,
    query_pca,
    real_confusion,
    repeat_kv_heads,
)
from anchor_flow.results.stats import spearman


def test_pca_matches_the_covariance_eigendecomposition():
    queries = torch.randn(40, 6, generator=torch.Generator().manual_seed(0)).double()
    queries[:, 0] *= 5.0
    pca = query_pca(queries, n_components=3)
    centred = queries - queries.mean(0)
    covariance = centred.T @ centred / (len(queries) - 1)
    values, vectors = torch.linalg.eigh(covariance)
    top = vectors[:, values.argsort(descending=True)[:3]].T
    assert torch.allclose(pca.std, values.sort(descending=True).values[:3].sqrt())
    assert torch.allclose(
        (pca.components * top).sum(1).abs(), torch.ones(3, dtype=torch.float64)
    )  # up to sign
    projected = centred @ pca.components.T
    assert torch.allclose(projected.std(0), pca.std)


def test_anchor_features_and_predicted_confusion_against_loops():
    generator = torch.Generator().manual_seed(1)
    queries, keys = torch.randn(30, 5, generator=generator), torch.randn(4, 5, generator=generator)
    pca = query_pca(queries, 2)
    features = anchor_features(keys, pca)
    for c, m in itertools.product(range(4), range(2)):
        assert math.isclose(
            float(features[c, m]),
            float(pca.std[m] * (pca.components[m] @ keys[c].double())),
            rel_tol=1e-9,
        )
    confusion = predicted_confusion(features)
    distances = {
        (a, b): float(np.linalg.norm(features[a] - features[b]))
        for a, b in itertools.permutations(range(4), 2)
    }
    largest = max(distances.values())
    for (a, b), d in distances.items():
        assert math.isclose(float(confusion[a, b]), d / largest, rel_tol=1e-9)
    assert torch.equal(confusion.diagonal(), torch.ones(4, dtype=torch.float64))


def brute_auc(scores, positive):
    pos = [s for s, p in zip(scores, positive, strict=True) if p]
    neg = [s for s, p in zip(scores, positive, strict=True) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def test_real_confusion_is_the_pairwise_auc_of_renormalised_probabilities():
    generator = torch.Generator().manual_seed(2)
    probs = torch.rand(50, 3, generator=generator).softmax(-1)
    gold = torch.randint(0, 3, (50,), generator=generator)
    confusion = real_confusion(probs, gold)
    for a, b in itertools.combinations(range(3), 2):
        rows = [i for i in range(50) if int(gold[i]) in (a, b)]
        scores = [float(probs[i, a] / (probs[i, a] + probs[i, b])) for i in rows]
        expected = brute_auc(scores, [int(gold[i]) == a for i in rows])
        assert math.isclose(float(confusion[a, b]), expected, rel_tol=1e-12)
        assert confusion[a, b] == confusion[b, a]
    absent = real_confusion(probs[gold != 2], gold[gold != 2])
    assert math.isnan(float(absent[0, 2]))
    assert absent[2, 2] == 1.0


def test_spearman_against_the_rank_formula_and_constant_input():
    generator = np.random.default_rng(3)
    x, y = generator.normal(size=12), generator.normal(size=12)
    rx, ry = x.argsort().argsort(), y.argsort().argsort()
    expected = 1 - 6 * ((rx - ry) ** 2).sum() / (12 * (12**2 - 1))
    assert math.isclose(spearman(torch.tensor(x), torch.tensor(y)), expected, rel_tol=1e-9)
    assert math.isnan(spearman(torch.ones(4), torch.arange(4.0)))
    from anchor_flow.errors import AnchorFlowError

    with pytest.raises(AnchorFlowError, match="same length >= 2"):
        spearman(torch.ones(3), torch.ones(4))
    with pytest.raises(AnchorFlowError, match="NaN or infinite"):
        spearman(torch.tensor([1.0, math.nan]), torch.ones(2))


def test_small_helpers_and_error_paths():
    assert default_layer(48) == 32
    assert default_layer(1) == 0
    assert off_diagonal(torch.arange(16.0).reshape(4, 4)).tolist() == [1, 2, 3, 6, 7, 11]
    keys = torch.arange(2 * 3 * 2 * 4.0).reshape(2, 3, 2, 4)  # 2 key heads, 4 query heads
    repeated = repeat_kv_heads(keys, n_heads=4, d_head=4)
    assert repeated.shape == (2, 3, 16)
    assert torch.equal(repeated[..., 4:8], keys[:, :, 0])
    assert torch.equal(repeated[..., 8:12], keys[:, :, 1])
    assert torch.equal(repeat_kv_heads(keys.flatten(2), n_heads=4, d_head=4), repeated)
    with pytest.raises(DiagnosisError, match="3 key heads do not divide 4 query heads"):
        repeat_kv_heads(torch.zeros(1, 2, 3, 4), n_heads=4, d_head=4)
    with pytest.raises(DiagnosisError, match="n_components=7 but 5 queries of dimension 6"):
        query_pca(torch.randn(5, 6), 7)
    with pytest.raises(DiagnosisError, match=r"queries \[T, d\] with T >= 2"):
        query_pca(torch.randn(6), 1)
    with pytest.raises(DiagnosisError, match="every anchor feature is identical"):
        predicted_confusion(torch.zeros(3, 2))
    with pytest.raises(DiagnosisError, match="label_probs"):
        real_confusion(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
