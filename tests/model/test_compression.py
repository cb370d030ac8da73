"""Context compression (paper §3.2): identity, oracle, effect, baselines, results, planted."""

from __future__ import annotations

import re

import pytest
import torch

from anchor_flow.analysis.blocking import block_edges_hooks
from anchor_flow.analysis.loyalty import METRICS
from anchor_flow.applications.compression.baselines import CompressionResult, run_compression
from anchor_flow.applications.compression.cache import (
    compress_context,
    compressed_final_logits,
    compressed_logits,
)
from anchor_flow.applications.compression.engines import (
    CompressionError,
    anchor_positions,
    context_end,
    query_batch,
    run_compressed_icl,
)
from anchor_flow.icl.evaluation import prompt_batch, run_icl
from anchor_flow.icl.prompts import ICLPrompt
from anchor_flow.icl.roles import Role
from anchor_flow.models.loading import load_model
from anchor_flow.models.tl_adapter import adapt
from anchor_flow.testbeds.synthetic import synthetic_prompts
from anchor_flow.testbeds.toy import toy_prompts
from conftest import assert_no_hooks


def _shared(n, seed=2, shots=2):
    """Toy prompts whose queries differ but share the first prompt's demonstrations."""
    prompts = toy_prompts(n, shots_per_class=shots, seed=seed)
    first = prompts[0]
    return [ICLPrompt(first.template, first.label_words, first.demonstrations, p.query)
            for p in prompts]  # fmt: skip


def _batch(model, n=5):
    return prompt_batch(model, _shared(n))


def _full_query_logits(model, batch, end, hooks=()):
    adapter = adapt(model)
    with adapter.hooks(fwd_hooks=hooks), torch.no_grad():
        return adapter.forward_logits(batch.tokens)[:, end:]


@pytest.mark.parametrize("policy", ["original", "compact", "restart"])
def test_identity_keeping_every_position_reproduces_the_full_prompt(tl_model, policy):
    batch = _batch(tl_model)
    end = context_end(batch)
    context = compress_context(tl_model, batch.tokens[0, :end], torch.arange(end),
                               position_policy="original")  # fmt: skip
    query = query_batch(batch, range(len(batch)), end)
    with torch.no_grad():
        compressed = compressed_logits(tl_model, context, query.tokens)
    full = _full_query_logits(tl_model, batch, end)
    real = query.attention_mask
    assert (compressed - full)[real].abs().max() < 1e-5
    # compact/restart differ from original once positions are dropped, never with all kept
    if policy != "original":
        drop = compress_context(tl_model, batch.tokens[0, :end], anchor_positions(batch),
                                position_policy=policy)  # fmt: skip
        with torch.no_grad():
            moved = compressed_logits(tl_model, drop, query.tokens)
        assert (moved - full)[real].abs().max() > 1e-3


@pytest.mark.parametrize("policy", ["original", "compact"])
def test_final_logits_equal_every_position_logits_at_the_target(tl_model, policy):
    """The cache engine reads only the target's logits; they must be the full logits' row."""
    batch = _batch(tl_model)
    end = context_end(batch)
    context = compress_context(tl_model, batch.tokens[0, :end], anchor_positions(batch),
                               position_policy=policy)  # fmt: skip
    query = query_batch(batch, range(len(batch)), end)
    assert len(set(query.target_position.tolist())) > 1  # right-padded queries differ
    seen = []

    def count(resid, hook):
        seen.append(hook.name)

    hooks = [(adapt(tl_model).pattern_hook_name(0), count)]
    with torch.no_grad():
        every = compressed_logits(tl_model, context, query.tokens, extra_hooks=hooks)
        final = compressed_final_logits(tl_model, context, query.tokens, query.target_position,
                                        extra_hooks=hooks)  # fmt: skip
    rows = torch.arange(len(batch))
    assert final.shape == (len(batch), every.shape[-1])
    assert (final - every[rows, query.target_position]).abs().max() < 1e-5
    assert len(seen) == 2  # extra hooks fire in both
    assert_no_hooks(tl_model)


