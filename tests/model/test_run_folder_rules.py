"""A results folder that never lies and never destroys (issue 15), end to end.

``anchor-flow run`` / ``run_experiments`` on the built-in toy-gpt2 with a task description file
and a local data folder (so the tests can edit both), one seed, a few examples, the deep-layer
experiment only: ownership, ``--restart``, fingerprints, the writer lock and validation before
the folder is created.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from anchor_flow import RunConfig, load_model, load_run, run_experiments
from anchor_flow.cli import main
from anchor_flow.errors import AnchorFlowError, ResultsError

# Same on every TransformerLens line, so not run again under 3.9: the subject is the results
# folder's rules, above the model interface that the tl_class-parametrized tests and test_run.py
# check on every installed line (docs/development.md, "Test tiers").
pytestmark = pytest.mark.same_on_tl_lines

TASK = {
    "name": "sst2",  # a user's task that borrows a built-in name
    "format": "Review: {text}\nSentiment:{label}",
    "label_words": [" Negative", " Positive"],
    "label_names": ["negative", "positive"],
}
ROWS = [("a dull and lifeless film", "negative"), ("a wonderful and moving film", "positive"),
        ("flat and tired", "negative"), ("bright and warm", "positive")]  # fmt: skip


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "test"):
        pd.DataFrame(ROWS * 2, columns=["text", "label"]).to_csv(data / f"{split}.csv", index=False)
    task = tmp_path / "task.json"
    task.write_text(json.dumps(TASK))
    return task, data


@pytest.fixture(scope="module")
def model():
    return load_model("toy-gpt2")


def _config(task: Path, data: Path, **changes) -> RunConfig:
    values = {"task": str(task), "data_dir": str(data), "seeds": (42,), "n_examples": 4,
              "experiments": ("deep",), **changes}  # fmt: skip
    return RunConfig(**values)


def _cli(task: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--model", "toy-gpt2", "--task", str(task), "--data-dir", str(data),
            "--seeds", "42", "--n-examples", "4", "--experiments", "deep", "--quiet",
            "--out", str(out), *extra]  # fmt: skip


def _one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_a_users_own_folder_is_refused_and_left_as_it_was(inputs, tmp_path, capsys) -> None:
    out = tmp_path / "mine"
    (out / "saliency").mkdir(parents=True)
    (out / "deep.csv").write_text("my own numbers")
    (out / "saliency" / "thesis.tex").write_text("\\section{Intro}")
    err = _one_line_error(capsys, main(_cli(*inputs, out)))
    assert "non-empty folder that no anchor-flow run wrote" in err
    assert (out / "deep.csv").read_text() == "my own numbers"
    assert (out / "saliency" / "thesis.tex").read_text() == "\\section{Intro}"
    assert sorted(p.name for p in out.rglob("*")) == ["deep.csv", "saliency", "thesis.tex"]


def test_the_single_experiment_commands_refuse_a_users_own_folder(inputs, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "deep.csv").write_text("my own numbers")
    task, data = inputs
    argv = ["deep", "--model", "toy-gpt2", "--task", str(task), "--data-dir", str(data),
            "--seeds", "42", "--n-examples", "4", "--quiet", "--out", str(out)]  # fmt: skip
    err = _one_line_error(capsys, main(argv))
    assert "non-empty folder that no anchor-flow run wrote" in err
    assert (out / "deep.csv").read_text() == "my own numbers"


def test_restart_deletes_only_the_files_the_run_listed(inputs, model, tmp_path) -> None:
    out = tmp_path / "run"
    run_experiments(model, out, _config(*inputs), progress=False)
    (out / "deep" / "data.txt").write_text("not written by any run")
    (out / "notes.md").write_text("mine")
    run_experiments(model, out, _config(*inputs, seeds=(43,)), restart=True, progress=False)
    assert (out / "deep" / "data.txt").read_text() == "not written by any run"
    assert (out / "notes.md").read_text() == "mine"
    assert json.loads((out / "deep.json").read_text())["runs"] == ["seed-43"]


def test_an_edited_task_file_is_refused_naming_what_changed(inputs, model, tmp_path) -> None:
    task, data = inputs
    out = tmp_path / "run"
    record = run_experiments(model, out, _config(task, data), progress=False)
    assert record["settings_resolved"]["task"] != "sst2"  # not the built-in SST-2
    assert str(task) in record["settings_resolved"]["task"]
    swapped = {"label_words": [" Positive", " Negative"], "label_names": ["positive", "negative"]}
    task.write_text(json.dumps({**TASK, **swapped}))  # another class order, same file name
    with pytest.raises(ResultsError, match=r"fingerprint\.task \(the task description's"):
        run_experiments(model, out, _config(task, data), progress=False)


def test_edited_data_files_are_refused(inputs, model, tmp_path) -> None:
    task, data = inputs
    out = tmp_path / "run"
    run_experiments(model, out, _config(task, data), progress=False)
    frame = pd.read_csv(data / "test.csv")
    frame.loc[0, "label"] = "positive"
    frame.to_csv(data / "test.csv", index=False)
    with pytest.raises(ResultsError, match=r"fingerprint\.data \(the examples read changed\)"):
        run_experiments(model, out, _config(task, data), progress=False)


def test_other_weights_are_refused(inputs, tmp_path) -> None:
    out = tmp_path / "run"
    model = load_model("toy-gpt2")
    run_experiments(model, out, _config(*inputs), progress=False)
    with torch.no_grad():
        next(iter(model.parameters())).add_(0.01)
    with pytest.raises(ResultsError, match=r"fingerprint\.model \(the model's weights changed"):
        run_experiments(model, out, _config(*inputs), progress=False)


def test_a_run_in_which_nothing_completed_does_not_block_other_settings(
    inputs, model, tmp_path, monkeypatch
) -> None:
    import anchor_flow.run.steps as steps

    def broken(run):
        (run.out / "deep.csv").write_text("half")
        raise RuntimeError("disk full")

    out = tmp_path / "run"
    monkeypatch.setitem(steps.STEPS, "deep", broken)
    with pytest.raises(RuntimeError):
        run_experiments(model, out, _config(*inputs), progress=False)
    assert load_run(out)["experiments"]["deep"]["error"] == "RuntimeError: disk full"
    assert not (out / "deep.csv").exists()  # the failed step's partial file is gone
    assert "disk full" in (out / "report.html").read_text()  # the report shows the error
    monkeypatch.undo()
    record = run_experiments(model, out, _config(*inputs, seeds=(43,)), progress=False)
    assert record["experiments"]["deep"]["status"] == "complete"


def test_resuming_a_failed_or_killed_step_keeps_the_users_files_in_its_folder(
    inputs, model, tmp_path, monkeypatch
) -> None:
    import anchor_flow.run.steps as steps

    def broken(run):
        raise RuntimeError("disk full")

    out, config = tmp_path / "run", _config(*inputs)
    run_experiments(model, out, _config(*inputs, experiments=("isolation",)), progress=False)
    monkeypatch.setitem(steps.STEPS, "deep", broken)
    with pytest.raises(RuntimeError):
        run_experiments(model, out, _config(*inputs, experiments=("isolation", "deep")),
                        progress=False)  # fmt: skip
    monkeypatch.undo()
    (out / "deep").mkdir()
    (out / "deep" / "notes.txt").write_text("mine, written after the failure")
    config = _config(*inputs, experiments=("isolation", "deep"))
    record = run_experiments(model, out, config, progress=False)
    assert (out / "deep" / "notes.txt").read_text() == "mine, written after the failure"
    assert "deep/notes.txt" not in record["experiments"]["deep"]["contents"]  # not the run's
    # A killed step ("running"): what it wrote goes, what was there before it started stays.
    record["experiments"]["deep"] = {"status": "running", "started": "x",
                                     "kept": ["deep/notes.txt"]}  # fmt: skip
    (out / "results.json").write_text(json.dumps(record))
    (out / "deep" / "deep_meta.json").write_text("half-written by the killed step")
    seen, real = [], steps.STEPS["deep"]

    def watching(run):
        seen.append(sorted(path.name for path in (run.out / "deep").iterdir()))
        return real(run)

    monkeypatch.setitem(steps.STEPS, "deep", watching)
    run_experiments(model, out, config, progress=False)
    assert seen == [["notes.txt"]]


_HOLD = """
import sys, time
from pathlib import Path
from anchor_flow.run.folder import hold_lock
with hold_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_run_on_the_same_folder_is_refused_at_once(inputs, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text("{}")  # (never read: the lock comes first)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"held"
        err = _one_line_error(capsys, main(_cli(*inputs, out)))
        assert f"another anchor-flow run (pid {holder.pid})" in err
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--seeds", "42,42"], "seeds=42,42 repeats 42"),
        (["--seeds", "-1"], "expected seeds in 0..4294967295"),
        (["--device", "tpu"], "--device 'tpu'"),
        (
            ["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "cuda:99"],
            "--device 'cuda",
        ),
        (["--n-examples", "4", "--shots-per-class", "9"], "shots"),
        (["--experiments", "diagnosis", "--n-components", "9"], "diagnosis: n_components=9"),
        (["--n-components", "0"], "--n-components"),
    ],
)
def test_bad_input_is_refused_before_the_folder_exists(
    inputs, tmp_path, capsys, extra: list[str], message: str
) -> None:
    out = tmp_path / "new" / "run"
    err = _one_line_error(capsys, main([*_cli(*inputs, out), *extra]))
    assert message in err
    assert not (tmp_path / "new").exists()


