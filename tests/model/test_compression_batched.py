"""The mask engine of run_compressed_icl (prompts with their own demonstrations, batched):
oracle (equals the cache engine), effect, identity, engine choice, trials, hygiene, errors."""

from __future__ import annotations

import pytest
import torch

from anchor_flow.analysis.blocking import block_edges_hooks
from anchor_flow.applications.compression.cache import compress_context, compressed_logits
from anchor_flow.applications.compression.engines import (
    CompressionError,
    anchor_positions,
    compression_mask,
    context_end,
    query_batch,
    run_compressed_icl,
    run_compressed_icl_trials,
)
from anchor_flow.errors import DeadAttentionHooksError, UnsupportedModelError
from anchor_flow.icl.evaluation import prompt_batch, run_icl
from anchor_flow.icl.prompts import ICLPrompt
from anchor_flow.icl.roles import Role
from anchor_flow.models.loading import load_model
from anchor_flow.models.tl_adapter import adapt
from anchor_flow.testbeds.demo import demo_prompts
from anchor_flow.testbeds.toy import toy_prompts
from conftest import TL_CLASSES, assert_no_hooks


def _own(n=5, seed=3):
    """Toy prompts that each have their own demonstrations (one context per prompt)."""
    return toy_prompts(n, shots_per_class=2, seed=seed)


def _assert_same(a, b, atol=1e-5):
    assert (a.label_probs - b.label_probs).abs().max() < atol
    assert (a.top_probs - b.top_probs).abs().max() < atol
    assert torch.equal(a.top_tokens, b.top_tokens)


@pytest.mark.parametrize("keep", ["anchor", "random"])
def test_oracle_mask_engine_equals_cache_engine_on_per_prompt_contexts(tl_model, keep):
    prompts = _own()
    mask = run_compressed_icl(tl_model, prompts, keep=keep, seed=1, engine="mask", batch_size=3)
    cache = run_compressed_icl(tl_model, prompts, keep=keep, seed=1, engine="cache")
    assert mask.settings["contexts_by_engine"] == {"cache": 0, "mask": 5}
    assert cache.settings["contexts_by_engine"] == {"cache": 5, "mask": 0}
    _assert_same(mask, cache)
    auto = run_compressed_icl(tl_model, prompts, keep=keep, seed=1)
    assert auto.settings["contexts_by_engine"] == {"cache": 0, "mask": 5}
    _assert_same(auto, cache)


def test_oracle_masked_logits_equal_compressed_logits_at_every_query_position(tl_model):
    batch = prompt_batch(tl_model, _own(3))
    kept = [anchor_positions(batch, r) for r in range(len(batch))]
    hooks = block_edges_hooks(tl_model, compression_mask(batch, kept), range(2))
    adapter = adapt(tl_model)
    with adapter.hooks(fwd_hooks=hooks), torch.no_grad():
        masked = adapter.forward_logits(batch.tokens)
    for row in range(len(batch)):
        end, length = context_end(batch, row), int(batch.lengths[row])
        context = compress_context(tl_model, batch.tokens[row, :end], kept[row])
        with torch.no_grad():
            cached = compressed_logits(tl_model, context, batch.tokens[row : row + 1, end:length])
        assert (cached[0] - masked[row, end:length]).abs().max() < 1e-5


def test_oracle_demo_model_bridge_mask_equals_cache():
    model = load_model("demo", tl_class="bridge")
    prompts = demo_prompts(12, k=3, shots_per_class=1, seed=7)
    mask = run_compressed_icl(model, prompts, engine="mask", batch_size=5)
    cache = run_compressed_icl(model, prompts, engine="cache")
    _assert_same(mask, cache)
    assert_no_hooks(model)


@pytest.mark.skipif("hooked" not in TL_CLASSES, reason="HookedTransformer needs TL 3.x")
def test_hooked_rotary_demo_runs_original_positions_with_the_mask_engine():
    hooked = load_model("demo", tl_class="hooked")
    prompts = demo_prompts(6, k=3, shots_per_class=1, seed=8)
    with pytest.raises(UnsupportedModelError, match="learned absolute position embeddings"):
        run_compressed_icl(hooked, prompts, engine="cache")
    auto = run_compressed_icl(hooked, prompts)
    bridge = run_compressed_icl(load_model("demo", tl_class="bridge"), prompts, engine="cache")
    assert (auto.label_probs - bridge.label_probs).abs().max() < 1e-4
    assert_no_hooks(hooked)


def test_identity_mask_engine_keeping_everything_equals_run_icl(tl_model):
    prompts = _own(4)
    full = run_icl(tl_model, prompts, top_k=5, progress=False)
    every = run_compressed_icl(tl_model, prompts, keep="all", engine="mask", batch_size=3)
    _assert_same(every, full)


