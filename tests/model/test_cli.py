"""The anchor-flow command on the built-in offline model: outputs, schema and one-line errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from anchor_flow.cli import main
from anchor_flow.flows import InformationFlow
from anchor_flow.prompts import load_prompts
from anchor_flow.saliency_result import SaliencyResult


def test_saliency_command_writes_every_output(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["saliency", "--out", str(out), "--n-prompts", "6", "--batch-size", "4", "--quiet"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "saliency.json").read_text())
    assert summary["schema"] == "anchor_flow.information_flow/1"
    assert summary["n_prompts"] == 6
    assert len(summary["layers"]) == summary["n_layers"] == 4
    for layer in summary["layers"]:
        shares = [layer[f"{name}_normalised"] for name in ("S_wp", "S_pq", "S_ww")]
        assert sum(shares) == pytest.approx(1.0)
        assert all(layer[name] >= 0 for name in ("S_wp", "S_pq", "S_ww"))
    settings = summary["settings"]
    for key in ("model", "loss", "gradient", "head_reduction", "transformer_lens", "prompts"):
        assert key in settings
    assert 0.0 <= summary["accuracy"] <= 1.0
    assert InformationFlow.load(out / "saliency.json").n_prompts == 6
    frame = pd.read_csv(out / "flows.csv")
    assert set(frame["flow"]) == {"S_wp", "S_pq", "S_ww"}
    assert SaliencyResult.load(out / "saliency").n_prompts == 6
    html = (out / "report.html").read_text()
    assert "plotly" in html.lower()
    assert not list(out.rglob("*.tmp"))


def test_prompts_file_round_trip_through_the_cli(tmp_path, capsys):
    prompts_file = tmp_path / "prompts.jsonl"
    assert main(["prompts", "--out", str(prompts_file), "--n-prompts", "3"]) == 0
    assert len(load_prompts(prompts_file)) == 3
    out = tmp_path / "run"
    code = main(["saliency", "--prompts", str(prompts_file), "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "saliency.json").read_text())["n_prompts"] == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "no-such-model-anywhere"], "no-such-model-anywhere"),
        (["--batch-size", "0"], "--batch-size=0; expected a positive integer"),
        (["--n-prompts", "0"], "--n-prompts=0; expected a positive integer"),
        (["--prompts", "does-not-exist.jsonl"], "does-not-exist.jsonl"),
    ],
)
def test_bad_arguments_give_one_line_errors(tmp_path, capsys, args, message):
    code = main(["saliency", "--out", str(tmp_path / "run"), "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("anchor-flow: error: ")
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "saliency.json").exists()


def test_unknown_option_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["saliency", "--out", "x", "--loss", "mse"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'mse'" in capsys.readouterr().err


def test_report_command_re_renders_a_results_folder(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["saliency", "--out", str(out), "--n-prompts", "3", "--keep-maps", "--quiet"]
    assert main(args) == 0
    first = (out / "report.html").read_text()
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    second = (out / "report.html").read_text()
    assert second.count('class="plotly-graph-div"') == first.count('class="plotly-graph-div"') == 5


def test_report_command_refuses_an_unfinished_folder(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "holds no saliency.json" in err
    assert len(err.strip().splitlines()) == 1
