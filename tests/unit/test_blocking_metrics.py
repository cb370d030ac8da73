"""Blocking masks (pure), the seeded random control, loyalty metrics and result objects."""

from __future__ import annotations

import inspect

import pandas as pd
import pytest
import torch

from anchor_flow.analysis.blocking import (
    BlockingError,
    isolation_mask,
    label_rows,
    layer_set,
    random_rows,
    role_pair_mask,
)
from anchor_flow.analysis.deep import DeepResult
from anchor_flow.analysis.isolation import IsolationCondition, IsolationResult, default_layer_counts
from anchor_flow.analysis.loyalty import label_loyalty, word_loyalty
from anchor_flow.errors import AnchorFlowError, ResultsError
from anchor_flow.icl.prompts import tokenize_prompts
from anchor_flow.icl.roles import Role
from anchor_flow.testbeds.toy import toy_prompts


def unchecked(function):
    """Without pytest's runtime type checker, so the library's own validation is tested."""
    return inspect.unwrap(function)


@pytest.fixture(scope="module")
def batch(toy_tokenizer):
    short, long = toy_prompts(4, seed=1), toy_prompts(4, shots_per_class=2, seed=2)
    return tokenize_prompts([short[0], long[0], short[1], long[1], short[2]], toy_tokenizer)


def test_label_loyalty_and_word_loyalty_on_hand_made_examples():
    assert label_loyalty(torch.tensor([0, 1, 2, 1]), torch.tensor([0, 2, 2, 0])).tolist() == [
        1.0, 0.0, 1.0, 0.0,
    ]  # fmt: skip
    base = torch.tensor([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5]])
    iso = torch.tensor([[5, 4, 3, 2, 1], [6, 7, 8, 9, 10], [1, 2, 3, 9, 10]])
    # identical sets in another order; disjoint; 3 shared of 7 distinct.
    assert word_loyalty(base, iso).tolist() == pytest.approx([1.0, 0.0, 3 / 7])
    assert word_loyalty(base[:1], iso[:1, :3]).tolist() == [0.6]  # {3,4,5} of {1..5}
    with pytest.raises(AnchorFlowError, match="top-k tokens of 3 and 1 prompts"):
        unchecked(word_loyalty)(base, iso[:1])


def test_isolation_mask_blocks_earlier_keys_of_label_rows_only(batch):
    mask = isolation_mask(batch, label_rows(batch))
    for row in range(len(batch)):
        labels = batch.label_positions(row)
        assert labels
        for p in labels:
            assert mask[row, p, :p].all()
            assert not mask[row, p, p:].any()
        others = [i for i in range(mask.shape[1]) if i not in labels]
        assert not mask[row, others].any()
    with pytest.raises(BlockingError, match=r"expected the batch's \[batch, pos\]"):
        isolation_mask(batch, label_rows(batch)[:, :3])


def test_role_pair_mask_is_the_causal_edges_between_the_roles(batch):
    mask = role_pair_mask(batch, Role.TARGET, Role.LABEL)
    for row in range(len(batch)):
        q = int(batch.target_position[row])
        expected = torch.zeros_like(mask[row])
        expected[q, batch.label_positions(row)] = True
        assert torch.equal(mask[row], expected)
    text_to_label = role_pair_mask(batch, [Role.LABEL], [Role.TEXT])
    rows, _, keys = torch.nonzero(text_to_label, as_tuple=True)
    assert bool((batch.roles[rows, keys] == Role.TEXT).all())


def test_random_rows_are_seeded_and_never_labels_target_or_the_token_before(batch):
    first = random_rows(batch, seed=3, layer=1)
    assert torch.equal(first, random_rows(batch, seed=3, layer=1))
    assert not torch.equal(first, random_rows(batch, seed=3, layer=2)), "fresh per layer"
    assert not torch.equal(first, random_rows(batch, seed=4, layer=1)), "depends on the seed"
    for row in range(len(batch)):
        q = int(batch.target_position[row])
        picked = torch.nonzero(first[row]).flatten().tolist()
        assert len(picked) == len(batch.label_positions(row))
        assert all(p <= q - 2 and p not in batch.label_positions(row) for p in picked)
    # Many seeds: the candidate set is hit broadly, labels and q-1, q never.
    seen = torch.zeros_like(first)
    for seed in range(200):
        seen |= random_rows(batch, seed=seed, layer=0)
    assert not (seen & (batch.roles == Role.LABEL)).any()
    for row in range(len(batch)):
        q = int(batch.target_position[row])
        assert not seen[row, q - 1 :].any()


def test_random_rows_depend_on_prompt_ids_not_on_batch_order(batch):
    reordered = batch.select([4, 2, 0])
    full = random_rows(batch, seed=0, layer=0)
    part = random_rows(reordered, seed=0, layer=0, prompt_ids=[4, 2, 0])
    for new, old in enumerate([4, 2, 0]):
        width = int(reordered.lengths[new])
        assert torch.equal(part[new, :width], full[old, :width])


