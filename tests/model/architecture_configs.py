"""Tiny random-weight configurations of the architecture matrix (issue 23).

Two layers, d_model 32, 4 query heads (2 key/value heads where the family has grouped-query
attention), the toy tokenizer's 600-token vocabulary, eager attention. Shared by
``test_architecture_matrix.py``; nothing here runs anchor_flow.
"""

from __future__ import annotations

from typing import Any

VOCAB = 600
SPECIAL = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, pad_token_id=0)
DECODER = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=128,
    tie_word_embeddings=False,
    **SPECIAL,
)
GQA = dict(DECODER, num_key_value_heads=2)

# family -> (config class name in transformers, model class name, keyword arguments)
FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel",
             dict(n_layer=2, n_head=4, n_embd=32, n_positions=128, **SPECIAL)),
    "gptj": ("GPTJConfig", "GPTJForCausalLM",
             dict(n_layer=2, n_head=4, n_embd=32, n_positions=128, rotary_dim=4, **SPECIAL)),
    "gpt-neo": ("GPTNeoConfig", "GPTNeoForCausalLM",
                dict(num_layers=2, num_heads=4, hidden_size=32, max_position_embeddings=128,
                     attention_types=[[["global", "local"], 1]], window_size=8, **SPECIAL)),
    "gpt-neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(DECODER, rotary_pct=0.5)),
    "opt": ("OPTConfig", "OPTForCausalLM",
            dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=32, ffn_dim=64,
                 max_position_embeddings=128, word_embed_proj_dim=32, **SPECIAL)),
    "bloom": ("BloomConfig", "BloomForCausalLM",
              dict(n_layer=2, n_head=4, hidden_size=32, **SPECIAL)),
    "falcon": ("FalconConfig", "FalconForCausalLM",
               dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=32,
                    max_position_embeddings=128, **SPECIAL)),
    "llama": ("LlamaConfig", "LlamaForCausalLM", GQA),
    "mistral": ("MistralConfig", "MistralForCausalLM", GQA),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", GQA),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(GQA, head_dim=8)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(GQA, head_dim=8)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(GQA, head_dim=8, sliding_window=8)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(GQA, head_dim=8, sliding_window=8)),
    "phi": ("PhiConfig", "PhiForCausalLM", dict(DECODER, partial_rotary_factor=0.5)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", GQA),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", GQA),
    "stablelm": ("StableLmConfig", "StableLmForCausalLM", dict(GQA, partial_rotary_factor=0.5)),
}  # fmt: skip
