"""Deep-layer attention classifier (paper §2.3) on tiny and planted models, and its plots."""

from __future__ import annotations

import pytest
import torch

from anchor_flow.analysis.deep import DeepResult, run_deep
from anchor_flow.analysis.flows import InformationFlow
from anchor_flow.icl.prompts import tokenize_prompts
from anchor_flow.icl.roles import Role
from anchor_flow.models.loading import load_model
from anchor_flow.models.tl_adapter import adapt
from anchor_flow.report.figures.analysis import plot_deep, plot_flows_with_auc
from anchor_flow.results.stats import roc_auc_ovo
from anchor_flow.testbeds.synthetic import synthetic_prompts
from anchor_flow.testbeds.toy import toy_prompts
from conftest import assert_no_hooks


@pytest.fixture(scope="module")
def planted_anchor_deep() -> DeepResult:
    torch.set_num_threads(1)
    model = load_model("planted-anchor")
    result = run_deep(model, synthetic_prompts(100, k=3, seed=5), batch_size=50, progress=False)
    assert_no_hooks(model)
    return result


def test_target_to_label_auc_in_layer_1_of_planted_anchor(planted_anchor_deep):
    auc = planted_anchor_deep.auc()
    assert float(auc[1]) >= 0.9


def full_pattern_scores(model, batch):
    """Oracle: keep every full pattern, then sum heads and same-class label words by loops."""
    adapter = adapt(model)
    patterns = {}

    def keep(pattern, hook):
        patterns[adapter.layer_of_hook(hook.name)] = pattern.detach().clone()

    hooks = [(adapter.pattern_hook_name(layer), keep) for layer in range(adapter.n_layers)]
    with torch.no_grad(), adapter.hooks(fwd_hooks=hooks):
        adapter.forward_logits(batch.tokens)
    out = torch.zeros(len(batch), adapter.n_layers, batch.n_classes, dtype=torch.float64)
    for b in range(len(batch)):
        q = int(batch.target_position[b])
        for p in range(int(batch.lengths[b])):
            if int(batch.roles[b, p]) == Role.LABEL:
                for layer in range(adapter.n_layers):
                    out[b, layer, batch.label_class[b, p]] += (
                        patterns[layer][b, :, q, p].sum().double()
                    )
    return out


def test_scores_equal_full_patterns_and_do_not_depend_on_batching(tl_model):
    prompts = toy_prompts(4, seed=1) + toy_prompts(3, shots_per_class=2, seed=2)
    batch = tokenize_prompts(prompts, adapt(tl_model).tokenizer)
    batched = run_deep(tl_model, batch, batch_size=3, progress=False)
    single = run_deep(tl_model, batch, batch_size=1, progress=False)
    expected = full_pattern_scores(tl_model, batch)
    assert float(expected.abs().max()) > 0
    assert torch.allclose(batched.scores, expected, atol=1e-6)
    assert torch.allclose(single.scores, expected, atol=1e-6)
    assert batched.scores.shape == (7, 2, 2)
    assert_no_hooks(tl_model)


def test_deep_plots(planted_anchor_deep):
    figure = plot_deep(planted_anchor_deep).to_dict()
    assert [t["name"] for t in figure["data"]] == ["AUCROC_l 95% CI", "AUCROC_l", "R_l"]
    assert figure["data"][1]["y"][1] >= 0.9
    assert figure["data"][2]["yaxis"] == "y2"
    assert figure["data"][2]["y"][-1] == pytest.approx(1.0)
    assert figure["layout"]["yaxis"]["title"]["text"] == "AUCROC_l"
    assert figure["layout"]["yaxis2"]["title"]["text"] == "R_l"
    flow = InformationFlow(torch.rand(5, 3, planted_anchor_deep.n_layers).double())
    overlay = plot_flows_with_auc(flow, planted_anchor_deep).to_dict()
    assert [t["name"] for t in overlay["data"]] == ["S_wp", "S_pq", "AUCROC_l"]
    assert overlay["data"][0]["y"] == pytest.approx(flow.normalised()[0].tolist())
    from anchor_flow.errors import AnchorFlowError

    with pytest.raises(AnchorFlowError, match="flow has 4 layers but deep has 2"):
        plot_flows_with_auc(InformationFlow(torch.rand(5, 3, 4)), planted_anchor_deep)


def test_planted_anchor_layer_0_is_blind_and_layer_1_reads_the_prediction(planted_anchor_deep):
    result = planted_anchor_deep
    # Layer 0 spreads the target's attention evenly over the label words of every class
    # (k=3 shots each): no class information, so AUC exactly 0.5 and R_0 = 0.
    assert torch.allclose(result.scores[:, 0], result.scores[:1, 0].expand(result.n_prompts, -1))
    assert float(result.auc()[0]) == 0.5
    assert float(result.r_curve()[0]) == 0.0
    # The classifier's target is the model's prediction, not the gold label: the planted
    # model errs on some prompts, and layer 1's attention follows its (wrong) predictions.
    wrong = result.predictions != result.gold
    assert 5 <= int(wrong.sum()) <= 30
    against_gold = roc_auc_ovo(
        result.scores[:, 1] / result.scores[:, 1].sum(-1, keepdim=True), result.gold
    )
    assert against_gold < 0.98 < 0.99 <= float(result.auc()[1])
