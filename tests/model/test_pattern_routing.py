"""GPT-J, GPT-Neo and OPT on a TransformerBridge: hook_pattern is live (issue 23, item 4).

The effect oracle: replacing layer 1's pattern at ``hook_pattern`` by "attend to key 0 only"
must give the logits of the Hugging Face model whose layer-1 attention output is replaced by
``out_proj(v_proj(h_0))`` at every position (what that pattern means, computed from the Hugging
Face modules alone, on a fresh copy of the weights). Saliency against Hugging Face eager
attention is in ``test_architecture_matrix.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from anchor_flow.analysis.saliency.measure import run_saliency
from anchor_flow.applications.compression.engines import run_compressed_icl
from anchor_flow.errors import DeadAttentionHooksError
from anchor_flow.icl.evaluation import run_icl
from anchor_flow.models import tl_build
from anchor_flow.models.guards import check_attention_hooks_live
from anchor_flow.models.loading import from_hf_model
from anchor_flow.models.pattern_routing import PatternSeam, route_patterns, routed_family
from anchor_flow.models.tl_adapter import adapt
from anchor_flow.testbeds.toy import toy_prompts
from conftest import TL_CLASSES, assert_no_hooks

pytestmark = pytest.mark.bridge
TL4 = "hooked" not in TL_CLASSES
needs_tl4 = pytest.mark.skipif(not TL4, reason="the routing needs TransformerLens 4.x's bridge")
ARCHS = ["GPTJForCausalLM", "GPTNeoForCausalLM", "OPTForCausalLM"]
TOKENS = torch.tensor([[3, 50, 70, 90, 11, 5, 42], [7, 8, 9, 10, 11, 12, 13]])


def tiny_hf(arch: str) -> Any:
    """A seeded tiny random model (a fresh copy of the same weights on every call)."""
    import transformers

    common = dict(vocab_size=600, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    configs = {
        "GPTJForCausalLM": transformers.GPTJConfig(
            n_layer=2, n_head=4, n_embd=32, n_positions=64, rotary_dim=4, **common
        ),
        "GPTNeoForCausalLM": transformers.GPTNeoConfig(
            num_layers=2, num_heads=4, hidden_size=32, max_position_embeddings=64,
            attention_types=[[["global", "local"], 1]], window_size=4, **common,
        ),
        "OPTForCausalLM": transformers.OPTConfig(
            num_hidden_layers=2, num_attention_heads=4, hidden_size=32, ffn_dim=64,
            max_position_embeddings=64, word_embed_proj_dim=32, enable_bias=True, **common,
        ),
    }  # fmt: skip
    config = configs[arch]
    config.initializer_range = 0.2
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = getattr(transformers, arch)(config).eval()
        with torch.no_grad():  # nonzero biases, so that v_proj's bias takes part in the oracle
            for name, parameter in model.named_parameters():
                if name.endswith("bias"):
                    parameter.normal_(0.0, 0.2)
    return model


def hf_attention(model: Any, layer: int) -> Any:
    if hasattr(model, "transformer"):
        block = model.transformer.h[layer]
        return block.attn.attention if hasattr(block.attn, "attention") else block.attn
    return model.model.decoder.layers[layer].self_attn


def hf_logits_attending_to_first_key(arch: str, layer: int) -> torch.Tensor:
    """HF logits when ``layer``'s attention output is that of the pattern "key 0 only"."""
    model = tiny_hf(arch)
    attention = hf_attention(model, layer)

    def replace(module: Any, args: Any, kwargs: Any, output: Any) -> Any:
        hidden = args[0] if args else kwargs["hidden_states"]
        first = module.out_proj(module.v_proj(hidden[:, :1]))
        return (first.expand(-1, hidden.shape[1], -1), *output[1:])

    handle = attention.register_forward_hook(replace, with_kwargs=True)
    try:
        with torch.no_grad():
            return model(TOKENS).logits
    finally:
        handle.remove()


@needs_tl4
@pytest.mark.parametrize("arch", ARCHS)
def test_an_edit_at_hook_pattern_acts_like_the_same_pattern_in_hugging_face(
    arch: str, toy_tokenizer: Any
) -> None:
    torch.set_num_threads(1)
    with torch.no_grad():
        reference = tiny_hf(arch)(TOKENS).logits
    model = from_hf_model(tiny_hf(arch), toy_tokenizer, tl_class="bridge")
    adapter = adapt(model)
    fired = []

    def first_key(pattern: torch.Tensor, hook: Any) -> torch.Tensor:
        fired.append(hook.name)
        edited = torch.zeros_like(pattern)
        edited[..., 0] = 1.0
        return edited

    with torch.no_grad():
        torch.testing.assert_close(adapter.forward_logits(TOKENS), reference, atol=1e-5, rtol=0)
        with adapter.hooks(fwd_hooks=[(adapter.pattern_hook_name(1), first_key)]):
            edited = adapter.forward_logits(TOKENS)
    expected = hf_logits_attending_to_first_key(arch, 1)
    assert (expected - reference).abs().max() > 1e-2, "the edit must matter"
    torch.testing.assert_close(edited, expected, atol=1e-5, rtol=0)
    assert fired == ["blocks.1.attn.hook_pattern"], "the hook fires once per forward"
    check_attention_hooks_live(model)
    assert_no_hooks(model)