def test_effect_mask_engine_blocks_dropping_label_words_changes_the_result(tl_model):
    prompts = _own(4)
    full = run_icl(tl_model, prompts, top_k=5, progress=False)
    anchor = run_compressed_icl(tl_model, prompts, engine="mask")
    assert (anchor.label_probs - full.label_probs).abs().max() > 1e-3
    batch = prompt_batch(tl_model, prompts)
    kept = [anchor_positions(batch, r) for r in range(len(batch))]
    no_labels = [k[batch.roles[r, k] != Role.LABEL] for r, k in enumerate(kept)]
    adapter = adapt(tl_model)
    outputs = []
    for sets in (kept, no_labels):
        hooks = block_edges_hooks(tl_model, compression_mask(batch, sets), range(2))
        with adapter.hooks(fwd_hooks=hooks), torch.no_grad():
            outputs.append(adapter.final_logits(batch.tokens, batch.target_position))
    assert (outputs[0] - outputs[1]).abs().max() > 1e-3


def test_auto_uses_the_cache_for_shared_contexts_and_masks_the_rest(tl_model):
    first = toy_prompts(1, shots_per_class=2, seed=4)[0]
    shared = [ICLPrompt(first.template, first.label_words, first.demonstrations, p.query)
              for p in toy_prompts(3, seed=5)]  # fmt: skip
    prompts = shared + _own(2, seed=6)
    auto = run_compressed_icl(tl_model, prompts, batch_size=2)
    assert auto.settings["contexts_by_engine"] == {"cache": 1, "mask": 2}
    _assert_same(auto, run_compressed_icl(tl_model, prompts, engine="cache"))
    compact = run_compressed_icl(tl_model, prompts, position_policy="compact")
    assert compact.settings["contexts_by_engine"] == {"cache": 3, "mask": 0}
    hooked = run_compressed_icl(tl_model, prompts, extra_hooks=[("hook_embed", lambda x, hook: x)])
    assert hooked.settings["contexts_by_engine"] == {"cache": 3, "mask": 0}


@pytest.mark.parametrize("engine", ["mask", "cache"])
def test_trials_share_work_and_equal_separate_runs(tl_model, engine):
    prompts = _own(3)
    together = run_compressed_icl_trials(tl_model, prompts, trials=[2, 0, 5], seed=9,
                                         engine=engine)  # fmt: skip
    assert [r.settings["trial"] for r in together] == [2, 0, 5]
    for result, trial in zip(together, [2, 0, 5], strict=True):
        alone = run_compressed_icl(tl_model, prompts, keep="random", seed=9, trial=trial,
                                   engine=engine)  # fmt: skip
        _assert_same(result, alone)
    anchors = run_compressed_icl_trials(tl_model, prompts, trials=[0, 1], keep="anchor")
    assert torch.equal(anchors[0].label_probs, anchors[1].label_probs)


def test_hygiene_no_hooks_left_after_an_exception(tl_model):
    def boom(pattern, hook):
        raise RuntimeError("user hook failed")

    hooks = [(adapt(tl_model).pattern_hook_name(1), boom)]
    with pytest.raises(RuntimeError, match="user hook failed"):
        run_compressed_icl(tl_model, _own(2), engine="mask", extra_hooks=hooks)
    assert_no_hooks(tl_model)


def test_dead_attention_hooks_refuse_mask_and_auto_falls_back(tl_model, monkeypatch):
    def dead(model):
        raise DeadAttentionHooksError("hook_pattern edits are discarded")

    monkeypatch.setattr(
        "anchor_flow.applications.compression.engines.check_attention_hooks_live", dead
    )
    with pytest.raises(DeadAttentionHooksError, match="discarded"):
        run_compressed_icl(tl_model, _own(2), engine="mask")
    auto = run_compressed_icl(tl_model, _own(2))
    assert auto.settings["contexts_by_engine"] == {"cache": 2, "mask": 0}


def test_bad_engine_options_raise_clear_errors(tl_model):
    prompts = _own(1)
    with pytest.raises(CompressionError, match="engine='mask' computes position_policy='orig"):
        run_compressed_icl(tl_model, prompts, engine="mask", position_policy="restart")
    # Without runtime type checking (outside pytest) a bad literal reaches our own check.
    unchecked = getattr(run_compressed_icl_trials, "__wrapped__", run_compressed_icl_trials)
    with pytest.raises(CompressionError, match="engine='turbo'"):
        unchecked(tl_model, prompts, trials=[0], engine="turbo")
    with pytest.raises(CompressionError, match="at least one non-negative trial"):
        run_compressed_icl_trials(tl_model, prompts, trials=[])
    with pytest.raises(CompressionError, match="batch_size=0"):
        run_compressed_icl(tl_model, prompts, batch_size=0)
    batch = prompt_batch(tl_model, prompts)
    with pytest.raises(CompressionError, match="got 2 keep sets for a batch of 1"):
        compression_mask(batch, [torch.tensor([0]), torch.tensor([1])])
    query = query_batch(batch, [0], context_end(batch))
    assert query.tokens.shape[0] == 1
