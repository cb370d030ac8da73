"""BOS as the checkpoint's own tokenizer does it, through ``load_model(...).tokenizer`` (issue 14).

TransformerLens rebuilds every tokenizer with ``add_bos_token=True``; the paper tokenized with
the plain Hugging Face tokenizer, so GPT-2-style inputs start without ``<|endoftext|>`` and
Llama-style ones with ``<s>``. The oracle is ``AutoTokenizer.from_pretrained(folder)(text)``
on the checkpoint folder itself, never anchor_flow's tokenization.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from anchor_flow import load_model, run_icl, tokenize_prompts
from anchor_flow.models import tl_build
from anchor_flow.models.loading import _builtin_folder
from anchor_flow.testbeds.demo import demo_prompts
from anchor_flow.testbeds.synthetic import synthetic_prompts
from anchor_flow.testbeds.toy import build_toy_tokenizer, toy_prompts
from conftest import TL_CLASSES, make_tiny_hf_gpt2, sentencepiece_tokenizer

PROMPTS = {
    "toy-gpt2": lambda: toy_prompts(3),
    "demo": lambda: demo_prompts(3, k=2),
    "planted-anchor": lambda: synthetic_prompts(3, k=2, seed=0),
    "planted-formatting": lambda: synthetic_prompts(3, k=2, seed=0),
}
# What each built-in checkpoint's own tokenizer.json does (read off the folders by hand).
OWN_BOS = {"toy-gpt2": False, "demo": True, "planted-anchor": True, "planted-formatting": True}


def _load(source, tl_class):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(source, tl_class=tl_class)


def _assert_inputs_are_the_checkpoints(model, folder, prompts, expect_bos):
    own = AutoTokenizer.from_pretrained(folder)
    batch = tokenize_prompts(prompts, model.tokenizer, label_token_policy="first")
    for row, prompt in enumerate(prompts):
        expected = own(prompt.text())["input_ids"]
        assert batch.tokens[row, : batch.lengths[row]].tolist() == expected
    assert (own("a")["input_ids"][0] == own.bos_token_id) is expect_bos
    assert batch.has_bos is expect_bos
    result = run_icl(model, prompts, label_token_policy="first", progress=False)
    assert result.settings["prepend_bos"] is expect_bos


@pytest.mark.parametrize("tl_class", TL_CLASSES)
@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_builtin_models_get_their_checkpoints_inputs(name, tl_class):
    model = _load(name, tl_class)
    prompts = PROMPTS[name]()
    _assert_inputs_are_the_checkpoints(model, _builtin_folder(name), prompts, OWN_BOS[name])


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2-style")
    make_tiny_hf_gpt2().save_pretrained(folder)
    build_toy_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama-style")
    tokenizer = sentencepiece_tokenizer("llama2-normalizer", model_max_length=256)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2, attn_implementation="eager",
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("tl_class", TL_CLASSES)
def test_gpt2_style_checkpoint_folder_gets_no_bos(gpt2_folder, tl_class):
    model = _load(gpt2_folder, tl_class)
    assert model.tokenizer("a")["input_ids"][0] == model.tokenizer.bos_token_id  # TL's copy
    _assert_inputs_are_the_checkpoints(model, gpt2_folder, toy_prompts(3), expect_bos=False)


@pytest.mark.parametrize("tl_class", TL_CLASSES)
def test_llama_style_checkpoint_folder_keeps_its_bos(llama_folder, tl_class):
    model = _load(llama_folder, tl_class)
    _assert_inputs_are_the_checkpoints(model, llama_folder, toy_prompts(3), expect_bos=True)


@pytest.mark.parametrize("tl_class", TL_CLASSES)
def test_a_tl_model_built_elsewhere_is_resolved_from_its_tokenizer_folder(gpt2_folder, tl_class):
    """A model anchor_flow did not load: its checkpoint is found from the tokenizer's path."""
    from transformers import GPT2LMHeadModel

    hf_model = GPT2LMHeadModel.from_pretrained(gpt2_folder, attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(gpt2_folder)
    build = tl_build.build_hooked_transformer if tl_class == "hooked" else tl_build.build_bridge
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build(hf_model, tokenizer, name="elsewhere")
    result = run_icl(model, toy_prompts(2), progress=False)
    assert result.settings["prepend_bos"] is False


def test_prepend_bos_true_still_forces_a_bos(gpt2_folder):
    model = _load(gpt2_folder, TL_CLASSES[-1])
    batch = tokenize_prompts(toy_prompts(2), model.tokenizer, prepend_bos=True)
    assert batch.has_bos
    assert batch.tokens[0, 0].item() == model.tokenizer.bos_token_id
    result = run_icl(model, toy_prompts(2), prepend_bos=True, progress=False)
    assert result.settings["prepend_bos"] is True
