"""``anchor-flow reweight`` and ``anchor-flow diagnose`` end to end on planted-anchor."""

from __future__ import annotations

import json

import pytest

from anchor_flow.cli import main

# Same on every TransformerLens line, so not run again under 3.9: the subject is the reweight and
# diagnose commands' files and errors, above the model interface that the tl_class-parametrized
# tests and test_run.py check on every installed line (docs/development.md, "Test tiers").
pytestmark = pytest.mark.same_on_tl_lines


def test_reweight_and_diagnose_write_results_and_one_report(tmp_path, capsys):
    out = tmp_path / "results"
    common = ["--model", "planted-anchor", "--seeds", "42,43", "--quiet", "--out", str(out)]
    assert (
        main(
            [
                "reweight",
                "--task",
                "synthetic-k2",
                "--n-examples",
                "6",
                "--epochs",
                "1",
                "--train-per-class",
                "2",
                "--batch-size",
                "16",
                *common,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "diagnose",
                "--task",
                "synthetic-k4",
                "--n-examples",
                "16",
                "--n-components",
                "5",
                "--batch-size",
                "16",
                *common,
            ]
        )
        == 0
    )
    reweighting = json.loads((out / "reweighting.json").read_text())
    assert reweighting["schema"] == "anchor_flow.reweighting/1"
    assert [row["condition"] for row in reweighting["accuracy"]] == [
        "vanilla 1-shot",
        "vanilla k-shot",
        "re-weighted",
    ]
    assert reweighting["settings"]["k_shot_shots_per_run"] == [3, 3]
    diagnosis = json.loads((out / "diagnosis.json").read_text())
    assert diagnosis["settings"]["n_components"] == 5
    assert len(diagnosis["runs"]) == 2
    assert (out / "reweighting.csv").is_file()
    assert (out / "diagnosis.csv").is_file()
    html = (out / "report.html").read_text()
    assert "Anchor re-weighting: accuracy" in html
    assert "Error diagnosis" in html
    assert "wrote" in capsys.readouterr().out


def test_bad_inputs_end_with_one_line_errors(tmp_path, capsys):
    common = ["--model", "planted-anchor", "--seeds", "42", "--quiet", "--out", str(tmp_path)]
    assert main(["reweight", "--task", "synthetic-k3", "--epochs", "0", *common]) == 2
    assert "--epochs=0; expected a positive integer" in capsys.readouterr().err
    assert main(["diagnose", "--task", "synthetic-k3", "--n-examples", "4", *common]) == 2
    err = capsys.readouterr().err
    assert "n_components=10 but 4 queries" in err
    assert err.count("\n") == 1
