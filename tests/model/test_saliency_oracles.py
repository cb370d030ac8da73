"""Saliency beyond the default options, against independent computations (issue 19).

Hugging Face eager attention on the same weights (``output_attentions`` and ``retain_grad``)
is the oracle for the per-head reduction of footnote 2, ``loss="predicted"`` on prompts the
model gets wrong, and a custom metric. Flows are recomputed from the roles by a plain loop
over edges (no edge groups), and one planted test runs a padded batch of mixed lengths.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from anchor_flow.analysis.saliency.measure import run_saliency
from anchor_flow.icl.prompts import tokenize_prompts
from anchor_flow.icl.roles import Role
from anchor_flow.models.loading import load_model
from anchor_flow.models.tl_adapter import adapt
from anchor_flow.testbeds.synthetic import synthetic_prompts
from anchor_flow.testbeds.toy import toy_prompts
from conftest import assert_no_hooks, make_tiny_hf_gpt2

Objective = Callable[[torch.Tensor, object], torch.Tensor]


@pytest.fixture(scope="module")
def prompts():
    # Mixed demonstration counts: mixed lengths, so the batch is padded.
    short, long = toy_prompts(4, seed=3), toy_prompts(4, shots_per_class=2, seed=4)
    return [p for pair in zip(short, long, strict=True) for p in pair]


def label_logits(final, batch):
    return final.gather(1, batch.label_token_ids.to(final.device))


def gold_loss(final, batch):
    return F.cross_entropy(label_logits(final, batch), batch.gold, reduction="sum")


def predicted_loss(final, batch):
    logits = label_logits(final, batch)
    return F.cross_entropy(logits, logits.argmax(-1), reduction="sum")


def custom_metric(final, batch):
    """Per row: a non-label token's logit against the first label word's."""
    return 2.0 * final[:, 7] - label_logits(final, batch)[:, 0]


def hf_eager_maps(batch, objective: Objective, head_reduction: str) -> torch.Tensor:
    """[prompt, layer, pos, pos] saliency from HF eager attention with retain_grad."""
    hf_model = make_tiny_hf_gpt2()  # the same seeded weights as tl_model's
    out = hf_model(batch.tokens, output_attentions=True)
    for attention in out.attentions:
        attention.retain_grad()
    objective(out.logits[torch.arange(len(batch)), batch.target_position], batch).sum().backward()
    per_head = [a * a.grad for a in out.attentions]
    if head_reduction == "sum_then_abs":
        maps = [p.sum(1).abs() for p in per_head]
    else:
        maps = [p.abs().sum(1) for p in per_head]
    return torch.stack(maps, 1).detach().double()


def assert_close(actual, expected, rtol=1e-4):
    actual, expected = actual.double(), expected.double()
    assert float(expected.abs().max()) > 0, "the oracle is all zeros: nothing is compared"
    floor = rtol * float(expected.abs().max())
    assert torch.allclose(actual, expected, rtol=rtol, atol=floor), float(
        (actual - expected).abs().max()
    )


def test_per_head_reduction_equals_the_oracle(tl_model, prompts):
    batch = tokenize_prompts(prompts, adapt(tl_model).tokenizer)
    expected = hf_eager_maps(batch, gold_loss, "abs_then_sum")
    # The data tells the two reductions apart.
    assert not torch.allclose(expected, hf_eager_maps(batch, gold_loss, "sum_then_abs"))
    result = run_saliency(
        tl_model, batch, head_reduction="abs_then_sum", keep_maps=True, progress=False
    )
    assert_close(result.maps, expected)
    assert_no_hooks(tl_model)


def test_predicted_loss_equals_the_oracle_where_prediction_and_gold_differ(tl_model, prompts):
    batch = tokenize_prompts(prompts, adapt(tl_model).tokenizer)
    result = run_saliency(tl_model, batch, loss="predicted", keep_maps=True, progress=False)
    wrong = result.predictions != batch.gold
    assert 0 < int(wrong.sum()) < len(batch), "need prompts the model gets right and wrong"
    expected = hf_eager_maps(batch, predicted_loss, "sum_then_abs")
    against_gold = hf_eager_maps(batch, gold_loss, "sum_then_abs")
    assert not torch.allclose(expected[wrong], against_gold[wrong])
    assert_close(result.maps, expected)


def test_custom_metric_equals_the_oracle(tl_model, prompts):
    batch = tokenize_prompts(prompts, adapt(tl_model).tokenizer)
    result = run_saliency(tl_model, batch, metric=custom_metric, keep_maps=True, progress=False)
    assert result.settings["loss"] == "metric"
    assert_close(result.maps, hf_eager_maps(batch, custom_metric, "sum_then_abs"))


def loop_flows(maps: torch.Tensor, roles: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[prompt, flow, layer] per-edge means of S_wp, S_pq, S_ww by visiting every edge j < i."""
    n_prompts, n_layers = maps.shape[:2]
    out = torch.zeros(n_prompts, 3, n_layers, dtype=torch.float64)
    for b in range(n_prompts):
        sums = torch.zeros(3, n_layers, dtype=torch.float64)
        counts = [0, 0, 0]
        for i in range(int(lengths[b])):
            for j in range(i):
                if int(roles[b, i]) == Role.LABEL:
                    flow = 0  # S_wp: into a label word
                elif int(roles[b, i]) == Role.TARGET and int(roles[b, j]) == Role.LABEL:
                    flow = 1  # S_pq: label word -> target
                else:
                    flow = 2  # S_ww: everything else
                sums[flow] += maps[b, :, i, j].double()
                counts[flow] += 1
        out[b] = sums / torch.tensor(counts, dtype=torch.float64)[:, None]
    return out