def test_random_rows_and_layer_set_errors(batch):
    with pytest.raises(BlockingError, match="seed=-1"):
        random_rows(batch, seed=-1, layer=0)
    with pytest.raises(BlockingError, match="got 2 prompt_ids for a batch of 5"):
        random_rows(batch, seed=0, layer=0, prompt_ids=[0, 1])
    with pytest.raises(BlockingError, match="expected 'first' or 'last'"):
        unchecked(layer_set)(4, 1, "middle")
    with pytest.raises(BlockingError, match="count=5; expected 0 <= count <= n_layers=4"):
        layer_set(4, 5, "first")
    assert layer_set(4, 2, "last") == (2, 3)
    assert layer_set(4, 0, "first") == ()


def test_default_layer_counts_scale_with_depth():
    assert default_layer_counts(48) == (1, 3, 5, 7)
    assert default_layer_counts(28) == (1, 3, 5, 7)
    assert default_layer_counts(12) == (1, 3, 5)
    assert default_layer_counts(6) == (1, 3)
    assert default_layer_counts(4) == (1, 2)
    assert default_layer_counts(2) == (1,)
    assert default_layer_counts(1) == (1,)


def _isolation(names=("seed-1",), shift=0):
    conditions = (IsolationCondition("label", "first", 1), IsolationCondition("random", "first", 1))
    return IsolationResult(
        conditions=conditions,
        baseline_predictions=torch.tensor([0, 1, 1, 0]),
        predictions=torch.tensor([[0, 0, 1, 1], [0, 1, 1, 0]]),
        word_jaccard=torch.tensor([[1.0, 0.5, 0.25, 0.0], [1.0, 1.0, 1.0, 1.0]]) - shift,
        gold=torch.tensor([0, 1, 0, -1]),
        run=torch.zeros(4).long(),
        run_names=names,
        settings={"mode": "renormalise"},
    )


def test_isolation_result_means_frames_concat_and_round_trip(tmp_path):
    result = _isolation()
    frame = result.summary_frame()
    label = frame[(frame.control == "label") & (frame.metric == "label_loyalty")]
    assert float(label["mean"].iloc[0]) == pytest.approx(0.5)
    accuracy = frame[frame.control == "none"]
    assert float(accuracy["mean"].iloc[0]) == pytest.approx(2 / 3)  # gold -1 is skipped
    assert set(frame["ci_over"]) == {"prompts"}
    assert len(result.to_frame()) == 8
    pooled = IsolationResult.concat([result, _isolation(("seed-2",), shift=0.5)])
    assert pooled.n_runs == 2
    assert pooled.run.tolist() == [0] * 4 + [1] * 4
    word = pooled.summary_frame().query("control == 'label' and metric == 'word_loyalty'")
    assert float(word["mean"].iloc[0]) == pytest.approx((0.4375 + (0.4375 - 0.5)) / 2)
    assert set(pooled.summary_frame()["ci_over"]) == {"runs"}
    pooled.save(tmp_path / "iso")
    loaded = IsolationResult.load(tmp_path / "iso")
    assert loaded.conditions == pooled.conditions
    assert loaded.run_names == pooled.run_names
    pd.testing.assert_frame_equal(loaded.summary_frame(), pooled.summary_frame())
    with pytest.raises(AnchorFlowError, match="run names must be unique"):
        IsolationResult.concat([result, result])
    with pytest.raises(ResultsError, match=r"isolation\.npz and isolation_meta\.json"):
        IsolationResult.load(tmp_path / "missing")


def test_deep_result_curves_concat_and_round_trip(tmp_path):
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(10, 3, 2, generator=generator)
    probs = torch.rand(10, 2, generator=generator).softmax(-1)
    result = DeepResult(scores, probs, torch.zeros(10).long(), torch.zeros(10).long(), ("a",))
    other = DeepResult(
        scores.flip(0), probs, torch.zeros(10).long(), torch.zeros(10).long(), ("b",)
    )
    pooled = DeepResult.concat([result, other])
    assert pooled.auc_per_run().shape == (2, 3)
    assert torch.allclose(pooled.auc(), (result.auc() + other.auc()) / 2)
    assert float(pooled.r_curve()[-1]) == pytest.approx(1.0)
    assert list(pooled.summary_frame().columns[:5]) == [
        "layer",
        "auc_roc",
        "ci_low",
        "ci_high",
        "r",
    ]
    assert len(pooled.to_frame()) == 6
    pooled.save(tmp_path / "deep")
    loaded = DeepResult.load(tmp_path / "deep")
    assert torch.equal(loaded.scores, pooled.scores)
    assert loaded.run_names == ("a", "b")
    bad = DeepResult.__new__(DeepResult)
    with pytest.raises(AnchorFlowError, match=r"expected \[prompt, layer, class\]"):
        unchecked(DeepResult.__init__)(bad, scores[:, 0], probs, torch.zeros(10).long(),
                                       torch.zeros(10).long(), ("a",))  # fmt: skip
