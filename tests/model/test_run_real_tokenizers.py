"""`anchor-flow run` with every experiment on tiny random models with today's vocabularies
(issue 23): Llama-3's and Qwen3's real tokenizers, the paper's tasks on hand-written texts
whose questions and sentences end in punctuation that merges with the template's newline.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from anchor_flow.cli import main
from anchor_flow.models.tl_adapter import hooked_transformer_class
from anchor_flow.run.config import EXPERIMENTS
from real_tokenizers import save_tiny_model, write_task_data


@pytest.mark.parametrize(("family", "arch", "task"), [
    ("llama3", "llama", "sst2"), ("qwen3", "qwen3", "trec"),
])  # fmt: skip
def test_every_experiment_runs_on_a_gpt4_style_tokenizer(family, arch, task, tmp_path: Path):
    folder = save_tiny_model(family, tmp_path / "model", arch)
    data = write_task_data(tmp_path / "data", task, min_per_class=5)
    out = tmp_path / "out"
    argv = ["run", "--model", str(folder), "--task", task, "--data-dir", str(data),
            "--seeds", "42", "--n-examples", "6", "--top-trials", "2", "--epochs", "1",
            "--n-components", "2", "--null-model", "none", "--quiet",
            "--out", str(out)]  # fmt: skip
    if hooked_transformer_class() is not None:  # TL 3.9 loads a HookedTransformer, whose
        # rotary models cannot continue positions after a pruned cache (a refusal of its own)
        argv += ["--position-policy", "compact"]
    assert main(argv) == 0
    record = json.loads((out / "results.json").read_text())
    schema = resources.files("anchor_flow").joinpath("data/results.schema.json").read_text()
    jsonschema.validate(record, json.loads(schema))
    assert {name: e["status"] for name, e in record["experiments"].items()} == dict.fromkeys(
        EXPERIMENTS, "complete"
    )
    resolved = record["settings_resolved"]
    assert (resolved["label_token_policy"], resolved["label_token_policy_from"]) == (
        "first",
        "task",
    )
    fixed = resolved["straddling_tokens_fixed"]["seed-42"]
    per_example = resolved["straddling_tokens_per_example"]["seed-42"]
    assert fixed > 0
    assert resolved["label_word_tokens"][" Abbreviation" if task == "trec" else " Negative"] == (
        3 if task == "trec" else 1
    )  # docs/tokenizers.md's table: " Abbreviation" is 3 tokens on Llama-3 and Qwen3
    assert per_example > 0
    report = html.unescape((out / "report.html").read_text(encoding="utf-8"))
    assert f"{per_example} token positions of saliency's prompts" in report
    assert f"{fixed} token positions of the fixed-demonstration prompts" in report
