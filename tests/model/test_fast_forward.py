"""Hook-free compressed queries (issue 18): oracle (equal to the cache engine and the TL
forward, every position policy, GPT-2 and a rotary grouped-query Llama), effect (far fewer
module calls on a bridge), hygiene (the bridge is left as it was), errors."""

from __future__ import annotations

import pytest
import torch

from anchor_flow.applications.compression.cache import compress_context, compressed_logits
from anchor_flow.applications.compression.engines import (
    CompressionError,
    anchor_positions,
    context_end,
    query_batch,
    run_compressed_icl,
)
from anchor_flow.applications.compression.speed import measure_token_speedup
from anchor_flow.errors import UnsupportedModelError
from anchor_flow.icl.evaluation import prompt_batch
from anchor_flow.icl.prompts import ICLPrompt
from anchor_flow.models import fast_forward
from anchor_flow.models.fast_forward import FastForward, plain_hf_model
from anchor_flow.models.loading import from_hf_model
from anchor_flow.models.tl_adapter import adapt
from anchor_flow.testbeds.toy import toy_prompts
from conftest import TL_CLASSES, assert_no_hooks

POLICIES = ["original", "compact", "restart"]


def _shared(n, seed=2):
    prompts = toy_prompts(n, shots_per_class=2, seed=seed)
    first = prompts[0]
    return [ICLPrompt(first.template, first.label_words, first.demonstrations, p.query)
            for p in prompts]  # fmt: skip


def _module_calls(run):
    """Forward calls of every nn.Module (a global forward pre-hook) while ``run`` runs."""
    calls = [0]

    def count(module, args):
        calls[0] += 1

    handle = torch.nn.modules.module.register_module_forward_pre_hook(count)
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    return calls[0]


def _tiny_llama(toy_tokenizer, tl_class="bridge"):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=600, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=0, eos_token_id=0, pad_token_id=0, attn_implementation="eager",
        initializer_range=0.1,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        hf_model = LlamaForCausalLM(config).eval()
    return from_hf_model(hf_model, toy_tokenizer, tl_class=tl_class)


@pytest.mark.parametrize("policy", POLICIES)
def test_oracle_fast_engine_equals_cache_engine(tl_model, policy):
    prompts = _shared(5)
    cache = run_compressed_icl(tl_model, prompts, engine="cache", position_policy=policy,
                               batch_size=2)  # fmt: skip
    fast = run_compressed_icl(tl_model, prompts, engine="fast", position_policy=policy,
                              batch_size=2)  # fmt: skip
    assert (fast.label_probs - cache.label_probs).abs().max() < 1e-5
    assert torch.equal(fast.top_tokens, cache.top_tokens)
    assert fast.settings["contexts_by_engine"] == {"fast": 1}
    # own demonstrations per prompt: one context each
    own = toy_prompts(3, shots_per_class=1, seed=4)
    cache_own = run_compressed_icl(tl_model, own, engine="cache", position_policy=policy)
    fast_own = run_compressed_icl(tl_model, own, engine="fast", position_policy=policy)
    assert (fast_own.label_probs - cache_own.label_probs).abs().max() < 1e-5
    assert fast_own.settings["contexts_by_engine"] == {"fast": 3}
    assert_no_hooks(tl_model)


@pytest.mark.parametrize("policy", POLICIES)
def test_oracle_fast_logits_equal_tl_logits_at_every_position(tl_model, policy):
    batch = prompt_batch(tl_model, _shared(4))
    end = context_end(batch)
    context = compress_context(tl_model, batch.tokens[0, :end], anchor_positions(batch),
                               position_policy=policy)  # fmt: skip
    query = query_batch(batch, range(len(batch)), end)
    fast = FastForward(adapt(tl_model))
    with torch.no_grad():
        reference = compressed_logits(tl_model, context, query.tokens)
        got = compressed_logits(tl_model, context, query.tokens, fast=fast)
        full = fast.logits(batch.tokens)
        full_reference = adapt(tl_model).forward_logits(batch.tokens)
    real = query.attention_mask
    assert (got - reference)[real].abs().max() < 1e-5
    assert (full - full_reference).abs().max() < 1e-5


@pytest.mark.parametrize("policy", POLICIES)
def test_oracle_fast_on_a_rotary_grouped_query_llama_bridge(toy_tokenizer, policy):
    if "bridge" not in TL_CLASSES:
        pytest.skip("no TransformerBridge in this TransformerLens")
    model = _tiny_llama(toy_tokenizer)
    prompts = _shared(4)
    cache = run_compressed_icl(model, prompts, engine="cache", position_policy=policy)
    fast = run_compressed_icl(model, prompts, engine="fast", position_policy=policy)
    assert (fast.label_probs - cache.label_probs).abs().max() < 1e-5
    assert torch.equal(fast.top_tokens, cache.top_tokens)