def test_label_words_and_prompt_lengths_are_checked_before_the_folder(inputs, model, tmp_path):
    task, data = inputs
    task.write_text(json.dumps({**TASK, "label_words": [" Neg", " Negative"]}))
    out = tmp_path / "run"
    with pytest.raises(AnchorFlowError):
        run_experiments(model, out, _config(task, data), progress=False)
    assert not out.exists()


def test_reweighting_class_counts_are_checked_before_the_folder(inputs, model, tmp_path):
    out = tmp_path / "run"
    config = _config(*inputs, experiments=("deep", "reweighting"), train_per_class=4)
    with pytest.raises(
        AnchorFlowError, match=r"the training split has 'negative': 4, 'positive': 4$"
    ):
        run_experiments(model, out, config, progress=False)
    assert not out.exists()


def test_fewer_test_examples_than_asked_are_said_and_recorded(inputs, model, tmp_path) -> None:
    events: list[str] = []
    record = run_experiments(model, tmp_path / "run", _config(*inputs, n_examples=50),
                             progress=False, on_event=events.append)  # fmt: skip
    assert record["settings_resolved"]["n_examples_used"] == len(ROWS) * 2
    assert events[0] == "using 8 test examples per seed: the test split has 8 (n_examples=50)"


def _long_inputs(task: Path, data: Path) -> None:
    """Half the test examples longer than toy-gpt2's 256-token context."""
    long = ("a long and winding review " * 60).strip()
    rows = ROWS + [(long, "negative"), (long + " yes", "positive")] * 2
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(data / "test.csv", index=False)