def test_oracle_compressed_equals_full_run_with_dropped_keys_blocked(tl_model):
    batch = _batch(tl_model)
    end = context_end(batch)
    kept = anchor_positions(batch)
    context = compress_context(tl_model, batch.tokens[0, :end], kept)
    query = query_batch(batch, range(len(batch)), end)
    with torch.no_grad():
        compressed = compressed_logits(tl_model, context, query.tokens)
    width = batch.tokens.shape[1]
    dropped = torch.ones(width, dtype=torch.bool)
    dropped[kept] = False
    dropped[end:] = False
    mask = torch.zeros(len(batch), width, width, dtype=torch.bool)
    mask[:, end:, :] = dropped  # only the query's rows lose the dropped keys
    hooks = block_edges_hooks(tl_model, mask, range(adapt(tl_model).n_layers))
    oracle = _full_query_logits(tl_model, batch, end, hooks)
    real = query.attention_mask
    assert (compressed - oracle)[real].abs().max() < 1e-5
    plain = _full_query_logits(tl_model, batch, end)
    assert (compressed - plain)[real].abs().max() > 1e-3


def test_effect_dropping_the_label_words_changes_the_logits(tl_model):
    batch = _batch(tl_model, 2)
    end = context_end(batch)
    kept = anchor_positions(batch)
    no_labels = kept[batch.roles[0, kept] != Role.LABEL]
    query = query_batch(batch, [0, 1], end)
    with torch.no_grad():
        a = compressed_logits(tl_model, compress_context(tl_model, batch.tokens[0, :end], kept),
                              query.tokens)  # fmt: skip
        b = compressed_logits(tl_model,
                              compress_context(tl_model, batch.tokens[0, :end], no_labels),
                              query.tokens)  # fmt: skip
    assert (a - b)[query.attention_mask].abs().max() > 1e-3


@pytest.mark.parametrize("engine", ["auto", "cache"])
def test_run_compressed_icl_all_equals_run_icl_and_is_batch_independent(tl_model, engine):
    prompts = _shared(3, seed=4) + toy_prompts(2, seed=5)  # shared and own contexts
    full = run_icl(tl_model, prompts, top_k=5, progress=False)
    every = run_compressed_icl(tl_model, prompts, keep="all", batch_size=2, engine=engine)
    assert torch.allclose(every.label_probs, full.label_probs, atol=1e-5)
    one = run_compressed_icl(tl_model, prompts, batch_size=1, engine=engine)
    many = run_compressed_icl(tl_model, prompts, batch_size=5, engine=engine)
    assert torch.allclose(one.label_probs, many.label_probs, atol=1e-5)


def test_seeded_baselines_are_reproducible_and_results_round_trip(tl_model, tmp_path):
    prompts = _shared(4, seed=1)
    a = run_compression(tl_model, prompts, seed=3, n_top_trials=3)
    b = run_compression(tl_model, prompts, seed=3, n_top_trials=3)
    assert torch.equal(a.predictions, b.predictions)
    assert torch.equal(a.trials, b.trials)
    assert a.trials.shape == (1, 3, 3)
    other = run_compression(tl_model, prompts, seed=4, n_top_trials=3)
    pooled = CompressionResult.concat([a, other])
    assert pooled.run_names == ("seed-3", "seed-4")
    assert pooled.n_prompts == 8
    frame = pooled.summary_frame()
    assert set(frame.method) == {"icl", *a.methods}
    assert (frame.ci_over == "runs").all()
    assert len(pooled.trials_frame()) == 6
    assert pooled.trials_frame().chosen.sum() == 2
    assert len(pooled.to_frame()) == 4 * 8
    pooled.save(tmp_path / "c")
    loaded = CompressionResult.load(tmp_path / "c")
    assert torch.equal(loaded.predictions, pooled.predictions)
    assert loaded.summary()["means"] == pooled.summary()["means"]


