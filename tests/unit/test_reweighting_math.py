"""Anchor re-weighting without a model: the hook's arithmetic, the protocol's prompt sets,
the result object (paper §3.1, Eq. 12; Table 1)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from anchor_flow.applications.reweighting.beta import AnchorReweighting, ReweightingError
from anchor_flow.applications.reweighting.protocol import ReweightingResult, reweighting_prompts
from anchor_flow.errors import ResultsError
from anchor_flow.icl.prompts import Example, tokenize_prompts
from anchor_flow.icl.roles import Role
from anchor_flow.icl.tasks import get_task
from anchor_flow.testbeds.toy import toy_prompts


@pytest.fixture
def batch(toy_tokenizer):
    return tokenize_prompts(toy_prompts(3, shots_per_class=2, seed=1), toy_tokenizer)


def random_pattern(batch, heads=3, seed=0):
    n = batch.tokens.shape[1]
    scores = torch.randn(len(batch), heads, n, n, generator=torch.Generator().manual_seed(seed))
    return scores.masked_fill(torch.ones(n, n).triu(1).bool(), -math.inf).softmax(-1)


def apply(module, batch, pattern, layer=0):
    name, fn = module.hooks(batch)[layer]
    assert name == f"blocks.{layer}.attn.hook_pattern"
    return fn(pattern, SimpleNamespace(name=name))


def test_zero_beta_is_bitwise_identity(batch):
    pattern = random_pattern(batch)
    out = apply(AnchorReweighting(2, 3, 2), batch, pattern)
    assert torch.equal(out, pattern)


def test_nonzero_beta_scales_exactly_the_target_row_at_that_class_anchors(batch):
    pattern = random_pattern(batch)
    module = AnchorReweighting(2, 3, 2)
    with torch.no_grad():
        module.beta[1, 2, 1] = 0.7
    out = apply(module, batch, pattern, layer=1)
    expected = pattern.clone()
    for b in range(len(batch)):
        q = int(batch.target_position[b])
        anchors = (batch.roles[b] == Role.LABEL) & (batch.label_class[b] == 1)
        assert int(anchors.sum()) == 2  # two demonstrations of class 1 share one beta
        expected[b, 2, q, anchors] *= math.exp(0.7)
    assert torch.allclose(out, expected, atol=0, rtol=1e-6)
    changed = (out != pattern).nonzero().tolist()
    assert {(h, qp) for _, h, qp, _ in changed} <= {(2, int(q)) for q in batch.target_position}
    assert apply(module, batch, pattern, layer=0).equal(pattern)  # other layers untouched


def test_renormalise_keeps_the_target_row_a_distribution(batch):
    module = AnchorReweighting(1, 3, 2, renormalise=True)
    with torch.no_grad():
        module.beta.fill_(2.0)
    out = apply(module, batch, random_pattern(batch))
    rows = torch.arange(len(batch))
    assert torch.allclose(out[rows, :, batch.target_position].sum(-1), torch.ones(3, 3))


def test_gradient_reaches_beta_only_through_the_edited_row(batch):
    module = AnchorReweighting(1, 3, 2)
    out = apply(module, batch, random_pattern(batch))
    rows = torch.arange(len(batch))
    out[rows, :, batch.target_position].sum().backward()
    assert module.beta.grad is not None
    assert bool((module.beta.grad > 0).all())


def test_save_load_roundtrip_and_errors(tmp_path, batch):
    module = AnchorReweighting.from_beta(torch.randn(2, 3, 2), renormalise=True)
    module.save(tmp_path / "betas.npz")
    loaded = AnchorReweighting.load(tmp_path / "betas.npz")
    assert torch.equal(loaded.beta, module.beta)
    assert loaded.renormalise
    with pytest.raises(ResultsError, match="cannot read betas from"):
        AnchorReweighting.load(tmp_path / "missing.npz")
    with pytest.raises(ReweightingError, match="n_heads=0; expected a positive integer"):
        AnchorReweighting(2, 0, 2)
    with pytest.raises(ReweightingError, match=r"expected \[layer, head, class\]"):
        AnchorReweighting.from_beta(torch.zeros(2, 3))
    with pytest.raises(ReweightingError, match="the batch has 2 classes but beta has 3"):
        AnchorReweighting(2, 3, 3).hooks(batch)
    with pytest.raises(ReweightingError, match="has 4 heads"):
        apply(AnchorReweighting(1, 3, 2), batch, random_pattern(batch, heads=4))


def test_protocol_prompt_sets_follow_the_official_sampling():
    task = get_task("sst2")
    pool = [Example(f"text {i}", i % 2) for i in range(40)]
    test = [Example(f"query {i}", i % 2) for i in range(6)]
    sets = reweighting_prompts(task, pool, test, seed=42, n_examples=6)
    demos = sets.test[0].demonstrations
    assert sorted(d.label for d in demos) == [0, 1]
    assert len(sets.train) == 8
    assert all(p.demonstrations == demos for p in sets.train)
    extra = {p.query for p in sets.train}
    assert not extra & set(demos)
    k_demos = sets.k_shot[0].demonstrations
    assert set(k_demos) == set(demos) | extra
    assert sets.k_shot_shots == 5
    assert [p.query for p in sets.k_shot] == [p.query for p in sets.test]


def test_protocol_drops_shots_when_the_context_is_too_short(toy_tokenizer):
    task = get_task("sst2")
    pool = [Example(f"some longer text number {i}", i % 2) for i in range(40)]
    test = [Example("query", 0)]
    full = reweighting_prompts(task, pool, test, seed=1, n_examples=1)
    length = tokenize_prompts(full.k_shot, toy_tokenizer).lengths.max()
    fewer = reweighting_prompts(
        task, pool, test, seed=1, n_examples=1, tokenizer=toy_tokenizer, max_length=int(length) - 1
    )
    assert fewer.k_shot_shots == 4
    assert len(fewer.k_shot[0].demonstrations) == 8
    with pytest.raises(ReweightingError, match="train_per_class=0; expected a positive"):
        reweighting_prompts(task, pool, test, seed=1, train_per_class=0)


def make_result(name="seed-0", predictions=((0, 1), (1, 1), (1, 1))):
    return ReweightingResult(
        predictions=torch.tensor(predictions),
        gold=torch.tensor([[1, 1]] * 3),
        run=torch.tensor([0, 0]),
        run_names=(name,),
        betas=torch.zeros(1, 2, 3, 2),
        losses=torch.tensor([[0.7, 0.5]]),
    )


def test_result_frames_concat_and_save(tmp_path):
    one = make_result()
    assert one.summary_frame()["mean"].tolist() == [0.5, 1.0, 1.0]
    pooled = ReweightingResult.concat([one, make_result("seed-1", ((0, 0), (0, 1), (1, 1)))])
    frame = pooled.summary_frame()
    assert frame["mean"].tolist() == [0.25, 0.75, 1.0]
    assert set(frame["ci_over"]) == {"runs"}
    assert len(pooled.to_frame()) == 12
    pooled.save(tmp_path / "rw")
    loaded = ReweightingResult.load(tmp_path / "rw")
    assert torch.equal(loaded.predictions, pooled.predictions)
    assert loaded.run_names == pooled.run_names
    assert loaded.reweighting(1).beta.shape == (2, 3, 2)
    with pytest.raises(ReweightingError, match="run names"):
        ReweightingResult.concat([one, one])
    with pytest.raises(ReweightingError, match="expected predictions and gold"):
        ReweightingResult(
            predictions=torch.zeros(2, 2, dtype=torch.long),
            gold=torch.zeros(2, 2, dtype=torch.long),
            run=torch.zeros(2, dtype=torch.long),
            run_names=("a",),
            betas=torch.zeros(1, 1, 1, 2),
            losses=torch.zeros(1, 2),
        )
    with pytest.raises(ResultsError, match="cannot read a re-weighting result"):
        ReweightingResult.load(tmp_path)
