"""tl_adapter on tiny models of every installed TL class: dims, hooks, forward variants,
freezing, the liveness probe, and tl_build's value-bias check."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch

from anchor_flow.errors import DeadAttentionHooksError, UnsupportedModelError
from anchor_flow.models import guards, tl_adapter
from anchor_flow.models.guards import check_attention_hooks_live, frozen
from anchor_flow.models.tl_adapter import adapt
from anchor_flow.models.tl_build import warn_if_value_biases_folded
from conftest import TL_CLASSES, assert_no_hooks, fold_value_biases

TOKENS = torch.tensor([[5, 17, 300, 42, 7, 99, 250], [1, 2, 3, 4, 5, 6, 7]])
POSITIONS = torch.tensor([3, 6])


def test_adapter_dims(tl_model: Any) -> None:
    a = adapt(tl_model)
    assert (a.n_layers, a.n_heads, a.n_key_value_heads) == (2, 4, 4)
    assert (a.d_model, a.d_head, a.d_vocab, a.n_ctx) == (32, 8, 600, 128)
    assert a.kind in TL_CLASSES
    assert adapt(a) is a
    assert a.device == torch.device("cpu")
    assert a.dtype == torch.float32
    assert a.tokenizer is not None


def test_hook_names_exist_and_parse(tl_model: Any) -> None:
    a = adapt(tl_model)
    for layer in range(a.n_layers):
        for name in (
            a.pattern_hook_name(layer),
            a.scores_hook_name(layer),
            a.q_hook_name(layer),
            a.k_hook_name(layer),
            a.v_hook_name(layer),
        ):
            assert name in tl_model.hook_dict
            assert a.layer_of_hook(name) == layer


def test_hook_name_errors(tl_model: Any) -> None:
    a = adapt(tl_model)
    with pytest.raises(UnsupportedModelError, match="not a block hook"):
        a.layer_of_hook("hook_embed")
    with pytest.raises(UnsupportedModelError, match="layer 2 is out of range"):
        a.pattern_hook_name(2)


def test_adapt_refuses_other_objects(tiny_hf_gpt2: Any) -> None:
    with pytest.raises(UnsupportedModelError, match=r"GPT2LMHeadModel; expected a TransformerLens"):
        adapt(tiny_hf_gpt2)
    with pytest.raises(UnsupportedModelError, match=r"got a builtins\.str"):
        adapt("gpt2")


def test_forward_logits_match_hf(tl_model: Any) -> None:
    from conftest import make_tiny_hf_gpt2

    reference = make_tiny_hf_gpt2()(TOKENS).logits
    torch.testing.assert_close(adapt(tl_model).forward_logits(TOKENS), reference, atol=1e-4, rtol=0)


def test_final_logits_equal_full_logits_at_positions(tl_model: Any) -> None:
    a = adapt(tl_model)
    with torch.no_grad():
        full = a.forward_logits(TOKENS)[torch.arange(2), POSITIONS]
        final = a.final_logits(TOKENS, POSITIONS)
    assert final.shape == (2, a.d_vocab)
    torch.testing.assert_close(final, full, atol=1e-5, rtol=0)


def test_final_logits_fire_forward_and_backward_hooks(tl_model: Any) -> None:
    a = adapt(tl_model)
    grads: dict[int, torch.Tensor] = {}
    ones = [torch.ones((), requires_grad=True) for _ in range(a.n_layers)]

    def fwd(pattern: torch.Tensor, hook: Any) -> torch.Tensor:
        return pattern * ones[a.layer_of_hook(hook.name)]

    def bwd(grad: torch.Tensor, hook: Any) -> None:
        grads[a.layer_of_hook(hook.name)] = grad.detach()

    names = [a.pattern_hook_name(layer) for layer in range(a.n_layers)]
    with (
        frozen(a),
        a.hooks(fwd_hooks=[(n, fwd) for n in names], bwd_hooks=[(n, bwd) for n in names]),
    ):
        a.final_logits(TOKENS, POSITIONS).sum().backward()
    assert sorted(grads) == list(range(a.n_layers))
    assert all(g.shape == (2, a.n_heads, 7, 7) and g.abs().sum() > 0 for g in grads.values())
    # Oracle: the same multiplier grads from the full forward.
    full_ones = [torch.ones((), requires_grad=True) for _ in range(a.n_layers)]

    def fwd_full(pattern: torch.Tensor, hook: Any) -> torch.Tensor:
        return pattern * full_ones[a.layer_of_hook(hook.name)]

    with frozen(a), a.hooks(fwd_hooks=[(n, fwd_full) for n in names]):
        a.forward_logits(TOKENS)[torch.arange(2), POSITIONS].sum().backward()
    for o, f in zip(ones, full_ones, strict=True):
        torch.testing.assert_close(o.grad, f.grad, atol=1e-5, rtol=1e-5)
    assert_no_hooks(tl_model)


def _flags(model: Any) -> tuple[list[bool], list[bool]]:
    modules = tl_adapter.model_modules(model)
    return [m.training for m in modules], [
        p.requires_grad for p in tl_adapter.model_parameters(model)
    ]


def test_frozen_restores_flags(tl_model: Any) -> None:
    tl_model.train()
    params = tl_adapter.model_parameters(tl_model)
    params[0].requires_grad_(False)
    before = _flags(tl_model)
    with frozen(tl_model) as model:
        assert model is tl_model
        assert not any(p.requires_grad for p in params)
        assert not any(m.training for m in tl_adapter.model_modules(tl_model))
    assert _flags(tl_model) == before
    assert tl_model.training
    assert not params[0].requires_grad
    assert params[1].requires_grad


def test_frozen_restores_flags_after_exception(tl_model: Any) -> None:
    tl_model.train()
    before = _flags(tl_model)
    with pytest.raises(RuntimeError, match="boom"), frozen(tl_model):
        raise RuntimeError("boom")
    assert _flags(tl_model) == before


def test_hooks_leave_nothing_after_exception(tl_model: Any) -> None:
    a = adapt(tl_model)
    fired = []
    hook = (a.pattern_hook_name(0), lambda pattern, hook: fired.append(1))

    def run_then_fail() -> None:
        with a.hooks(fwd_hooks=[hook], bwd_hooks=[hook]):
            a.forward_logits(TOKENS)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_then_fail()
    assert fired
    assert_no_hooks(tl_model)


def test_final_logits_leave_no_hooks_after_exception(tl_model: Any) -> None:
    a = adapt(tl_model)

    def fail(pattern: torch.Tensor, hook: Any) -> None:
        raise RuntimeError("inside")

    with (
        pytest.raises(RuntimeError, match="inside"),
        a.hooks(fwd_hooks=[(a.pattern_hook_name(1), fail)]),
    ):
        a.final_logits(TOKENS, POSITIONS)
    assert_no_hooks(tl_model)


def test_liveness_probe_passes_on_gpt2(tl_model: Any) -> None:
    check_attention_hooks_live(tl_model)
    check_attention_hooks_live(adapt(tl_model))  # cached
    assert guards._LIVENESS[tl_model] is None
    assert_no_hooks(tl_model)


def test_probe_edit_changes_logits(tl_model: Any) -> None:
    """Effect: the probe's edit (all mass on key 0) really changes the logits on GPT-2."""
    a = adapt(tl_model)

    def to_first_key(pattern: torch.Tensor, hook: Any) -> torch.Tensor:
        edited = torch.zeros_like(pattern)
        edited[..., 0] = 1.0
        return edited

    with torch.no_grad():
        base = a.forward_logits(TOKENS)
        with a.hooks(fwd_hooks=[(a.pattern_hook_name(0), to_first_key)]):
            edited = a.forward_logits(TOKENS)
    assert (edited - base)[:, 1:].abs().max() > 1e-3
    torch.testing.assert_close(edited[:, 0], base[:, 0])  # row 0 already attends only to key 0


