"""Table 1 end to end (paper §3.1): the three conditions are what they claim to be.

A planted-anchor model whose read-out is biased towards class 0 by a known amount (an
unembedding bias on the label word of class 0) is the ground truth for re-weighting: the bias
outweighs the matched anchor's logit, so vanilla ICL always answers class 0, and scaling the
target's attention to the other classes' anchors (beta > 0) is the only way out.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from anchor_flow.applications.reweighting.protocol import (
    ReweightingPrompts,
    reweighting_prompts,
    run_reweighting,
)
from anchor_flow.icl.evaluation import run_icl
from anchor_flow.icl.tasks import get_task
from anchor_flow.models.loading import from_hf_model, load_model
from anchor_flow.testbeds.planted import Layout, PlantedSettings, build_planted_model
from anchor_flow.testbeds.synthetic import DEFAULT_SPEC
from conftest import assert_no_hooks

WORDS = (" L0", " L1", " L2")  # one label word per class in every prompt: a class-level bias
BIAS = 6.0  # > PlantedSettings.logit_scale (5): the bias beats the matched anchor


def counted_shots(prompts) -> set[int]:
    """Demonstrations of each class in each prompt, counted here (not by the library)."""
    return {
        sum(1 for d in p.demonstrations if d.label == c)
        for p in prompts
        for c in range(len(p.label_words))
    }


@pytest.fixture(scope="module")
def biased():
    torch.set_num_threads(1)
    hf_model, tokenizer = build_planted_model("anchor")
    const = Layout.build(DEFAULT_SPEC, PlantedSettings()).index["const"][0]
    with torch.no_grad():
        hf_model.lm_head.weight[tokenizer.convert_tokens_to_ids(WORDS[0]), const] += BIAS
    model = from_hf_model(hf_model, tokenizer)
    sets = reweighting_prompts(get_task("synthetic-k3"), (), (), seed=42, n_examples=30)

    def fixed(prompts):
        return [dataclasses.replace(p, label_words=WORDS) for p in prompts]

    # A wrong configured shot count (0): the result must record the count that ran.
    sets = ReweightingPrompts(fixed(sets.train), fixed(sets.test), fixed(sets.k_shot), 0, sets.seed)
    result = run_reweighting(model, sets, epochs=10, lr=0.05, batch_size=30, progress=False)
    assert_no_hooks(model)
    return model, sets, result


def test_fitting_beta_removes_a_planted_read_out_bias(biased):
    _, _, result = biased
    vanilla, _, reweighted = result.predictions
    gold = result.gold[0]
    assert set(gold.tolist()) == {0, 1, 2}
    assert vanilla.tolist() == [0] * len(vanilla), "the bias must decide every vanilla answer"
    accuracy = result.correct().nanmean(-1)
    assert float(accuracy[2]) >= float(accuracy[0]) + 0.5
    assert set(reweighted.tolist()) == {0, 1, 2}
    # The matcher (layer 1, head 0) is where the fix must act: classes 1 and 2 up against 0.
    beta = result.betas[0, 1, 0]
    assert float(beta[1]) > float(beta[0]) + 0.5
    assert float(beta[2]) > float(beta[0]) + 0.5


def test_each_condition_is_the_run_it_names(biased):
    model, sets, result = biased
    fitted = result.reweighting(0)
    with_betas = run_icl(model, sets.test, batch_hooks=fitted.batch_hooks, progress=False)
    assert torch.equal(result.predictions[2], with_betas.predictions)
    assert not torch.equal(result.predictions[2], result.predictions[0])
    assert torch.equal(result.predictions[0], run_icl(model, sets.test, progress=False).predictions)
    # What ran, counted in the prompts: 1 demonstration per class, and 1 + 4 for k-shot.
    assert counted_shots(sets.test) == {1}
    assert counted_shots(sets.k_shot) == {5}
    assert result.settings["test_shots"] == 1
    assert result.settings["k_shot_shots"] == 5
    assert_no_hooks(model)


def test_the_k_shot_condition_runs_the_k_shot_prompts():
    # On the trained demo model the k-shot prompts (other queries, 5 shots) and the 1-shot
    # prompts give different predictions, so running the wrong set would show.
    torch.set_num_threads(1)
    model = load_model("demo")
    sets = reweighting_prompts(get_task("demo-k3"), (), (), seed=42, n_examples=12)
    result = run_reweighting(model, sets, epochs=1, batch_size=12, progress=False)
    k_shot = run_icl(model, sets.k_shot, progress=False)
    one_shot = run_icl(model, sets.test, progress=False)
    assert not torch.equal(k_shot.predictions, one_shot.predictions)
    assert torch.equal(result.predictions[1], k_shot.predictions)
    assert torch.equal(result.gold[1], k_shot.gold)
    assert counted_shots(sets.k_shot) == {5}
    assert result.settings["k_shot_shots"] == 5
