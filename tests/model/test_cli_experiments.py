"""`anchor-flow isolation` and `deep` on the built-in models: outputs, report, errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from anchor_flow.analysis.deep import DeepResult
from anchor_flow.analysis.isolation import IsolationResult
from anchor_flow.cli import main

# Same on every TransformerLens line, so not run again under 3.9: the subject is the isolation and
# deep commands' files, report and errors, above the model interface that the tl_class-parametrized
# tests and test_run.py check on every installed line (docs/development.md, "Test tiers").
pytestmark = pytest.mark.same_on_tl_lines

TOY = ["--model", "toy-gpt2", "--task", "toy-sentiment"]
QUICK = [*TOY, "--n-examples", "6", "--seeds", "42,43", "--quiet"]


def test_isolation_and_deep_commands_write_results_and_one_report(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["isolation", "--out", str(out), "--layer-counts", "1", *QUICK]) == 0, (
        capsys.readouterr().err
    )
    summary = json.loads((out / "isolation.json").read_text())
    assert summary["schema"] == "anchor_flow.isolation/1"
    assert summary["runs"] == ["seed-42", "seed-43"]
    assert summary["n_prompts"] == 12
    assert summary["settings"]["demonstrations"] == "fixed"
    assert summary["settings"]["top_k"] == 5
    means = pd.DataFrame(summary["means"])
    assert set(means["ci_over"]) == {"runs"}
    assert len(means) == 4 * 3 + 1  # (label, random) x (first, last) x 3 metrics + baseline
    assert IsolationResult.load(out / "isolation").n_runs == 2
    assert set(pd.read_csv(out / "isolation.csv")["metric"]) == {
        "label_loyalty", "word_loyalty", "accuracy",
    }  # fmt: skip
    assert main(["deep", "--out", str(out), *QUICK]) == 0, capsys.readouterr().err
    deep = json.loads((out / "deep.json").read_text())
    assert deep["schema"] == "anchor_flow.deep/1"
    assert len(deep["layers"]) == 4
    assert DeepResult.load(out / "deep").n_prompts == 12
    assert len(pd.read_csv(out / "deep.csv")) == 4
    report = (out / "report.html").read_text()
    assert "Isolating label words (shallow vs deep)" in report
    assert "Deep layers: AUCROC_l and R_l" in report
    # A saliency run in the same folder keeps the other sections and adds the overlay.
    args = ["saliency", "--out", str(out), *TOY, "--n-examples", "3", "--seeds", "42", "--quiet"]
    assert main(args) == 0
    report = (out / "report.html").read_text()
    for heading in ("Relative information flow per layer", "Isolating label words",
                    "Saliency flows and AUCROC_l"):  # fmt: skip
        assert heading in report
    assert not list(out.rglob("*.tmp"))


def test_planted_model_and_synthetic_task_through_the_cli(tmp_path, capsys):
    out = tmp_path / "planted"
    args = ["--model", "planted-anchor", "--task", "synthetic-k3", "--n-examples", "40",
            "--seeds", "1", "--quiet", "--out", str(out), "--batch-size", "40"]  # fmt: skip
    assert main(["isolation", "--controls", "label", *args]) == 0, capsys.readouterr().err
    means = pd.DataFrame(json.loads((out / "isolation.json").read_text())["means"])
    first = means.query("position == 'first' and metric == 'label_loyalty'")["mean"]
    assert float(first.iloc[0]) < 0.7
    assert main(["deep", *args]) == 0, capsys.readouterr().err
    layers = json.loads((out / "deep.json").read_text())["layers"]
    assert layers[1]["auc_roc"] >= 0.9


def test_bad_experiment_options_end_with_one_line_errors(tmp_path, capsys):
    out = str(tmp_path / "bad")
    code = main(["isolation", "--out", out, "--layer-counts", "9", *QUICK])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert "layer_counts [9] out of range; expected 1..4" in err
    for option, value in (("--layer-counts", "0"), ("--positions", "middle"), ("--controls", "x")):
        with pytest.raises(SystemExit, match="2"):
            main(["isolation", "--out", out, option, value])
        assert "anchor-flow isolation: error: argument" in capsys.readouterr().err
    assert main(["isolation", "--out", out, "--top-k", "0", *QUICK]) == 2
    assert "--top-k=0; expected a positive integer" in capsys.readouterr().err
