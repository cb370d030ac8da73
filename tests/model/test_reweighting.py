"""Anchor re-weighting (paper §3.1) on tiny and planted models: identity, effect through a
later hook, frozen fitting, hygiene, composition with later runs."""

from __future__ import annotations

import math

import pytest
import torch

from anchor_flow.applications.reweighting.beta import (
    AnchorReweighting,
    ReweightingError,
    evaluate_reweighting,
    fit_reweighting,
)
from anchor_flow.applications.reweighting.protocol import (
    ReweightingResult,
    reweighting_prompts,
    run_reweighting,
)
from anchor_flow.icl.evaluation import prompt_batch, run_icl
from anchor_flow.icl.roles import Role
from anchor_flow.icl.tasks import get_task
from anchor_flow.models.loading import load_model
from anchor_flow.models.tl_adapter import adapt, tl_version
from anchor_flow.report.figures.applications import plot_betas, plot_reweighting_accuracy
from anchor_flow.testbeds.toy import toy_prompts
from conftest import assert_no_hooks


def test_zero_beta_is_bitwise_vanilla(tl_model):
    prompts = toy_prompts(5, seed=2)
    vanilla = run_icl(tl_model, prompts, batch_size=2, progress=False)
    zero = AnchorReweighting.for_model(tl_model, n_classes=2)
    same = evaluate_reweighting(tl_model, zero, prompts, batch_size=2, progress=False)
    assert torch.equal(vanilla.label_probs, same.label_probs)
    assert torch.equal(vanilla.top_probs, same.top_probs)
    assert_no_hooks(tl_model)


def test_beta_edits_exactly_the_target_attention_to_that_class(tl_model):
    adapter = adapt(tl_model)
    batch = prompt_batch(tl_model, toy_prompts(2, shots_per_class=2, seed=5))
    module = AnchorReweighting.for_model(tl_model, n_classes=2)
    with torch.no_grad():
        module.beta[1, :, 0] = torch.tensor([0.5, -0.5, 1.0, 0.2])
    seen: dict[str, torch.Tensor] = {}
    name = adapter.pattern_hook_name(1)

    def record(key):
        return lambda pattern, hook: seen.__setitem__(key, pattern.detach().clone())

    with torch.no_grad():
        with adapter.hooks(fwd_hooks=[(name, record("vanilla"))]):
            tl_model(batch.tokens)
        with adapter.hooks(fwd_hooks=[*module.hooks(batch), (name, record("edited"))]):
            tl_model(batch.tokens)
    vanilla, edited = seen["vanilla"], seen["edited"]
    expected = vanilla.clone()
    for b in range(len(batch)):
        q = int(batch.target_position[b])
        anchors = (batch.roles[b] == Role.LABEL) & (batch.label_class[b] == 0)
        expected[b, :, q, anchors] *= module.beta[1, :, 0].exp()[:, None]
    assert torch.allclose(edited, expected, rtol=1e-6, atol=0)
    assert not torch.equal(edited, vanilla)
    # Layer 1 reads layer 0's output: its pattern is untouched upstream (beta[0] = 0).
    assert_no_hooks(tl_model)


def test_fitting_is_frozen_leaves_no_hooks_and_is_seeded(tl_model):
    params = list(tl_model.parameters())
    flags = [p.requires_grad for p in params]
    prompts = toy_prompts(3, seed=1)
    fit = fit_reweighting(tl_model, prompts, epochs=2, lr=0.05, seed=3, progress=False)
    assert all(p.grad is None for p in params)
    assert [p.requires_grad for p in params] == flags
    assert fit.losses.shape == (3,)
    assert fit.reweighting.beta.abs().sum() > 0
    again = fit_reweighting(tl_model, prompts, epochs=2, lr=0.05, seed=3, progress=False)
    assert torch.equal(fit.reweighting.beta, again.reweighting.beta)
    batched = fit_reweighting(tl_model, prompts, epochs=1, batch_size=3, progress=False)
    assert batched.losses.shape == (2,)
    assert_no_hooks(tl_model)


def test_fitting_errors_leave_the_model_clean(tl_model):
    from anchor_flow.icl.prompts import ICLPrompt

    prompts = toy_prompts(2, seed=1)
    unlabelled = [
        ICLPrompt(p.template, p.label_words, p.demonstrations, type(p.query)(p.query.text, None))
        for p in prompts
    ]
    with pytest.raises(ReweightingError, match="2 training prompts have no query label"):
        fit_reweighting(tl_model, unlabelled, progress=False)
    with pytest.raises(ReweightingError, match="epochs=0; expected a positive integer"):
        fit_reweighting(tl_model, prompts, epochs=0, progress=False)
    with pytest.raises(ReweightingError, match=r"lr=-1.0; expected a positive learning rate"):
        fit_reweighting(tl_model, prompts, lr=-1.0, progress=False)
    assert_no_hooks(tl_model)


