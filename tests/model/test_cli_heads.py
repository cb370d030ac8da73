"""``anchor-flow heads`` (issue 24): the files of the heads experiment, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from anchor_flow.cli import main

# Same on every TransformerLens line, so not run again under 3.9: the subject is the heads
# command's files and errors, above the model interface that the tl_class-parametrized tests and
# test_run.py check on every installed line (docs/development.md, "Test tiers").
pytestmark = pytest.mark.same_on_tl_lines

ARGS = ["--model", "planted-anchor", "--task", "synthetic-k3", "--seeds", "42",
        "--n-examples", "12", "--quiet"]  # fmt: skip


def test_heads_command_writes_the_contracted_files(tmp_path: Path) -> None:
    out = tmp_path / "heads"
    assert main(["heads", "--out", str(out), *ARGS]) == 0
    assert {p.name for p in out.iterdir()} == {"heads", "heads.json", "report.html"}
    top = pd.read_csv(out / "heads" / "top_heads.csv")
    assert list(top.columns) == ["kind", "rank", "layer", "head", "share", "ci_low", "ci_high"]
    first = top.groupby("kind").first()
    assert (first.loc["gathering", "layer"], first.loc["gathering", "head"]) == (0, 0)
    assert (first.loc["reading", "layer"], first.loc["reading", "head"]) == (1, 0)
    causal = pd.read_csv(out / "heads" / "causal.csv")
    assert list(causal.columns) == ["arm", "metric", "mean", "ci_low", "ci_high", "n_prompts"]
    summary = json.loads((out / "heads.json").read_text())
    assert summary["finding"]["claim"] == "H1"
    assert "Anchor heads: who gathers, who reads" in (out / "report.html").read_text()


def test_heads_command_refuses_bad_input_in_one_line(tmp_path: Path, capsys) -> None:
    out = tmp_path / "never"
    assert main(["heads", "--out", str(out), *ARGS, "--heads-per-kind", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["anchor-flow: error: --heads-per-kind 0; expected a positive count"]
    assert not out.exists()