def test_effect_bridge_queries_make_far_fewer_module_calls(tl_model):
    adapter = adapt(tl_model)
    batch = prompt_batch(tl_model, _shared(2))
    end = context_end(batch)
    context = compress_context(tl_model, batch.tokens[0, :end], anchor_positions(batch))
    query = query_batch(batch, [0, 1], end)
    fast = FastForward(adapter)
    slow_calls = _module_calls(lambda: compressed_logits(tl_model, context, query.tokens))
    fast_calls = _module_calls(lambda: compressed_logits(tl_model, context, query.tokens,
                                                         fast=fast))  # fmt: skip
    if adapter.kind == "bridge":
        # the bridge's components and hook points are gone: HF GPT-2 makes 14 calls per layer
        assert fast_calls * 3 < slow_calls
    else:  # a HookedTransformer runs its own forward, no hooks attached
        assert fast_calls == slow_calls


def test_hygiene_unwrapping_leaves_the_bridge_as_it_was(toy_tokenizer):
    if "bridge" not in TL_CLASSES:
        pytest.skip("no TransformerBridge in this TransformerLens")
    model = _tiny_llama(toy_tokenizer)
    adapter = adapt(model)
    original = model.__dict__["original_model"]
    before = [(name, type(m)) for name, m in original.named_modules()]
    tokens = torch.randint(1, 600, (2, 9))
    with torch.no_grad():
        expected = adapter.forward_logits(tokens)
        plain = plain_hf_model(adapter)
        assert plain_hf_model(adapter) is plain  # built once per model
        assert not any(type(m).__name__ == "HookPoint" for m in plain.modules())
        assert [(name, type(m)) for name, m in original.named_modules()] == before
        assert torch.equal(adapter.forward_logits(tokens), expected)
    shared = {p.data_ptr() for p in plain.parameters()}
    assert shared <= {p.data_ptr() for p in original.parameters()}  # no weight copied
    assert_no_hooks(model)


def test_a_bridge_whose_unwrapped_modules_disagree_is_refused(tl_model, monkeypatch):
    adapter = adapt(tl_model)
    if adapter.kind != "bridge":
        with pytest.raises(UnsupportedModelError, match="expected a TransformerBridge"):
            plain_hf_model(adapter)
        return
    real_unwrap = fast_forward._unwrap

    def broken(module, memo):
        plain = real_unwrap(module, memo)
        if module is tl_model.__dict__["original_model"]:
            with torch.no_grad():  # a copy whose head differs from the bridge's
                head = plain.get_output_embeddings()
                head.weight = torch.nn.Parameter(head.weight + 1.0)
        return plain

    monkeypatch.setattr(fast_forward, "_unwrap", broken)
    with pytest.raises(UnsupportedModelError, match="give other logits than the bridge"):
        plain_hf_model(adapter)


def test_fast_speedup_measures_with_the_fast_engine(tl_model):
    result = measure_token_speedup(tl_model, torch.arange(1, 30), [0, 9, 19],
                                   torch.ones(2, 5, dtype=torch.long), repeats=1, warmup=0,
                                   engine="fast")  # fmt: skip
    assert result.settings["engine"] == "fast"
    assert result.settings["cuda_graphs"] is False
    assert bool((result.compressed_ms > 0).all())


def test_bad_fast_options_raise_clear_errors(tl_model):
    prompts = _shared(2)
    hooks = [("blocks.0.hook_resid_pre", lambda x, hook: x)]
    with pytest.raises(CompressionError, match="engine='fast' runs the queries without hooks"):
        run_compressed_icl(tl_model, prompts, engine="fast", extra_hooks=hooks)
    args = (tl_model, torch.arange(1, 30), [0, 9], torch.ones(1, 5, dtype=torch.long))
    unchecked = getattr(measure_token_speedup, "__wrapped__", measure_token_speedup)
    with pytest.raises(CompressionError, match="engine='turbo'; expected one of"):
        unchecked(*args, engine="turbo")
    with pytest.raises(CompressionError, match="cuda_graphs=True needs engine='fast'"):
        measure_token_speedup(*args, cuda_graphs=True)
    batch = prompt_batch(tl_model, prompts)
    end = context_end(batch)
    context = compress_context(tl_model, batch.tokens[0, :end], anchor_positions(batch))
    query = query_batch(batch, [0], end)
    with pytest.raises(CompressionError, match="extra_hooks cannot fire in a hook-free"):
        compressed_logits(tl_model, context, query.tokens, fast=FastForward(adapt(tl_model)),
                          extra_hooks=hooks)  # fmt: skip
    assert_no_hooks(tl_model)
