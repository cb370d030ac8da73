"""load_model / from_hf_model: local folders, built-in toy models, and every error path."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from anchor_flow.errors import ModelLoadError
from anchor_flow.models import loading, tl_adapter
from anchor_flow.models.loading import builtin_model_names, load_model, register_builtin_model
from conftest import TL_CLASSES, assert_no_hooks

TOKENS = torch.tensor([[5, 17, 300, 42, 7, 99, 250, 3], [1, 2, 3, 4, 5, 6, 7, 8]])


@pytest.fixture
def checkpoint_folder(tmp_path: Path, tiny_hf_gpt2: Any, toy_tokenizer: Any) -> Path:
    folder = tmp_path / "tiny-gpt2"
    tiny_hf_gpt2.save_pretrained(folder)
    toy_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ANCHOR_FLOW_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("tl_class", TL_CLASSES)
def test_local_folder_matches_hf_logits(
    checkpoint_folder: Path, tiny_hf_gpt2: Any, tl_class: str
) -> None:
    reference = tiny_hf_gpt2(TOKENS).logits
    model = load_model(checkpoint_folder, tl_class=tl_class)  # type: ignore[arg-type]
    adapter = tl_adapter.adapt(model)
    assert adapter.kind == tl_class
    assert adapter.name == "tiny-gpt2"
    torch.testing.assert_close(adapter.forward_logits(TOKENS), reference, atol=1e-4, rtol=0)
    assert len(adapter.tokenizer) == 600
    assert not model.training
    assert_no_hooks(model)


def test_auto_picks_hooked_on_tl3_and_bridge_on_tl4(checkpoint_folder: Path) -> None:
    expected = "hooked" if "hooked" in TL_CLASSES else "bridge"
    assert tl_adapter.adapt(load_model(str(checkpoint_folder))).kind == expected


def test_tl_model_is_returned_as_is(tl_model: Any) -> None:
    assert load_model(tl_model) is tl_model


@pytest.mark.parametrize("tl_class", TL_CLASSES)
def test_toy_gpt2_loads_deterministically(cache_dir: Path, tl_class: str) -> None:
    first = load_model("toy-gpt2", tl_class=tl_class)  # type: ignore[arg-type]
    adapter = tl_adapter.adapt(first)
    assert (adapter.n_layers, adapter.n_heads, adapter.d_model) == (4, 4, 64)
    assert (adapter.n_ctx, adapter.d_vocab) == (256, 600)
    assert (cache_dir / "toy-gpt2" / "config.json").exists()
    with torch.no_grad():
        logits = adapter.forward_logits(TOKENS)
        again = tl_adapter.adapt(load_model("toy-gpt2", tl_class=tl_class)).forward_logits(TOKENS)  # type: ignore[arg-type]
        shutil.rmtree(cache_dir)
        rebuilt = tl_adapter.adapt(load_model("toy-gpt2", tl_class=tl_class))  # type: ignore[arg-type]
        torch.testing.assert_close(again, logits, atol=0, rtol=0)
        torch.testing.assert_close(rebuilt.forward_logits(TOKENS), logits, atol=0, rtol=0)
    assert not list(cache_dir.glob(".toy-gpt2-*")), "temporary build folders left behind"


def test_register_refuses_duplicates() -> None:
    with pytest.raises(ModelLoadError, match="'toy-gpt2' is already registered"):
        register_builtin_model("toy-gpt2", lambda folder: None)
    assert "toy-gpt2" in builtin_model_names()


def test_new_builtin_is_loadable(
    cache_dir: Path, tiny_hf_gpt2: Any, toy_tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loading, "_BUILTIN_MODELS", dict(loading._BUILTIN_MODELS))

    def write(folder: Path) -> None:
        tiny_hf_gpt2.save_pretrained(folder)
        toy_tokenizer.save_pretrained(folder)

    register_builtin_model("tiny-test", write)
    assert "tiny-test" in builtin_model_names()
    assert tl_adapter.adapt(load_model("tiny-test")).n_layers == 2


def test_unknown_name_offline() -> None:
    with pytest.raises(ModelLoadError) as info:
        load_model("no-such-org/no-such-model-xyz")
    message = str(info.value)
    assert "'no-such-org/no-such-model-xyz' is not a built-in model (" in message
    for name in builtin_model_names():
        assert name in message
    assert "not reachable" in message
    assert "local checkpoint folder" in message


def test_missing_path() -> None:
    with pytest.raises(ModelLoadError, match=r"'/no/such/folder' does not exist; expected"):
        load_model("/no/such/folder")


def test_folder_without_tokenizer(tmp_path: Path, tiny_hf_gpt2: Any) -> None:
    tiny_hf_gpt2.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match=r"tokenizer"):
        load_model(tmp_path)


def test_folder_without_weights(tmp_path: Path, tiny_hf_gpt2: Any, toy_tokenizer: Any) -> None:
    tiny_hf_gpt2.config.save_pretrained(tmp_path)
    toy_tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match=r"has no weights \(no \*\.safetensors or \*\.bin\)"):
        load_model(tmp_path)


def test_folder_without_config(tmp_path: Path, toy_tokenizer: Any) -> None:
    toy_tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match=r"folder without config\.json"):
        load_model(tmp_path)


@pytest.mark.skipif("hooked" in TL_CLASSES, reason="HookedTransformer exists on TL 3.x")
def test_hooked_on_tl4_explains_removal(checkpoint_folder: Path) -> None:
    with pytest.raises(
        ModelLoadError, match=r"HookedTransformer was removed in transformer-lens 4\.0"
    ):
        load_model(checkpoint_folder, tl_class="hooked")


def test_bad_tl_class() -> None:
    # Under pytest the runtime type checker refuses the Literal first; check our own message.
    with pytest.raises(
        ModelLoadError, match=r"tl_class='hf'; expected 'auto', 'hooked' or 'bridge'"
    ):
        loading._resolve_tl_class("hf")


def test_non_model_object(tiny_hf_gpt2: Any) -> None:
    with pytest.raises(ModelLoadError, match=r"got a int; expected a TransformerLens model"):
        load_model(3)
    with pytest.raises(ModelLoadError, match=r"GPT2LMHeadModel.*use from_hf_model"):
        load_model(tiny_hf_gpt2)


def test_from_hf_model_refuses_non_hf_object(toy_tokenizer: Any) -> None:
    with pytest.raises(ModelLoadError, match=r"got a Linear; expected a Hugging Face"):
        loading.from_hf_model(torch.nn.Linear(2, 2), toy_tokenizer)