def test_on_overflow_skip_is_honoured_and_counted_by_every_experiment(inputs, model, tmp_path):
    task, data = inputs
    _long_inputs(task, data)
    config = _config(task, data, n_examples=8, on_overflow="skip", top_trials=1,
                     speed_queries=4, experiments=("reweighting", "compression"),
                     reweighting_epochs=1, train_per_class=1)  # fmt: skip
    record = run_experiments(model, tmp_path / "run", config, progress=False)
    for name in ("reweighting", "compression"):
        entry = record["experiments"][name]
        assert entry["status"] == "complete", name
        assert entry["skipped"] > 0, name
    assert sum(record["settings_resolved"]["skipped_too_long_reweighting"].values()) == 4


def test_saliency_prompts_file_honours_on_overflow_skip(inputs, tmp_path, capsys) -> None:
    task, data = inputs
    _long_inputs(task, data)
    prompts = tmp_path / "prompts.jsonl"
    common = ["--task", str(task), "--data-dir", str(data), "--seeds", "42",
              "--n-examples", "8"]  # fmt: skip
    assert main(["prompts", *common, "--out", str(prompts)]) == 0
    out = tmp_path / "saliency"
    argv = ["saliency", "--model", "toy-gpt2", "--prompts", str(prompts), "--quiet",
            "--on-overflow", "skip", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    summary = json.loads((out / "saliency.json").read_text())
    assert summary["settings"]["skipped_too_long"] == 4
    assert summary["settings"]["n_prompts"] == 4


def _copy_of_planted(tmp_path: Path) -> Path:
    import shutil

    from anchor_flow.models.loading import _builtin_folder

    folder = tmp_path / "model"
    shutil.copytree(_builtin_folder("planted-anchor"), folder)
    return folder


def test_a_truncated_safetensors_file_is_one_line(tmp_path, capsys) -> None:
    folder = _copy_of_planted(tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    out = tmp_path / "run"
    argv = ["run", "--model", str(folder), "--task", "synthetic-k3", "--seeds", "42",
            "--n-examples", "4", "--experiments", "deep", "--quiet", "--out", str(out)]  # fmt: skip
    err = _one_line_error(capsys, main(argv))
    assert "are corrupt or truncated (SafetensorError" in err
    assert not out.exists()


class _Unsafe:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_a_bin_checkpoint_refused_by_safe_loading_is_one_line(tmp_path, capsys) -> None:
    folder = _copy_of_planted(tmp_path)
    (folder / "model.safetensors").unlink()
    torch.save({"transformer.wte.weight": _Unsafe()}, folder / "pytorch_model.bin")
    argv = ["run", "--model", str(folder), "--task", "synthetic-k3", "--seeds", "42",
            "--n-examples", "4", "--experiments", "deep", "--quiet",
            "--out", str(tmp_path / "run")]  # fmt: skip
    err = _one_line_error(capsys, main(argv))
    assert "were refused as unsafe" in err
    assert "code ran while loading" not in capsys.readouterr().out


def test_ctrl_c_during_start_up_is_one_line_and_exit_130(monkeypatch, tmp_path, capsys) -> None:
    import transformers

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(transformers.utils.logging, "disable_progress_bar", interrupted)
    assert main(["run", "--quiet", "--out", str(tmp_path / "run")]) == 130
    assert capsys.readouterr().err == "anchor-flow: interrupted\n"
    assert not (tmp_path / "run").exists()


# -- issue 28: records nothing could read; fingerprint-less records; the CLI's own words ----


def _damaged_copies(inputs, model, tmp_path: Path) -> dict[str, Path]:
    """One complete run, copied three times: results.json truncated (a crash, a full disk),
    from an older schema, and without its fingerprint; each copy holds a user's files too."""
    reference = tmp_path / "reference"
    run_experiments(model, reference, _config(*inputs), progress=False)
    copies = {}
    for damage in ("truncated", "old-schema", "no-fingerprint"):
        out = copies[damage] = tmp_path / damage
        shutil.copytree(reference, out)
        (out / "notes.md").write_text("mine")
        (out / "deep" / "data.txt").write_text("mine too")
        record = json.loads((out / "results.json").read_text())
        if damage == "truncated":
            (out / "results.json").write_text((out / "results.json").read_text()[:300])
        elif damage == "old-schema":
            (out / "results.json").write_text(json.dumps({**record, "schema": "anchor_flow.run/0"}))
        else:
            del record["fingerprint"]
            (out / "results.json").write_text(json.dumps(record))
    return copies


def test_restart_recovers_an_unreadable_or_old_record_and_keeps_the_users_files(
    inputs, model, tmp_path, capsys
) -> None:
    copies = _damaged_copies(inputs, model, tmp_path)
    for damage, out in copies.items():
        before = (out / "results.json").read_bytes()
        code = main(_cli(*inputs, out))  # without --restart: refused, one line, untouched
        err = _one_line_error(capsys, code)
        assert "--restart" in err, err
        assert "restart=True" not in err, err
        assert (out / "results.json").read_bytes() == before
        assert main(_cli(*inputs, out, "--restart")) == 0, damage
        record = load_run(out)
        assert record["experiments"]["deep"]["status"] == "complete"
        assert "fingerprint" in record
        assert (out / "notes.md").read_text() == "mine"
        assert (out / "deep" / "data.txt").read_text() == "mine too"


def test_a_resume_after_a_kill_keeps_a_file_the_user_put_in_the_steps_folder(
    inputs, model, tmp_path
) -> None:
    out, config = tmp_path / "run", _config(*inputs)
    record = run_experiments(model, out, config, progress=False)
    record["experiments"]["deep"] = {"status": "running", "started": "x", "kept": []}  # killed
    (out / "results.json").write_text(json.dumps(record))
    (out / "deep" / "deep_meta.json").write_text("half-written by the killed step")
    (out / "deep" / "notes.txt").write_text("mine, written after the kill")
    run_experiments(model, out, config, progress=False)
    assert (out / "deep" / "notes.txt").read_text() == "mine, written after the kill"
    assert json.loads((out / "deep" / "deep_meta.json").read_text())["schema"]


def test_data_refuses_to_replace_a_users_files_and_writes_readable_ones(tmp_path, capsys):
    out = tmp_path / "data"
    out.mkdir()
    (out / "train.jsonl").write_text('{"text": "mine", "label": 0}\n')
    err = _one_line_error(capsys, main(["data", "--task", "synthetic-k3", "--out", str(out)]))
    assert "train.jsonl" in err
    assert (out / "train.jsonl").read_text() == '{"text": "mine", "label": 0}\n'
    assert not (out / "test.jsonl").exists()  # nothing half-written
    fresh = tmp_path / "fresh"
    assert main(["data", "--task", "synthetic-k3", "--out", str(fresh)]) == 0
    assert main(["data", "--task", "synthetic-k3", "--out", str(fresh)]) == 0  # same rows: kept
    umask = os.umask(0)
    os.umask(umask)
    for name in ("train.jsonl", "test.jsonl"):
        assert (fresh / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_prompts_refuses_on_overflow_skip_it_cannot_apply(tmp_path, capsys) -> None:
    out = tmp_path / "prompts.jsonl"
    argv = ["prompts", "--task", "synthetic-k3", "--on-overflow", "skip", "--out", str(out)]
    err = _one_line_error(capsys, main(argv))
    assert "--on-overflow skip" in err
    assert not out.exists()


def test_ctrl_c_in_a_step_is_recorded_as_interrupted(inputs, model, tmp_path, monkeypatch):
    import anchor_flow.run.steps as steps

    def pressed(run):
        raise KeyboardInterrupt

    out = tmp_path / "run"
    monkeypatch.setitem(steps.STEPS, "deep", pressed)
    with pytest.raises(KeyboardInterrupt):
        run_experiments(model, out, _config(*inputs), progress=False)
    entry = load_run(out)["experiments"]["deep"]
    assert (entry["status"], entry["error"]) == (
        "failed", "interrupted (SIGINT, Ctrl-C); rerun to resume"
    )  # fmt: skip


def test_a_broken_config_json_is_named_not_the_tokenizer(tmp_path, capsys) -> None:
    folder = _copy_of_planted(tmp_path)
    (folder / "config.json").write_text('{"model_type": "gpt2", ')  # cut short
    argv = ["run", "--model", str(folder), "--task", "synthetic-k3", "--seeds", "42",
            "--n-examples", "4", "--experiments", "deep", "--quiet",
            "--out", str(tmp_path / "run")]  # fmt: skip
    err = _one_line_error(capsys, main(argv))
    assert "config.json' is not readable JSON" in err
    assert "tokenizer" not in err
