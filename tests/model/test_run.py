"""The main job (``anchor-flow run`` / ``run_experiments``): results folder, resume, bad input.

One small end-to-end run on the demo model (module fixture) is checked file by file against
the documented layout: ``results.json`` against the JSON Schema shipped with the package,
each CSV against the columns of its table, each raw folder by loading it with its result
class, the report by its figure count.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from importlib import resources
from pathlib import Path

import jsonschema
import pandas as pd
import pytest
import torch

import anchor_flow.run.steps as steps
from anchor_flow import (
    EXPERIMENTS,
    CompressionResult,
    RunConfig,
    load_model,
    load_run,
    run_experiments,
)
from anchor_flow.cli import main
from anchor_flow.errors import AnchorFlowError, ResultsError

SMALL = ["--seeds", "42", "--n-examples", "10", "--top-trials", "2", "--epochs", "1", "--quiet"]

# The columns each table must have: what a reader of the CSV relies on (README "Results").
CSV_COLUMNS = {
    "flows.csv": {"layer", "flow", "mean", "ci_low", "ci_high", "normalised", "n_prompts"},
    "isolation.csv": {"control", "position", "n_layers", "metric", "mean", "ci_low", "ci_high"},
    "deep.csv": {"layer", "auc_roc", "ci_low", "ci_high", "r"},
    "reweighting.csv": {"condition", "metric", "mean", "ci_low", "ci_high"},
    "compression.csv": {"method", "metric", "mean", "ci_low", "ci_high"},
    "compression_trials.csv": {"run", "trial", "label_loyalty", "word_loyalty", "accuracy"},
    "diagnosis.csv": {"run", "class_a", "class_b", "predicted", "real"},
    "compression_speed.csv": {"n_demonstrations", "demo_length", "query_length", "full_ms",
                              "compressed_ms", "build_ms", "floor_ms", "speedup",
                              "amortised_speedup", "floor_ratio", "flop_ideal"},
}  # fmt: skip


def _schema() -> dict:
    text = resources.files("anchor_flow").joinpath("data/results.schema.json").read_text()
    return json.loads(text)


def _load_raw(folder: Path) -> None:
    from anchor_flow import (
        CompressionResult,
        DeepResult,
        DiagnosisResult,
        IsolationResult,
        ReweightingResult,
        SaliencyResult,
        SpeedupResult,
    )

    loaders = {
        "isolation": IsolationResult.load, "deep": DeepResult.load,
        "reweighting": ReweightingResult.load, "compression": CompressionResult.load,
        "diagnosis": DiagnosisResult.load, "compression_speed": SpeedupResult.load,
    }  # fmt: skip
    if folder.name == "heads":  # issue 24: the cross-run comparison reads these columns
        from anchor_flow import HeadBlockingResult, HeadFlows

        assert HeadFlows.load(folder / "flows").n_prompts > 0
        assert HeadBlockingResult.load(folder / "blocking").n_prompts > 0
        top = pd.read_csv(folder / "top_heads.csv")
        assert list(top.columns) == ["kind", "rank", "layer", "head", "share", "ci_low",
                                     "ci_high"]  # fmt: skip
        assert set(top["kind"]) == {"gathering", "reading"}
        flows = HeadFlows.load(folder / "flows")
        shallow = json.loads((folder.parent / "results.json").read_text())["claim_layers"]
        expected = flows.ranking("gathering", shallow["shallow"])
        got = top[top["kind"] == "gathering"].reset_index(drop=True)
        assert got[["rank", "layer", "head"]].equals(expected[["rank", "layer", "head"]])
        assert got["ci_low"].to_numpy() == pytest.approx(expected["ci_low"].to_numpy())
        causal = pd.read_csv(folder / "causal.csv")
        assert list(causal.columns) == ["arm", "metric", "mean", "ci_low", "ci_high",
                                        "n_prompts"]  # fmt: skip
        assert set(causal["arm"]) == {"anchor_heads", "random_heads"}
        assert set(causal["metric"]) == {"label_loyalty", "word_loyalty", "accuracy"}
    elif folder.name == "null_model":
        from anchor_flow.report.findings import load_null_results

        saliency, deep = load_null_results(folder.parent)
        assert saliency
        assert deep is not None
    elif folder.name == "saliency":
        runs = sorted(p.parent for p in folder.rglob("saliency_meta.json"))
        assert runs, "saliency/ holds no saved run"
        for run in runs:
            assert SaliencyResult.load(run).n_prompts > 0
    else:
        loaders[folder.name](folder)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "demo"
    assert main(["run", "--out", str(out), *SMALL]) == 0
    return out


def test_every_file_matches_the_documented_layout(run_folder: Path) -> None:
    record = json.loads((run_folder / "results.json").read_text())
    jsonschema.validate(record, _schema())
    assert list(record["experiments"]) == list(EXPERIMENTS)
    listed = {"results.json", "report.html"}
    for name, entry in record["experiments"].items():
        assert entry["status"] == "complete", name
        listed.update(f.rstrip("/") for f in entry["files"])
    listed.update(f.rstrip("/") for f in record["null_model"].get("files", []))
    assert {p.name for p in run_folder.iterdir()} == listed  # nothing unlisted, no .tmp left
    for path in sorted(run_folder.iterdir()):
        if path.suffix == ".csv":
            frame = pd.read_csv(path)
            assert len(frame) > 0, path.name
            assert CSV_COLUMNS[path.name] <= set(frame.columns), path.name
        elif path.is_dir():
            _load_raw(path)
        elif path.name.endswith(".json") and path.name != "results.json":
            summary = json.loads(path.read_text())
            stem = path.stem
            in_record = dict(record["experiments"][stem]["summary"])
            in_record.pop("speed", None)  # compression.json holds Table 2; speed has its CSV
            assert summary == in_record, stem
    settings = record["settings"]
    assert (settings["seeds"], settings["n_examples"], settings["task"]) == ([42], 10, "demo-k3")
    assert record["model"]["source"] == "demo"
    assert record["versions"]["anchor_flow"]
    assert record["timings"]["total_seconds"] > 0


def test_report_has_one_figure_per_section_and_the_run_table(run_folder: Path) -> None:
    page = (run_folder / "report.html").read_text()
    n_figures = int(page.split('name="anchor-flow-figures" content="')[1].split('"')[0])
    assert page.count('class="plotly-graph-div"') == n_figures >= 10
    assert "This run" in page
    assert page.count("<table") >= 6
    assert 'id="js-errors"' in page


def test_values_are_plausible(run_folder: Path) -> None:
    record = load_run(run_folder)
    compression = pd.read_csv(run_folder / "compression.csv")
    means = compression.set_index(["method", "metric"])["mean"]
    # Recomputed from the saved per-prompt predictions: ICL's accuracy and Hidden_anchor's
    # label loyalty (the share of prompts where it predicts what ICL predicts).
    raw = CompressionResult.load(run_folder / "compression")
    anchor = raw.methods.index("hidden_anchor")
    right = (raw.baseline_predictions == raw.gold).double().mean()
    loyal = (raw.predictions[anchor] == raw.baseline_predictions).double().mean()
    assert means["icl", "accuracy"] == pytest.approx(float(right))
    assert means["hidden_anchor", "label_loyalty"] == pytest.approx(float(loyal))
    # Each share is the layer's mean flow over the sum of its three mean flows.
    flows = pd.read_csv(run_folder / "flows.csv")
    total = flows.groupby("layer")["mean"].transform("sum")
    assert flows["normalised"].to_numpy() == pytest.approx((flows["mean"] / total).to_numpy())
    assert record["experiments"]["deep"]["summary"]["runs"] == ["seed-42"]


def test_the_run_records_findings_for_the_model_and_its_null(run_folder: Path) -> None:
    record = load_run(run_folder)
    assert record["null_model"]["kind"] == "random-init"
    assert record["claim_layers"]["shallow"] == [0, 1]
    assert record["claim_layers"]["deep"] == [4, 5]
    rows = {(f["claim"], f["subject"]): f for f in record["findings"]}
    expected = {("C1", "model"), ("C2", "model"), ("C3", "model"), ("C4", "model"),
                ("C1", "null model"), ("C2", "null model"), ("C4", "null model"),
                ("H1", "model"), ("H1", "null model"),
                ("A1", "model"), ("A2", "model"), ("A3", "model")}  # fmt: skip
    assert set(rows) == expected
    assert all(row["reason"] for row in rows.values())  # every verdict says why (issue 29)
    assert rows[("C3", "model")]["verdict"] == "holds"
    assert rows[("H1", "null model")]["verdict"] != "holds"  # a random network's heads
    page = (run_folder / "report.html").read_text()
    assert page.index("Findings: Model demo, task demo-k3") < page.index("This run")
    assert "The model against its null model" in page
    # The Settings table names the model once (as "model name"), not again per experiment.
    assert "<th>model</th>" not in page
    assert "<th>model name</th>" in page


def test_findings_leave_out_claims_not_run_and_the_null_model_when_asked(tmp_path: Path) -> None:
    config = RunConfig(n_examples=12, seeds=(42,), experiments=("deep",), null_model="none")
    record = run_experiments(load_model("demo"), tmp_path, config, progress=False)
    assert [f["claim"] for f in record["findings"]] == ["C4"]
    assert record["null_model"]["kind"] == "none"
    assert not (tmp_path / "null_model").exists()
    jsonschema.validate(load_run(tmp_path), _schema())


def test_one_progress_bar_per_experiment(tmp_path: Path, capsys) -> None:
    config = RunConfig(n_examples=6, seeds=(42, 43), experiments=("isolation", "deep"),
                       null_model="none", isolation_layer_counts=(1,))  # fmt: skip
    model = load_model("demo")
    capsys.readouterr()  # loading's own output is not the run's
    run_experiments(model, tmp_path, config, progress=True)
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if "|" in line]
    assert {line.split(":")[0].strip() for line in lines} == {"isolation", "deep", "findings"}
    # Each bar starts once: the findings were once computed (and drawn) twice.
    started = sorted(line.split(":")[0].strip() for line in lines if " 0%|" in line)
    assert started == ["deep", "findings", "isolation"]
    # The inner run_icl bars ("icl: ... batch") of the two seeds stay hidden.
    assert "batch" not in err


def test_rerun_skips_complete_experiments(run_folder: Path, capsys) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in run_folder.iterdir() if p.is_file()}
    assert main(["run", "--out", str(run_folder), *SMALL]) == 0
    out = capsys.readouterr().out
    assert out.count("skipped") == len(EXPERIMENTS)
    after = {p.name: p.stat().st_mtime_ns for p in run_folder.iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k != "results.json"} == {
        k: v for k, v in before.items() if k != "results.json"
    }


def test_interrupted_run_resumes_and_never_trusts_partial_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_model("demo")
    config = RunConfig(seeds=(42,), n_examples=12, experiments=("isolation", "deep", "diagnosis"))

    def interrupted(run: steps.RunContext) -> dict:
        (run.out / "deep").mkdir()
        (run.out / "deep" / "deep_meta.json").write_text("{half")  # a crash mid-write
        (run.out / "deep.json").write_text("{")
        raise KeyboardInterrupt

    monkeypatch.setitem(steps.STEPS, "deep", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_experiments(model, tmp_path, config, progress=False)
    record = load_run(tmp_path)
    assert record["experiments"]["isolation"]["status"] == "complete"
    assert record["experiments"]["deep"]["status"] == "failed"
    assert "diagnosis" not in record["experiments"]
    jsonschema.validate(record, _schema())
    isolation_mtime = (tmp_path / "isolation.csv").stat().st_mtime_ns
    # The report of the interrupted run shows only what is complete.
    assert "Deep layers" not in (tmp_path / "report.html").read_text()

    monkeypatch.undo()
    events: list[str] = []
    record = run_experiments(model, tmp_path, config, progress=False, on_event=events.append)
    assert events[0] == f"isolation: complete in {tmp_path}, skipped"
    assert (tmp_path / "isolation.csv").stat().st_mtime_ns == isolation_mtime
    assert all(e["status"] == "complete" for e in record["experiments"].values())
    assert json.loads((tmp_path / "deep.json").read_text())["runs"] == ["seed-42"]
    from anchor_flow import DeepResult

    assert DeepResult.load(tmp_path / "deep").n_layers == 6
    assert "Deep layers" in (tmp_path / "report.html").read_text()


def test_other_settings_in_the_same_folder_are_refused_unless_restart(tmp_path: Path) -> None:
    model = load_model("demo")
    config = RunConfig(seeds=(42,), n_examples=6, experiments=("deep",))
    run_experiments(model, tmp_path, config, progress=False)
    other = RunConfig(seeds=(43,), n_examples=6, experiments=("deep",))
    with pytest.raises(ResultsError, match=r"other settings \(settings.seeds: \[42\] -> \[43\]"):
        run_experiments(model, tmp_path, other, progress=False)
    record = run_experiments(model, tmp_path, other, restart=True, progress=False)
    assert record["settings"]["seeds"] == [43]
    assert json.loads((tmp_path / "deep.json").read_text())["runs"] == ["seed-43"]


def test_a_resumed_run_may_change_the_compression_engine(tmp_path: Path) -> None:
    # planted-anchor: learned positions, so TL 3.x's HookedTransformer can run the cache.
    model = load_model("planted-anchor")
    config = RunConfig(task="synthetic-k3", seeds=(42,), n_examples=4, experiments=("deep",))
    run_experiments(model, tmp_path, config, progress=False)
    other = replace(config, compression_engine="cache", experiments=("deep", "compression"),
                    top_trials=1, speed_queries=1)  # fmt: skip
    with pytest.raises(ResultsError, match=r"settings\.top_trials"):
        run_experiments(model, tmp_path, other, progress=False)
    events: list[str] = []
    other = replace(other, top_trials=config.top_trials, speed_queries=config.speed_queries)
    run_experiments(model, tmp_path, other, progress=False, on_event=events.append)
    assert events[0].startswith("deep: complete")
    assert events[0].endswith("skipped")
    assert load_run(tmp_path)["settings"]["compression_engine"] == "cache"
    assert CompressionResult.load(tmp_path / "compression").n_prompts == 4


def test_a_resumed_run_in_another_dtype_is_refused(tmp_path: Path) -> None:
    config = RunConfig(seeds=(42,), n_examples=4, experiments=("deep",))
    run_experiments(load_model("demo"), tmp_path, config, progress=False)
    with pytest.raises(ResultsError, match=r"model\.dtype: 'torch.float32' -> 'torch.float64'"):
        run_experiments(load_model("demo", dtype=torch.float64), tmp_path, config, progress=False)


def test_a_deleted_output_file_makes_the_experiment_rerun(tmp_path: Path) -> None:
    model = load_model("demo")
    config = RunConfig(seeds=(42,), n_examples=6, experiments=("deep",))
    run_experiments(model, tmp_path, config, progress=False)
    os.remove(tmp_path / "deep.csv")
    events: list[str] = []
    run_experiments(model, tmp_path, config, progress=False, on_event=events.append)
    assert events[0] == "deep: running"
    assert (tmp_path / "deep.csv").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--experiments", "saliency,attention"], "expected a comma-separated subset"),
        (["run", "--task", "no-such-task"], "no-such-task"),
        (["run", "--model", "no-such-model-xyz"], "no-such-model-xyz"),
        (["run", "--n-examples", "0"], "--n-examples=0; expected a positive integer"),
        (["run", "--seeds", "4x"], "not a comma-separated list of integers"),
        (["run", "--top-trials", "0"], "--top-trials=0; expected a positive integer"),
        (["run", "--compression-engine", "turbo"], "invalid choice: 'turbo'"),
    ],
)
def test_bad_arguments_give_one_line_errors(
    argv: list[str], message: str, tmp_path: Path, capsys
) -> None:
    try:
        code = main([*argv, "--out", str(tmp_path / "out"), "--quiet"])
    except SystemExit as exit_:  # argparse's own errors
        code = int(exit_.code or 0)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1
    assert not (tmp_path / "out" / "results.json").exists()


def test_run_config_validates_its_input() -> None:
    with pytest.raises(AnchorFlowError, match="experiments=\\['deep', 'deep'\\]; expected"):
        RunConfig(experiments=("deep", "deep"))
    with pytest.raises(AnchorFlowError, match="top_trials=0; expected a positive integer"):
        RunConfig(top_trials=0)
    with pytest.raises(AnchorFlowError, match="compression_methods=\\['zip'\\]"):
        RunConfig(compression_methods=("zip",))
    # Under pytest the jaxtyping import hook type-checks the constructor first; a config that
    # got past it (plain Python) is still refused by __post_init__.
    for field, value in [("compression_engine", "turbo"), ("position_policy", "end"),
                         ("label_token_policy", "last")]:  # fmt: skip
        config = RunConfig()
        object.__setattr__(config, field, value)
        with pytest.raises(AnchorFlowError, match=f"{field}='{value}'; expected one of '"):
            config.__post_init__()
    config = RunConfig()
    object.__setattr__(config, "label_token_policy", None)
    config.__post_init__()


def test_load_run_refuses_other_files(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match=r"cannot read .*results\.json"):
        load_run(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"schema": "other/1"}))
    with pytest.raises(ResultsError, match=r"schema 'other/1'; expected 'anchor_flow\.run/1'"):
        load_run(tmp_path)


# --- the browser check: report.html opened in headless Chromium -----------------------------

_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def _chromium() -> str:
    for name in _BROWSERS:
        if path := shutil.which(name):
            return path
    pytest.skip(
        "browser check of report.html SKIPPED: no Chromium found (tried "
        f"{', '.join(_BROWSERS)}); install Debian's `chromium` to run it"
    )


def _rendered(page: Path, profile: Path) -> tuple[int, int, str]:
    """(declared figures, figures plotly drew, recorded JavaScript errors) after loading."""
    import re
    import subprocess

    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}",
             "--virtual-time-budget=20000", "--dump-dom"]  # fmt: skip
    done = subprocess.run(
        [_chromium(), *flags, page.resolve().as_uri()],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    dom = done.stdout
    assert done.returncode == 0, done.stderr[-2000:]
    assert "</html>" in dom
    declared = int(re.search(r'name="anchor-flow-figures" content="(\d+)"', dom).group(1))
    errors = re.search(r'<pre id="js-errors">(.*?)</pre>', dom, re.S).group(1).strip()
    drawn = 0
    for chunk in dom.split('id="figure-')[1:]:
        head, _, body = chunk.partition(">")
        # Plotly marks a div it plotted with "js-plotly-plot" and draws an SVG into it.
        drawn += "js-plotly-plot" in head and 'class="main-svg"' in body.split('id="figure-')[0]
    return declared, drawn, errors


def test_report_renders_every_figure_in_a_browser(run_folder: Path, tmp_path: Path) -> None:
    declared, drawn, errors = _rendered(run_folder / "report.html", tmp_path / "profile")
    assert errors == ""
    assert declared == drawn >= 10


def test_browser_check_detects_script_errors_and_missing_figures(
    run_folder: Path, tmp_path: Path
) -> None:
    page = (run_folder / "report.html").read_text()
    first = page.index("Plotly.newPlot(")
    broken = page[:first] + "Plotly.doesNotExist(" + page[first + len("Plotly.newPlot(") :]
    (tmp_path / "broken.html").write_text(broken)
    declared, drawn, errors = _rendered(tmp_path / "broken.html", tmp_path / "profile")
    assert "doesNotExist" in errors
    assert drawn == declared - 1
