"""Which role a straddling token gets does not change the paper's measurements (issue 23).

On GPT-4-style BPE (here Llama-3's real tokenizer on a tiny random Llama) a TREC question's
final ``"?"`` merges with the newline of ``"\\nAnswer Type:"``; anchor_flow gives that token
the text's role. The same batch with those tokens made FORMAT instead must give the same
three flows, isolation, deep-layer classifier and compression results; only the
role-to-role matrix moves (the effect check: the two batches are really different).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from anchor_flow import load_model, run_deep, run_isolation, run_saliency, tokenize_prompts
from anchor_flow.applications.compression.baselines import run_compression
from anchor_flow.applications.compression.positions import (
    anchor_positions,
    random_anchor_positions,
)
from anchor_flow.icl.prompts import Example
from anchor_flow.icl.roles import Role
from anchor_flow.icl.sampling import task_prompts
from anchor_flow.icl.tasks import get_task
from anchor_flow.models.tl_adapter import adapt
from conftest import assert_no_hooks
from real_tokenizers import TASK_TEXTS, save_tiny_model


@pytest.fixture(scope="module")
def llama3_model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = save_tiny_model("llama3", tmp_path_factory.mktemp("tiny") / "llama3", "llama")
    model = load_model(str(folder))
    yield model
    assert_no_hooks(model)


@pytest.fixture(scope="module")
def batches(llama3_model: Any) -> tuple[Any, Any]:
    task = get_task("trec")
    examples = [Example(t, c) for t, c in TASK_TEXTS["trec"]]
    prompts = task_prompts(task, examples, examples, seed=42, n_examples=4)
    as_text = tokenize_prompts(prompts, llama3_model.tokenizer, label_token_policy="first")
    straddle = as_text.straddle_mask
    assert bool((as_text.roles[straddle] == Role.TEXT).all())
    assert int(straddle.sum()) >= 4 * 6  # every demonstration's "?\n" (and some queries')
    as_format = dataclasses.replace(
        as_text, roles=as_text.roles.masked_fill(straddle, int(Role.FORMAT))
    )
    return as_text, as_format


def _same(first: Any, second: Any, skip: tuple[str, ...] = ("settings",)) -> None:
    for f in dataclasses.fields(first):
        if f.name in skip:
            continue
        a, b = getattr(first, f.name), getattr(second, f.name)
        if isinstance(a, torch.Tensor):
            assert torch.allclose(a.double(), b.double(), rtol=1e-6, atol=1e-9), f.name
        elif dataclasses.is_dataclass(a):
            _same(a, b, skip)
        else:
            assert a == b, f.name


def test_flows_do_not_depend_on_the_straddling_role(llama3_model, batches) -> None:
    as_text, as_format = batches
    first = run_saliency(llama3_model, as_text, batch_size=4, progress=False)
    second = run_saliency(llama3_model, as_format, batch_size=4, progress=False)
    assert torch.allclose(first.flows().values, second.flows().values, rtol=1e-6, atol=1e-12)
    assert torch.allclose(first.label_probs, second.label_probs)
    # Effect: the role-to-role matrix does move (the text columns gain the merged tokens).
    assert not torch.equal(first.group_counts, second.group_counts)


def test_isolation_and_deep_do_not_depend_on_the_straddling_role(llama3_model, batches):
    runs = [run_isolation(llama3_model, b, layer_counts=(1,), seed=3, progress=False)
            for b in batches]  # fmt: skip
    _same(*runs)
    _same(*(run_deep(llama3_model, b, progress=False) for b in batches))


def test_compression_does_not_depend_on_the_straddling_role(llama3_model, batches) -> None:
    as_text, as_format = batches
    for row in range(len(as_text)):
        kept = anchor_positions(as_text, row)
        assert torch.equal(kept, anchor_positions(as_format, row))
        assert bool(as_text.straddle_mask[row, kept].any())  # the newline Hidden_anchor keeps
        drawn = random_anchor_positions(as_text, row, seed=1, prompt_id=row)
        assert torch.equal(drawn, random_anchor_positions(as_format, row, seed=1, prompt_id=row))
    methods = ("hidden_random", "hidden_random_top", "hidden_anchor")
    # A HookedTransformer's rotary model cannot continue positions after a pruned cache.
    policy = "compact" if adapt(llama3_model).kind == "hooked" else "original"
    results = [run_compression(llama3_model, b, methods=methods, n_top_trials=2, seed=1,
                               position_policy=policy) for b in batches]  # fmt: skip
    _same(*results)


def test_the_tiny_models_folder_is_the_real_tokenizer(llama3_model, tmp_path: Path) -> None:
    tokens = llama3_model.tokenizer("Question: Why ?\nAnswer Type:", add_special_tokens=False)
    pieces = llama3_model.tokenizer.convert_ids_to_tokens(tokens["input_ids"])
    assert "Ġ?Ċ" in pieces