def _tiny_hf(arch: str) -> Any:
    import transformers

    common = dict(vocab_size=600, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    configs = {
        "GPTJForCausalLM": transformers.GPTJConfig(
            n_layer=2, n_head=4, n_embd=32, n_positions=64, rotary_dim=4, **common
        ),
        "GPTNeoForCausalLM": transformers.GPTNeoConfig(
            num_layers=2,
            num_heads=4,
            hidden_size=32,
            max_position_embeddings=64,
            attention_types=[[["global", "local"], 1]],
            window_size=16,
            **common,
        ),
        "OPTForCausalLM": transformers.OPTConfig(
            num_hidden_layers=2,
            num_attention_heads=4,
            hidden_size=32,
            ffn_dim=64,
            max_position_embeddings=64,
            word_embed_proj_dim=32,
            **common,
        ),
    }
    config = configs[arch]
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    return getattr(transformers, arch)(config).eval()


@pytest.mark.bridge
@pytest.mark.parametrize("arch", ["GPTJForCausalLM", "GPTNeoForCausalLM", "OPTForCausalLM"])
def test_liveness_probe_refuses_hf_delegated_bridges(
    arch: str, toy_tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from anchor_flow.models import tl_build
    from anchor_flow.models.loading import from_hf_model

    # anchor_flow routes these families' attention (test_pattern_routing.py); without it:
    monkeypatch.setattr(tl_build, "route_patterns", lambda model: False)
    model = from_hf_model(_tiny_hf(arch), toy_tokenizer, tl_class="bridge")
    with pytest.raises(DeadAttentionHooksError) as info:
        check_attention_hooks_live(model)
    message = str(info.value)
    assert "edit check failed" in message
    assert "blocks.0.attn.hook_pattern" in message
    assert "delegates attention to Hugging Face" in message
    assert "tl_class='hooked'" in message
    assert "transformer-lens 3.9" in message
    with pytest.raises(DeadAttentionHooksError, match="edit check failed"):
        check_attention_hooks_live(model)  # cached verdict
    assert_no_hooks(model)


@pytest.mark.hooked
@pytest.mark.skipif(
    "hooked" not in TL_CLASSES, reason="HookedTransformer needs transformer-lens 3.x"
)
@pytest.mark.parametrize("arch", ["GPTJForCausalLM", "GPTNeoForCausalLM", "OPTForCausalLM"])
def test_hooked_transformer_has_live_hooks_where_bridge_does_not(
    arch: str, toy_tokenizer: Any
) -> None:
    from anchor_flow.models.loading import from_hf_model

    hf_model = _tiny_hf(arch)
    reference = hf_model(TOKENS).logits
    model = from_hf_model(hf_model, toy_tokenizer, tl_class="hooked")
    torch.testing.assert_close(adapt(model).forward_logits(TOKENS), reference, atol=1e-4, rtol=0)
    check_attention_hooks_live(model)


def test_no_warning_on_unprocessed_weights(tl_model: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_value_biases_folded(tl_model) is False


@pytest.mark.hooked
@pytest.mark.skipif(
    "hooked" not in TL_CLASSES, reason="HookedTransformer needs transformer-lens 3.x"
)
def test_warns_on_folded_value_biases_hooked(tiny_hf_gpt2: Any, toy_tokenizer: Any) -> None:
    from anchor_flow.models.loading import from_hf_model

    model = from_hf_model(tiny_hf_gpt2, toy_tokenizer, tl_class="hooked")
    fold_value_biases(model)
    with pytest.warns(
        UserWarning, match=r"value biases appear folded.*from_pretrained_no_processing"
    ):
        assert warn_if_value_biases_folded(model) is True


@pytest.mark.bridge
def test_warns_on_folded_value_biases_bridge_compatibility_mode(
    tiny_hf_gpt2: Any, toy_tokenizer: Any
) -> None:
    from anchor_flow.models.loading import from_hf_model

    model = from_hf_model(tiny_hf_gpt2, toy_tokenizer, tl_class="bridge")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.enable_compatibility_mode(disable_warnings=True)
    with pytest.warns(UserWarning, match="enable_compatibility_mode"):
        assert warn_if_value_biases_folded(model) is True