@needs_tl4
@pytest.mark.parametrize("arch", ARCHS)
def test_the_pattern_hook_sees_the_probabilities_and_their_gradient(
    arch: str, toy_tokenizer: Any
) -> None:
    hf_model = tiny_hf(arch)
    out = hf_model(TOKENS, output_attentions=True)
    for attention in out.attentions:
        attention.retain_grad()
    out.logits[:, -1, 3].sum().backward()
    model = from_hf_model(tiny_hf(arch), toy_tokenizer, tl_class="bridge")
    seen: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}
    leaf = torch.ones((), requires_grad=True)

    def keep(pattern: torch.Tensor, hook: Any) -> torch.Tensor:
        seen[hook.name] = pattern.detach()
        return pattern * leaf

    def keep_grad(grad: torch.Tensor, hook: Any) -> None:
        grads[hook.name] = grad.detach()

    adapter = adapt(model)
    names = [adapter.pattern_hook_name(layer) for layer in range(2)]
    with adapter.hooks([(n, keep) for n in names], [(n, keep_grad) for n in names]):
        adapter.forward_logits(TOKENS)[:, -1, 3].sum().backward()
    for layer, name in enumerate(names):
        torch.testing.assert_close(seen[name], out.attentions[layer].detach(), atol=1e-5, rtol=0)
        expected = out.attentions[layer].grad
        torch.testing.assert_close(grads[name], expected, atol=1e-5, rtol=1e-4)
    assert_no_hooks(model)


@needs_tl4
@pytest.mark.parametrize("arch", ARCHS)
def test_an_unrouted_bridge_is_refused_and_routing_makes_it_live(
    arch: str, toy_tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tl_build, "route_patterns", lambda model: False)
    model = from_hf_model(tiny_hf(arch), toy_tokenizer, tl_class="bridge")
    with pytest.raises(DeadAttentionHooksError, match="edit check failed") as info:
        check_attention_hooks_live(model)
    assert "route_patterns" in str(info.value)
    assert routed_family(model) is not None
    assert route_patterns(model)
    assert route_patterns(model)  # idempotent
    if routed_family(model) == "dropout-seam":
        seam = adapt(model).model.blocks[0].attn.original_component.attn_dropout
        assert isinstance(seam, PatternSeam)
        assert not isinstance(seam.dropout, PatternSeam)
    model2 = from_hf_model(tiny_hf(arch), toy_tokenizer, tl_class="bridge")
    route_patterns(model2)
    check_attention_hooks_live(model2)


@needs_tl4
def test_other_bridges_are_left_as_they_are(tl_model: Any) -> None:
    assert routed_family(tl_model) is None
    assert route_patterns(tl_model) is False


@needs_tl4
@pytest.mark.parametrize("arch", ARCHS)
def test_compression_engines_agree_on_routed_bridges(arch: str, toy_tokenizer: Any) -> None:
    """The key/value cache, the attention-mask engine and the hook-free fast path."""
    torch.set_num_threads(1)
    model = from_hf_model(tiny_hf(arch), toy_tokenizer, tl_class="bridge")
    prompts = toy_prompts(3, seed=2)
    every = run_compressed_icl(model, prompts, keep="all", engine="cache")
    plain = run_icl(model, prompts)
    assert (every.label_probs - plain.label_probs).abs().max() < 1e-5
    results = {e: run_compressed_icl(model, prompts, engine=e) for e in ("cache", "mask", "fast")}
    for engine in ("mask", "fast"):
        gap = (results[engine].label_probs - results["cache"].label_probs).abs().max()
        assert gap < 1e-5, (engine, float(gap))
    assert (results["cache"].label_probs - plain.label_probs).abs().max() > 1e-4
    assert_no_hooks(model)


@pytest.mark.skipif(TL4, reason="TransformerLens 3.9's bridge only")
@pytest.mark.parametrize("arch", ARCHS)
def test_tl39_bridge_is_not_routed_and_refused(arch: str, toy_tokenizer: Any) -> None:
    """TL 3.9's AttentionBridge has no ``accepts_pattern_fn`` seam: it would fire the hook a
    second time on the returned copy, so anchor_flow leaves it and the probe refuses it (TL
    3.9's HookedTransformer runs these families: test_architecture_matrix.py)."""
    model = from_hf_model(tiny_hf(arch), toy_tokenizer, tl_class="bridge")
    assert route_patterns(model) is False
    with pytest.raises(DeadAttentionHooksError, match="tl_class='hooked'"):
        check_attention_hooks_live(model)


@needs_tl4
@pytest.mark.parametrize("arch", ARCHS)
def test_saliency_recompute_equals_keep_on_routed_bridges(arch: str, toy_tokenizer: Any) -> None:
    """models.recompute checkpoints each block: the seam fires again in the recompute."""
    torch.set_num_threads(1)
    model = from_hf_model(tiny_hf(arch), toy_tokenizer, tl_class="bridge")
    prompts = toy_prompts(3, seed=2)
    keep = run_saliency(model, prompts, keep_maps=True, progress=False)
    again = run_saliency(model, prompts, keep_maps=True, memory="recompute", progress=False)
    assert keep.maps is not None
    assert float(keep.maps.abs().max()) > 0
    torch.testing.assert_close(again.maps, keep.maps, atol=1e-6, rtol=1e-5)
    assert_no_hooks(model)


@needs_tl4
@pytest.mark.parametrize("arch", ARCHS)
def test_the_null_model_of_a_routed_bridge_is_routed(arch: str, toy_tokenizer: Any) -> None:
    from anchor_flow.models.null import random_init_copy

    model = from_hf_model(tiny_hf(arch), toy_tokenizer, tl_class="bridge")
    null = random_init_copy(model, seed=1)
    assert routed_family(null) == routed_family(model)
    check_attention_hooks_live(null)
    with torch.no_grad():
        gap = (adapt(null).forward_logits(TOKENS) - adapt(model).forward_logits(TOKENS)).abs()
    assert float(gap.max()) > 1e-3, "the null model has new weights"
