"""`anchor-flow run` computes what the paper computed: no BOS for GPT-2-style checkpoints and
the paper's order of aggregation over seeds, both recorded (issue 14)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import pandas as pd
import pytest
import torch

from anchor_flow import RunConfig, SaliencyResult, load_model, run_experiments
from anchor_flow.cli import main
from anchor_flow.icl.roles import Role

CONFIG = dict(task="toy-sentiment", seeds=(42, 43), n_examples=6, experiments=("saliency",))


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("faithful") / "toy"
    run_experiments(load_model("toy-gpt2"), out, RunConfig(**CONFIG), progress=False)
    return out


def test_results_json_records_the_resolved_bos_and_the_aggregation(default_run: Path) -> None:
    record = json.loads((default_run / "results.json").read_text())
    schema = resources.files("anchor_flow").joinpath("data/results.schema.json").read_text()
    jsonschema.validate(record, json.loads(schema))
    assert record["settings"]["prepend_bos"] == "auto"
    assert record["settings"]["seed_aggregation"] == "per_seed"
    assert record["settings_resolved"]["prepend_bos"] is False  # toy-gpt2 is GPT-2-style
    summary = record["experiments"]["saliency"]["summary"]
    assert summary["seed_aggregation"] == "per_seed"
    assert summary["settings"]["prepend_bos"] is False


def test_no_prompt_of_a_gpt2_style_run_starts_with_bos(default_run: Path) -> None:
    for seed in ("seed-42", "seed-43"):
        result = SaliencyResult.load(default_run / "saliency" / seed)
        assert not bool((result.roles[:, 0] == Role.BOS).any())


def test_flows_csv_is_the_mean_of_each_seeds_normalised_flows(default_run: Path) -> None:
    per_seed = [
        SaliencyResult.load(default_run / "saliency" / seed).flows().normalised()
        for seed in ("seed-42", "seed-43")
    ]
    expected = (per_seed[0] + per_seed[1]) / 2  # [flow, layer]
    frame = pd.read_csv(default_run / "flows.csv")
    assert set(frame["seed_aggregation"]) == {"per_seed"}
    for f, name in enumerate(("S_wp", "S_pq", "S_ww")):
        column = frame[frame.flow == name].sort_values("layer")["normalised"].to_numpy()
        assert column == pytest.approx(expected[f].numpy(), rel=1e-9)
    page = (default_run / "report.html").read_text()
    assert "Seed aggregation per_seed (the paper&#x27;s order)" in page or (
        "Seed aggregation per_seed (the paper's order)" in page
    )


def test_prepend_bos_yes_is_applied_recorded_and_left_behind(tmp_path: Path) -> None:
    model = load_model("toy-gpt2")
    config = RunConfig(**{**CONFIG, "seeds": (42,)}, prepend_bos="yes")
    record = run_experiments(model, tmp_path / "bos", config, progress=False)
    assert record["settings_resolved"]["prepend_bos"] is True
    result = SaliencyResult.load(tmp_path / "bos" / "saliency" / "seed-42")
    assert bool((result.roles[:, 0] == Role.BOS).all())
    from anchor_flow import run_icl, toy_prompts

    after = run_icl(model, toy_prompts(2), progress=False)  # the override ended with the run
    assert after.settings["prepend_bos"] is False


def test_cli_prepend_bos_and_seed_aggregation(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    argv = ["run", "--model", "toy-gpt2", "--task", "toy-sentiment", "--seeds", "42,43",
            "--n-examples", "4", "--experiments", "saliency", "--prepend-bos", "yes",
            "--seed-aggregation", "pooled", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((out / "results.json").read_text())
    assert record["settings"]["prepend_bos"] == "yes"
    assert record["settings_resolved"]["prepend_bos"] is True
    assert set(pd.read_csv(out / "flows.csv")["seed_aggregation"]) == {"pooled"}
    saliency = ["saliency", "--model", "toy-gpt2", "--task", "toy-sentiment", "--seeds", "42",
                "--n-examples", "3", "--prepend-bos", "no", "--out", str(tmp_path / "s"),
                "--quiet"]  # fmt: skip
    assert main(saliency) == 0
    summary = json.loads((tmp_path / "s" / "saliency.json").read_text())
    assert summary["settings"]["prepend_bos"] is False
    assert torch.tensor(summary["per_prompt"]).shape[0] == 3