def test_flows_equal_a_loop_over_edges_and_saliency_is_non_negative(tl_model, prompts):
    batch = tokenize_prompts(prompts, adapt(tl_model).tokenizer)
    for options in ({}, {"head_reduction": "abs_then_sum"}, {"metric": custom_metric}):
        result = run_saliency(tl_model, batch, keep_maps=True, progress=False, **options)
        assert bool((result.maps >= 0).all())
        assert bool((result.group_sums >= 0).all())
        expected = loop_flows(result.maps, batch.roles, batch.lengths)
        assert_close(result.flows().values, expected, rtol=1e-6)


def test_planted_anchor_on_a_padded_batch_of_mixed_lengths():
    torch.set_num_threads(1)
    model = load_model("planted-anchor")
    one = synthetic_prompts(10, k=3, shots_per_class=1, seed=11)
    two = synthetic_prompts(10, k=3, shots_per_class=2, seed=12)
    prompts = [p for pair in zip(one, two, strict=True) for p in pair]
    batch = tokenize_prompts(prompts, adapt(model).tokenizer)
    assert len(set(batch.lengths.tolist())) == 2, "the batch must mix two lengths"
    padded = run_saliency(model, batch, batch_size=20, progress=False)
    alone = run_saliency(model, batch, batch_size=1, progress=False)
    assert_close(padded.group_sums, alone.group_sums)
    assert torch.equal(padded.group_counts, alone.group_counts)
    flows = padded.flows().values  # [prompt, (S_wp, S_pq, S_ww), layer]
    assert_close(flows, alone.flows().values)
    # The planted mechanism in every prompt, short or long: layer 0 gathers the
    # demonstration into its label word, layer 1 reads the label words at the target.
    # Layer 0's target and layer 1's label words attend to <bos> only (value 0): no saliency.
    assert bool((flows[:, 0, 0] > 2 * flows[:, 2, 0]).all())
    assert bool((flows[:, 1, 1] > 1e6 * flows[:, 2, 1]).all())
    assert bool((flows[:, 1, 0] == 0).all())
    assert bool((flows[:, 0, 1] == 0).all())
    assert_no_hooks(model)