@pytest.fixture(scope="module")
def planted_run():
    """Table 1 on planted-anchor (synthetic-k3, two seeds); fitting lowers the loss."""
    torch.set_num_threads(1)
    model = load_model("planted-anchor")
    adapter = adapt(model)
    runs = []
    for seed in (42, 43):
        sets = reweighting_prompts(
            get_task("synthetic-k3"),
            (),
            (),
            seed=seed,
            n_examples=30,
            tokenizer=adapter.tokenizer,
            max_length=adapter.n_ctx,
        )
        runs.append(
            run_reweighting(
                model,
                sets,
                run_name=f"seed-{seed}",
                batch_size=30,
                epochs=5,
                seed=seed,
                progress=False,
            )
        )
    assert_no_hooks(model)
    return model, ReweightingResult.concat(runs)


def test_fitting_lowers_the_training_loss_on_planted_anchor(planted_run):
    _, result = planted_run
    assert bool((result.losses[:, -1] < result.losses[:, 0] - 0.05).all())
    frame = result.summary_frame()
    assert list(frame["condition"]) == ["vanilla 1-shot", "vanilla k-shot", "re-weighted"]
    assert result.settings["k_shot_shots"] == 5
    assert result.betas.shape == (2, 2, 3, 3)


def test_fitted_betas_compose_with_later_runs(planted_run, tmp_path):
    model, result = planted_run
    module = result.reweighting(0)
    module.save(tmp_path / "betas.npz")
    module = AnchorReweighting.load(tmp_path / "betas.npz")
    prompts = reweighting_prompts(get_task("synthetic-k3"), (), (), seed=42, n_examples=4).test
    vanilla = run_icl(model, prompts, progress=False)
    reweighted = run_icl(model, prompts, batch_hooks=module.batch_hooks, progress=False)
    assert not torch.allclose(vanilla.label_probs, reweighted.label_probs)
    from anchor_flow.analysis.saliency.measure import run_saliency

    one = prompt_batch(model, prompts[:1])
    base = run_saliency(model, one, progress=False)
    edited = run_saliency(model, one, extra_hooks=module.hooks(one), progress=False)
    assert not torch.allclose(base.label_probs, edited.label_probs)
    assert torch.allclose(edited.label_probs, reweighted.label_probs[:1], atol=1e-5)
    # Batch-specific hooks compose with run_saliency over length-sorted batches too.
    batched = run_saliency(
        model, prompts, batch_hooks=module.batch_hooks, batch_size=3, progress=False
    )
    assert torch.allclose(batched.label_probs, reweighted.label_probs, atol=1e-5)
    assert_no_hooks(model)


def test_fitting_lowers_the_training_loss_on_the_demo_model():
    from anchor_flow.applications.reweighting.beta import fit_reweighting
    from anchor_flow.models.loading import load_model

    model = load_model("demo")
    prompts = reweighting_prompts(get_task("demo-k3"), (), (), seed=42, n_examples=8)
    fit = fit_reweighting(model, prompts.train, epochs=5, seed=0, progress=False)
    assert len(prompts.train) == 12  # 4 extra examples per class, K=3
    assert float(fit.losses[-1]) < float(fit.losses[0]) - 0.05, fit.losses
    assert all(p.grad is None for p in model.parameters())
    assert_no_hooks(model)


def test_reweighting_plots(planted_run):
    _, result = planted_run
    bars = plot_reweighting_accuracy(result).to_dict()
    assert [t["type"] for t in bars["data"]] == ["bar"]
    assert list(bars["data"][0]["x"]) == ["vanilla 1-shot", "vanilla 5-shot", "re-weighted"]
    assert len(bars["data"][0]["error_y"]["array"]) == 3
    assert bars["layout"]["yaxis"]["title"]["text"] == "Accuracy"
    heat = plot_betas(result, class_names=("a", "b", "c")).to_dict()
    assert [t["type"] for t in heat["data"]] == ["heatmap"] * 3
    assert len(heat["data"][0]["z"]) == 2
    assert len(heat["data"][0]["z"][0]) == 3
    from anchor_flow.errors import AnchorFlowError

    with pytest.raises(AnchorFlowError, match="2 class names for 3 classes"):
        plot_betas(result, class_names=("a", "b"))
    with pytest.raises(AnchorFlowError, match="run=5; expected 0 <= run < 2"):
        plot_betas(result, run=5)
    assert math.isfinite(float(result.summary_frame()["mean"].sum()))
    assert tl_version()
