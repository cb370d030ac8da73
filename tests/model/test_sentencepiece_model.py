"""Saliency end to end on a tiny Llama model with a Llama-2-style (SentencePiece) tokenizer.

The tokenizer adds "▁" to every call, so its prompts are tokenized from character offsets
(anchor_flow.icl.alignment); the model is a random-config LlamaForCausalLM (rotary positions, RMS
norm, gated MLP) wrapped by each TransformerLens class the installed TL offers.
"""

from __future__ import annotations

import pytest
import torch

from anchor_flow import run_saliency, tokenize_prompts, toy_prompts
from anchor_flow.analysis.edges import FINE_GROUPS
from anchor_flow.icl.roles import Role
from anchor_flow.models.loading import from_hf_model
from anchor_flow.models.tl_adapter import adapt
from conftest import TL_CLASSES, assert_no_hooks, sentencepiece_tokenizer


def tiny_llama(tokenizer, tl_class: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        attn_implementation="eager",
        initializer_range=0.1,  # attention that matters: saliency far from 0
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        hf_model = LlamaForCausalLM(config).eval()
    return from_hf_model(hf_model, tokenizer, tl_class=tl_class)


@pytest.mark.parametrize("tl_class", TL_CLASSES)
def test_saliency_runs_on_a_llama_model_with_a_sentencepiece_tokenizer(tl_class):
    tokenizer = sentencepiece_tokenizer("llama2-normalizer", model_max_length=256)
    model = tiny_llama(tokenizer, tl_class)
    adapter = adapt(model)
    if tl_class == "hooked":
        cfg = model.cfg
        assert (cfg.positional_embedding_type, cfg.normalization_type) == ("rotary", "RMS")
        assert cfg.gated_mlp
        assert cfg.d_vocab == len(tokenizer)
    prompts = toy_prompts(5, shots_per_class=1, seed=3)
    batch = tokenize_prompts(prompts, adapter.tokenizer, max_length=adapter.n_ctx)
    assert (batch.roles[:, 0] == Role.BOS).all()
    negative, positive = tokenizer.convert_tokens_to_ids(["▁Negative", "▁Positive"])
    assert batch.label_token_ids.tolist() == [[negative, positive]] * len(prompts)

    result = run_saliency(model, prompts, batch_size=2, progress=False)

    assert torch.equal(result.roles, batch.roles)
    assert result.str_tokens == batch.str_tokens
    label_to_target = FINE_GROUPS.index("target <- label (earlier)")
    assert (result.group_counts[:, label_to_target] == 2).all()  # two demonstrations each
    assert (result.group_sums[:, :, label_to_target] > 0).all()
    assert result.flows().normalised().shape == (3, 2)
    # Oracle: the label probabilities read the in-prompt "▁Negative"/"▁Positive" logits.
    with torch.no_grad():
        logits = adapter.forward_logits(batch.tokens)
    final = logits[torch.arange(len(batch)), batch.target_position]
    expected = final.gather(1, batch.label_token_ids).softmax(-1)
    assert torch.allclose(result.label_probs.double(), expected.double(), atol=1e-5)
    assert_no_hooks(model)
