"""Real checkpoints: GPT-2 small through load_model, skipped when its weights are not cached."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch

from anchor_flow.models import guards, tl_adapter, tl_build
from anchor_flow.models.loading import load_model

pytestmark = pytest.mark.slow


def _gpt2_cached() -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = [
        try_to_load_from_cache("gpt2", filename)
        for filename in ("config.json", "model.safetensors", "tokenizer.json")
    ]
    return all(isinstance(path, str) for path in found)


@pytest.fixture(scope="module")
def gpt2() -> Any:
    if not _gpt2_cached():
        pytest.skip("GPT-2 weights are not in the local Hugging Face cache (offline run)")
    return load_model("gpt2")


def test_gpt2_dims_and_live_hooks(gpt2: Any) -> None:
    adapter = tl_adapter.adapt(gpt2)
    assert (adapter.n_layers, adapter.n_heads, adapter.d_model, adapter.d_vocab) == (
        12,
        12,
        768,
        50257,
    )
    guards.check_attention_hooks_live(gpt2)


def test_gpt2_unprocessed_and_sensible(gpt2: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tl_build.warn_if_value_biases_folded(gpt2) is False
    adapter = tl_adapter.adapt(gpt2)
    tokens = adapter.tokenizer(" The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = adapter.final_logits(tokens, torch.tensor([tokens.shape[1] - 1]))
        full = adapter.forward_logits(tokens)[:, -1]
    torch.testing.assert_close(logits, full, atol=1e-4, rtol=0)
    # A real checkpoint, not random weights: English text is far below the ln(50257) ~ 10.8
    # nats of a uniform guess.
    text = adapter.tokenizer(
        "The quick brown fox jumps over the lazy dog. It was a sunny day in the park.",
        return_tensors="pt",
    )["input_ids"]
    with torch.no_grad():
        all_logits = adapter.forward_logits(text)
    loss = torch.nn.functional.cross_entropy(all_logits[0, :-1], text[0, 1:])
    assert loss < 5.0


def _sst2_cached() -> bool:
    from anchor_flow.errors import AnchorFlowError
    from anchor_flow.icl.data import load_task_data

    try:
        load_task_data("sst2")
    except AnchorFlowError:
        return False
    return True


def test_main_job_on_gpt2_and_sst2(gpt2: Any, tmp_path) -> None:
    """The paper's protocol end to end on a real checkpoint and the real SST-2 (when cached)."""
    if not _sst2_cached():
        pytest.skip("SST-2 is not in the local datasets cache (offline run)")
    from anchor_flow import RunConfig, run_experiments

    config = RunConfig(task="sst2", seeds=(42,), n_examples=16, top_trials=2,
                       reweighting_epochs=1)  # fmt: skip
    record = run_experiments(gpt2, tmp_path, config, progress=False)
    assert all(e["status"] == "complete" for e in record["experiments"].values())
    accuracy = record["experiments"]["saliency"]["summary"]["accuracy"]["seed-42"]
    from anchor_flow.analysis.saliency.result import SaliencyResult

    raw = SaliencyResult.load(tmp_path / "saliency" / "seed-42")
    assert accuracy == pytest.approx(
        float((raw.label_probs.argmax(-1) == raw.gold).double().mean())
    )
    assert (tmp_path / "report.html").stat().st_size > 1_000_000  # plotly.js inline
