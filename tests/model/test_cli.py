"""The anchor-flow command on the built-in offline model: outputs, schema and one-line errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from anchor_flow.analysis.flows import InformationFlow
from anchor_flow.analysis.saliency.result import SaliencyResult
from anchor_flow.cli import main
from anchor_flow.icl.evaluation import ICLResult
from anchor_flow.icl.prompts import load_prompts

# Same on every TransformerLens line, so not run again under 3.9: the subject is the command line's
# arguments, outputs and errors, above the model interface that the tl_class-parametrized tests and
# test_run.py check on every installed line (docs/development.md, "Test tiers").
pytestmark = pytest.mark.same_on_tl_lines

QUICK = ["--n-examples", "6", "--seeds", "42", "--quiet"]


def test_saliency_command_writes_every_output(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["saliency", "--out", str(out), "--batch-size", "4", *QUICK])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "saliency.json").read_text())
    assert summary["schema"] == "anchor_flow.information_flow/1"
    assert summary["n_prompts"] == 6
    assert len(summary["layers"]) == summary["n_layers"] == 6  # the demo model, the default
    # The layer means and shares, recomputed from the per-prompt flows in the same file.
    per_prompt = torch.tensor(summary["per_prompt"], dtype=torch.float64)  # [prompt, flow, layer]
    means = per_prompt.nanmean(0)
    for layer in summary["layers"]:
        column = means[:, layer["layer"]]
        for i, name in enumerate(("S_wp", "S_pq", "S_ww")):
            assert layer[name] == pytest.approx(float(column[i]), rel=1e-9)
            assert layer[f"{name}_normalised"] == pytest.approx(
                float(column[i] / column.sum()), rel=1e-9
            )
    settings = summary["settings"]
    for key in ("model", "loss", "gradient", "head_reduction", "transformer_lens", "task", "seeds"):
        assert key in settings
    assert settings["task"] == "demo-k3"
    assert settings["demonstrations"] == "per_example"
    assert InformationFlow.load(out / "saliency.json").n_prompts == 6
    # The accuracy, recomputed from the saved per-prompt probabilities and gold labels.
    raw = SaliencyResult.load(out / "saliency" / "seed-42")
    right = (raw.label_probs.argmax(-1) == raw.gold).double().mean()
    assert summary["accuracy"]["seed-42"] == pytest.approx(float(right))
    frame = pd.read_csv(out / "flows.csv")
    assert set(frame["flow"]) == {"S_wp", "S_pq", "S_ww"}
    assert SaliencyResult.load(out / "saliency" / "seed-42").n_prompts == 6
    assert "plotly" in (out / "report.html").read_text().lower()
    assert not list(out.rglob("*.tmp"))


def test_seeds_pool_prompts_and_are_reproducible(tmp_path, capsys):
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        args = ["saliency", "--out", str(out), "--n-examples", "4", "--seeds", "42,43", "--quiet"]
        assert main(args) == 0, capsys.readouterr().err
        runs.append(json.loads((out / "saliency.json").read_text()))
    assert runs[0]["n_prompts"] == 8
    assert runs[0]["per_prompt"] == runs[1]["per_prompt"]


def test_prompts_file_round_trip_through_the_cli(tmp_path, capsys):
    prompts_file = tmp_path / "prompts.jsonl"
    assert main(["prompts", "--out", str(prompts_file), "--n-examples", "3", "--seeds", "7"]) == 0
    assert len(load_prompts(prompts_file)) == 3
    out = tmp_path / "run"
    code = main(["saliency", "--prompts", str(prompts_file), "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "saliency.json").read_text())["n_prompts"] == 3


def test_prompts_out_never_replaces_a_users_file(tmp_path, capsys):
    mine = tmp_path / "notes.jsonl"
    mine.write_text('{"my": "own notes"}\n')
    args = ["prompts", "--n-examples", "3", "--seeds", "7"]
    assert main([*args, "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"{str(mine)!r} exists and holds other content" in err
    assert mine.read_text() == '{"my": "own notes"}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.jsonl"]  # no temporary file
    assert main([*args, "--out", str(tmp_path)]) == 2
    assert "is a folder; expected a JSONL file path" in capsys.readouterr().err
    # The same command again finds its own file: kept, exit 0.
    ours = tmp_path / "prompts.jsonl"
    assert main([*args, "--out", str(ours)]) == 0
    before = ours.stat().st_mtime_ns
    assert main([*args, "--out", str(ours)]) == 0
    assert ours.stat().st_mtime_ns == before


def test_task_from_a_description_file_and_a_local_folder(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    rows = [("a dull and lifeless film", "negative"), ("a wonderful and moving film", "positive")]
    for split in ("train", "test"):
        pd.DataFrame([rows[0]] * 4 + [rows[1]] * 2, columns=["text", "label"]).to_csv(
            data / f"{split}.csv", index=False
        )
    task_file = tmp_path / "mytask.json"
    task_file.write_text(
        json.dumps(
            {
                "name": "my-sentiment",
                "format": "Review: {text}\nSentiment:{label}",
                "label_words": [" Negative", " Positive"],
                "label_names": ["negative", "positive"],
            }
        )
    )
    out = tmp_path / "run"
    args = ["evaluate", "--model", "toy-gpt2", "--task", str(task_file), "--data-dir", str(data)]
    args += ["--out", str(out)]
    assert main([*args, "--seeds", "42,43", "--quiet"]) == 0, capsys.readouterr().err
    summary = json.loads((out / "icl.json").read_text())
    assert summary["settings"]["task"] == "my-sentiment"
    assert summary["settings"]["data"].startswith("local:")
    assert [row["n_examples"] for row in summary["per_seed"]] == [6, 6]
    per_seed = [ICLResult.load(out / "icl" / f"seed-{s}") for s in (42, 43)]
    right = [float((r.label_probs.argmax(-1) == r.gold).double().mean()) for r in per_seed]
    assert [row["accuracy"] for row in summary["per_seed"]] == pytest.approx(right)
    assert summary["accuracy_mean"] == pytest.approx(sum(right) / 2)
    assert (out / "icl.csv").read_text().startswith("run,n_examples,accuracy")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "no-such-model-anywhere"], "no-such-model-anywhere"),
        (["--batch-size", "0"], "--batch-size=0; expected a positive integer"),
        (["--n-examples", "0"], "--n-examples=0; expected a positive integer"),
        (["--prompts", "does-not-exist.jsonl"], "does-not-exist.jsonl"),
        (["--task", "no-such-task"], "unknown task 'no-such-task'"),
        (["--task", "sst2"], "cannot load dataset"),
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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["saliency", "--out", "x", "--loss", "mse"], "invalid choice: 'mse'"),
        (["saliency", "--out", "x", "--seeds", "4x"], "'4x' is not a comma-separated list"),
    ],
)
def test_malformed_options_are_argparse_errors(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_report_command_re_renders_a_results_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["saliency", "--out", str(out), "--keep-maps", *QUICK]) == 0
    first = (out / "report.html").read_text()
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    second = (out / "report.html").read_text()
    assert second.count('class="plotly-graph-div"') == first.count('class="plotly-graph-div"') == 5


def test_report_command_refuses_an_unfinished_folder(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "holds no results.json, saliency.json" in err
    assert len(err.strip().splitlines()) == 1


def test_prompts_longer_than_the_context_fail_or_are_skipped_and_counted(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    long_text = " ".join(["a wonderful film"] * 120)  # far beyond toy-gpt2's 256 positions
    train = [("a dull film", 0), ("a great film", 1)] * 3
    test = [(long_text, 1), ("a fine film", 1), ("a bad film", 0)]
    for name, rows in (("train", train), ("test", test)):
        pd.DataFrame(rows, columns=["text", "label"]).to_json(
            data / f"{name}.jsonl", orient="records", lines=True
        )
    args = ["saliency", "--model", "toy-gpt2", "--task", "sst2", "--data-dir", str(data)]
    args += ["--seeds", "42", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "strict")]) == 2
    err = capsys.readouterr().err
    assert "tokens" in err
    assert "256" in err
    assert main([*args, "--out", str(tmp_path / "lenient"), "--on-overflow", "skip"]) == 0
    summary = json.loads((tmp_path / "lenient" / "saliency.json").read_text())
    assert summary["n_prompts"] == 2
    assert summary["settings"]["skipped_too_long"] == {"42": 1}


@pytest.mark.parametrize(("model", "task"), [("planted-anchor", "synthetic-k3"),
                                             ("toy-gpt2", "toy-sentiment")])  # fmt: skip
def test_the_default_task_on_another_built_in_model_names_its_task(tmp_path, capsys, model, task):
    args = ["saliency", "--model", model, "--n-examples", "4", "--seeds", "42", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "label word" in err
    assert "no --task was given, and the default 'demo-k3' is the demo model's task" in err
    assert f"--task {task}" in err
    # The task it names runs; a label-word refusal on a task the user gave has no such hint.
    assert main([*args, "--task", task, "--out", str(tmp_path / "b")]) == 0
    assert main([*args, "--task", "demo-k3", "--out", str(tmp_path / "c")]) == 2
    assert "no --task was given" not in capsys.readouterr().err