def test_bad_input_raises_clear_errors(tl_model):
    batch = _batch(tl_model, 1)
    end = context_end(batch)
    with pytest.raises(CompressionError, match="the keep set is empty"):
        compress_context(tl_model, batch.tokens[0, :end], [])
    with pytest.raises(CompressionError, match="strictly increasing positions"):
        compress_context(tl_model, batch.tokens[0, :end], [3, 1])
    context = compress_context(tl_model, batch.tokens[0, :end], anchor_positions(batch))
    n_ctx = adapt(tl_model).n_ctx
    too_long = torch.ones(1, n_ctx - end + 1, dtype=torch.long)
    with pytest.raises(CompressionError, match=r"longer than the \d+ positions left"):
        compressed_logits(tl_model, context, too_long)
    with pytest.raises(CompressionError, match="methods=\\['hidden'\\]"):
        run_compression(tl_model, toy_prompts(1), methods=["hidden"])


def test_hidden_anchor_keeps_planted_anchor_behaviour_and_hidden_random_does_not():
    torch.set_num_threads(1)
    model = load_model("planted-anchor")
    result = run_compression(model, synthetic_prompts(40, k=3, seed=5), seed=0,
                             n_top_trials=2, batch_size=40)  # fmt: skip
    assert_no_hooks(model)
    frame = result.summary_frame().set_index(["method", "metric"])["mean"]
    assert frame["hidden_anchor", "label_loyalty"] > 0.95
    assert frame["hidden_anchor", "accuracy"] >= frame["icl", "accuracy"] - 0.05
    assert frame["hidden_random", "label_loyalty"] < 0.7  # 3 classes: chance 1/3
    assert frame["hidden_random", "accuracy"] < frame["icl", "accuracy"] - 0.2


def test_hidden_random_top_reports_the_best_trial():
    # The demo model's outcome depends on which text positions are kept (the tiny random
    # model's does not), so the trials differ and keeping another one would show.
    from anchor_flow.icl.sampling import task_prompts
    from anchor_flow.icl.tasks import get_task

    torch.set_num_threads(1)
    prompts = task_prompts(get_task("demo-k3"), (), (), seed=42, n_examples=16)
    result = run_compression(
        load_model("demo"), prompts, methods=("hidden_random_top",), seed=5, n_top_trials=6
    )
    label_loyalty = result.trials[0, :, 0]
    assert float(label_loyalty.min()) < float(label_loyalty.max()), "the trials must differ"
    chosen = int(result.chosen_trial[0])
    assert float(label_loyalty[chosen]) == float(label_loyalty.max())
    reported = [float(result.per_prompt(m)[0].nanmean()) for m in METRICS]
    assert reported == pytest.approx(result.trials[0, chosen].tolist(), abs=1e-6)
    frame = result.trials_frame()
    assert frame.loc[frame.chosen, "trial"].tolist() == [chosen]
    means = result.summary_frame().set_index(["method", "metric"])["mean"]
    for metric, value in zip(METRICS, result.trials[0, chosen].tolist(), strict=True):
        assert float(means["hidden_random_top", metric]) == pytest.approx(value, abs=1e-6)


def test_chosen_trial_must_index_the_trials():
    fields = dict(
        methods=("hidden_random_top",), baseline_predictions=torch.tensor([0, 1]),
        predictions=torch.tensor([[0, 0]]), word_jaccard=torch.tensor([[1.0, 0.5]]),
        gold=torch.tensor([0, 1]), run=torch.tensor([0, 0]), run_names=("seed-0",),
        trials=torch.zeros(1, 3, 3),
    )  # fmt: skip
    result = CompressionResult(**fields, chosen_trial=torch.tensor([2]))
    assert result.trials_frame().chosen.tolist() == [False, False, True]
    for bad in ([3], [-1]):
        message = f"chosen_trial {bad} for trials of shape (1, 3, 3); expected one index in 0..2"
        with pytest.raises(CompressionError, match=re.escape(message)):
            CompressionResult(**fields, chosen_trial=torch.tensor(bad))
