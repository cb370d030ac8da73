"""Comparing runs (issue 25): ``compare_runs`` and ``anchor-flow compare`` on real small runs.

Three runs are made once per session with small settings: the demo model (6 layers, task
demo-k3, every experiment, its null model), planted-anchor (2 layers, synthetic-k3; saliency,
isolation and deep, its null model) and planted-formatting (2 layers, synthetic-k3; saliency
and deep, no null model). Copies of them are then damaged on purpose (an experiment marked
failed, a file deleted, an older record schema) or given the anchor heads experiment's files,
so that every line of "what is missing" and the heads part are exercised. Values in the
comparison are checked against each run's own CSVs, read here with pandas; the relative
depth against layer / (n_layers - 1) worked out by hand for 6 and 2 layers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from anchor_flow import (
    RunComparison,
    RunConfig,
    compare_runs,
    load_model,
    plot_compare_auc,
    plot_compare_flows,
    plot_compare_heads,
    plot_compare_isolation,
    run_experiments,
    write_comparison,
)
from anchor_flow.cli import main
from anchor_flow.errors import ResultsError

# Same on every TransformerLens line, so not run again under 3.9: the subject is comparing results
# folders, above the model interface that the tl_class-parametrized tests and test_run.py check on
# every installed line (docs/development.md, "Test tiers").
pytestmark = pytest.mark.same_on_tl_lines

_SMALL = {"seeds": (42,), "n_examples": 8, "top_trials": 1, "reweighting_epochs": 1,
          "speed_queries": 2, "n_components": 4}  # fmt: skip
_RUNS = {
    "demo": ("demo", RunConfig(task="demo-k3", **_SMALL)),
    "anchor": ("planted-anchor", RunConfig(task="synthetic-k3", experiments=(
        "saliency", "isolation", "deep"), **_SMALL)),
    "formatting": ("planted-formatting", RunConfig(task="synthetic-k3", experiments=(
        "saliency", "deep"), null_model="none", **_SMALL)),
}  # fmt: skip
TOP_HEADS = pd.DataFrame({
    "kind": ["gathering", "gathering", "reading"], "rank": [1, 2, 1], "layer": [0, 1, 1],
    "head": [2, 0, 1], "share": [0.61, 0.2, 0.74], "ci_low": [0.5, 0.1, 0.6],
    "ci_high": [0.7, 0.3, 0.85],
})  # fmt: skip
CAUSAL = pd.DataFrame({
    "arm": ["anchor_heads", "random_heads"] * 3,
    "metric": ["label_loyalty"] * 2 + ["word_loyalty"] * 2 + ["accuracy"] * 2,
    "mean": [0.4, 0.95, 0.5, 0.9, 0.3, 0.8], "ci_low": [0.2, 0.85, 0.3, 0.8, 0.1, 0.6],
    "ci_high": [0.6, 1.0, 0.7, 1.0, 0.5, 1.0], "n_prompts": [8] * 6,
})  # fmt: skip


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compare")
    folders = {}
    for name, (model, config) in _RUNS.items():
        folders[name] = root / name
        run_experiments(load_model(model), folders[name], config, model_source=model,
                        progress=False)  # fmt: skip
    return folders


def _copy(source: Path, target: Path, edit: Any = None) -> Path:
    shutil.copytree(source, target)
    if edit is not None:
        record = json.loads((target / "results.json").read_text())
        edit(record)
        (target / "results.json").write_text(json.dumps(record))
    return target


def _with_heads(source: Path, target: Path) -> Path:
    """A copy with the anchor heads experiment's files and its results.json entry."""

    def add(record: dict[str, Any]) -> None:
        record["experiments"]["heads"] = {"status": "complete", "files": ["heads/"],
                                          "seconds": 1.0, "summary": {}}  # fmt: skip

    folder = _copy(source, target, add)
    (folder / "heads").mkdir()
    TOP_HEADS.to_csv(folder / "heads" / "top_heads.csv", index=False)
    CAUSAL.to_csv(folder / "heads" / "causal.csv", index=False)
    return folder


def _label(comparison: RunComparison, folder: Path) -> str:
    return str(comparison.runs.set_index("path").loc[str(folder), "run"])


def test_values_are_each_runs_own(runs: dict[str, Path]) -> None:
    comparison = compare_runs(list(runs.values()))
    assert comparison.labels == ["demo · demo-k3", "planted-anchor · synthetic-k3",
                                 "planted-formatting · synthetic-k3"]  # fmt: skip
    for folder in runs.values():
        label = _label(comparison, folder)
        flows = pd.read_csv(folder / "flows.csv")
        # One seed: each share is the layer's mean flow over the sum of its three mean flows.
        shares = flows["mean"] / flows.groupby("layer")["mean"].transform("sum")
        mine = comparison.flows[comparison.flows["run"] == label]
        assert mine["layer"].tolist() == flows["layer"].tolist()
        assert mine["normalised"].to_numpy() == pytest.approx(shares.to_numpy())
        assert mine["normalised_ci_low"].tolist() == flows["normalised_ci_low"].tolist()
        deep = pd.read_csv(folder / "deep.csv")
        assert comparison.deep[comparison.deep["run"] == label]["auc_roc"].tolist() == deep[
            "auc_roc"].tolist()  # fmt: skip
        record = json.loads((folder / "results.json").read_text())
        findings = comparison.findings[comparison.findings["run"] == label]
        assert len(findings) == len(record["findings"])
        for row, entry in zip(findings.itertuples(), record["findings"], strict=True):
            assert (row.claim, row.subject, row.verdict) == (
                entry["claim"], entry["subject"], entry["verdict"])  # fmt: skip
            expected = tuple(math.nan if x is None else x for x in entry["interval"])
            assert (row.ci_low, row.ci_high) == pytest.approx(expected, nan_ok=True)
    # Isolation: the shallow label arm at the count C3 uses (demo: 6 layers, shallow 0-1,
    # counts 1 and 3 -> 1).
    demo = runs["demo"]
    isolation = pd.read_csv(demo / "isolation.csv")
    assert sorted(set(isolation["n_layers"]) - {0}) == [1, 3]
    expected = isolation.query("control == 'label' and position == 'first' and n_layers == 1 "
                               "and metric == 'label_loyalty'")["mean"].item()  # fmt: skip
    shown = comparison.isolation.query("run == 'demo · demo-k3' and shown and control == 'label'"
                                       " and depth_part == 'shallow' and metric == "
                                       "'label_loyalty'")  # fmt: skip
    assert shown["mean"].tolist() == [expected]
    assert set(comparison.isolation.query("run == 'demo · demo-k3' and shown")[
        "isolated_layers"]) == {1}  # fmt: skip
    bars = plot_compare_isolation(comparison).to_dict()["data"]
    assert "demo · demo-k3 (k=1)" in bars[0]["x"]


def test_applications_headline_numbers(runs: dict[str, Path], tmp_path: Path) -> None:
    comparison = compare_runs([runs["demo"], runs["anchor"]])
    apps = comparison.applications.set_index("quantity")
    demo = runs["demo"]
    reweighting = pd.read_csv(demo / "reweighting.csv").set_index("condition")["mean"]
    assert apps.loc["re-weighted accuracy", "mean"] == reweighting["re-weighted"]
    gain = apps.loc["gain over vanilla 1-shot (difference of the means above)", "mean"]
    assert gain == pytest.approx(reweighting["re-weighted"] - reweighting["vanilla 1-shot"])
    compression = pd.read_csv(demo / "compression.csv").set_index(["method", "metric"])["mean"]
    assert apps.loc["hidden_anchor label_loyalty", "mean"] == compression[
        "hidden_anchor", "label_loyalty"]  # fmt: skip
    speed = pd.read_csv(demo / "compression_speed.csv")
    most = speed.sort_values("n_demonstrations").iloc[-1]
    quantity = f"speed-up ({int(most['n_demonstrations'])} demonstrations)"
    assert apps.loc[quantity, "mean"] == most["speedup"]
    spearman = json.loads((demo / "diagnosis.json").read_text())["spearman"]
    value = apps.loc["Spearman(predicted, real confusion)", "mean"]
    assert (pd.isna(value) and spearman["mean"] is None) or value == spearman["mean"]
    # The gain's sign, on numbers set by hand (the small run's gain may well be 0).
    edited = _copy(demo, tmp_path / "edited")
    frame = pd.read_csv(edited / "reweighting.csv")
    frame.loc[frame["condition"] == "re-weighted", "mean"] = 0.8
    frame.loc[frame["condition"] == "vanilla 1-shot", "mean"] = 0.6
    frame.to_csv(edited / "reweighting.csv", index=False)
    gains = compare_runs([edited]).applications.set_index("quantity")["mean"]
    assert gains["gain over vanilla 1-shot (difference of the means above)"] == pytest.approx(0.2)
    # planted-anchor ran no application: it has no row, and its column shows dashes.
    assert set(comparison.applications["run"]) == {"demo · demo-k3"}
    table = comparison.applications_table()
    assert set(table["planted-anchor · synthetic-k3"]) == {"—"}


def test_relative_depth_puts_6_and_2_layers_on_one_axis(runs: dict[str, Path]) -> None:
    comparison = compare_runs([runs["demo"], runs["anchor"]])
    by_run = comparison.flows.groupby("run")
    assert sorted(set(by_run.get_group("demo · demo-k3")["depth"])) == pytest.approx(
        [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])  # fmt: skip
    assert sorted(set(by_run.get_group("planted-anchor · synthetic-k3")["depth"])) == [0.0, 1.0]
    figure = plot_compare_flows(comparison).to_dict()
    traces = {(t["name"], t["xaxis"]): t for t in figure["data"]}
    assert len(figure["data"]) == 2 * 3  # two runs x S_wp, S_pq, S_ww
    assert list(traces["demo · demo-k3", "x"]["x"]) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1])
    assert list(traces["planted-anchor · synthetic-k3", "x2"]["x"]) == [0.0, 1.0]
    assert "layer / (n_layers − 1)" in figure["layout"]["xaxis"]["title"]["text"]
    assert traces["demo · demo-k3", "x"]["error_y"]["array"] is not None
    auc = plot_compare_auc(comparison).to_dict()
    planted = next(t for t in auc["data"] if t["name"].startswith("planted-anchor"))
    deep = pd.read_csv(runs["anchor"] / "deep.csv")
    assert list(planted["x"]) == [0.0, 1.0]
    assert list(planted["y"]) == deep["auc_roc"].tolist()
    heads = comparison.deep.query("run == 'demo · demo-k3'")
    assert heads["n_layers"].unique().tolist() == [6]


def test_settings_that_differ_and_findings_matrix(runs: dict[str, Path]) -> None:
    comparison = compare_runs(list(runs.values()))
    differ = comparison.settings_table().set_index("setting")
    assert differ.loc["model n_layers"].tolist() == ["6", "2", "2"]
    assert differ.loc["task"].tolist() == ["demo-k3", "synthetic-k3", "synthetic-k3"]
    assert differ.loc["null_model"].tolist() == ["auto", "auto", "none"]
    assert "seeds" not in differ.index
    assert comparison.shared_settings["seeds"] == [42]
    matrix = comparison.findings_matrix().set_index("claim")
    # Null models beside their runs; the formatting run has none (null_model='none').
    assert list(matrix.columns) == [
        "demo · demo-k3",
        "demo · demo-k3 · null model",
        "planted-anchor · synthetic-k3",
        "planted-anchor · synthetic-k3 · null model",
        "planted-formatting · synthetic-k3",
    ]
    record = json.loads((runs["anchor"] / "results.json").read_text())
    c1 = next(f for f in record["findings"] if f["claim"] == "C1" and f["subject"] == "model")
    cell = matrix.filter(like="C1:", axis=0)["planted-anchor · synthetic-k3"].item()
    assert cell.startswith(c1["verdict"] + ": ")
    assert f"[{c1['interval'][0]:.3g}, {c1['interval'][1]:.3g}]" in cell
    missing = {(r.run, r.experiment): r.what for r in comparison.missing.itertuples()}
    assert missing["planted-formatting · synthetic-k3", "null model"] == (
        "switched off (null_model='none')")  # fmt: skip
    assert missing["planted-formatting · synthetic-k3", "isolation"] == "not run"
    assert ("demo · demo-k3", "null model") not in missing
    # C3 needs isolation: the formatting run did not run it.
    assert matrix.filter(like="C3:", axis=0)["planted-formatting · synthetic-k3"].item() == "—"


def test_what_is_missing_is_named(runs: dict[str, Path], tmp_path: Path) -> None:
    def fail_deep(record: dict[str, Any]) -> None:
        record["experiments"]["deep"].update(status="failed", error="RuntimeError: boom")

    def older(record: dict[str, Any]) -> None:
        record["schema"] = "anchor_flow.run/0"
        for key in ("findings", "claim_layers", "null_model"):
            record.pop(key)
        record["model"].pop("n_layers")

    def add_claim(record: dict[str, Any]) -> None:  # a claim and keys of a later version
        record["findings"].append(
            {
                "claim": "Z9",
                "subject": "model",
                "verdict": "holds",
                "value": 0.1,
                "interval": [0.05, 0.2],
                "reason": "why",
            }
        )

    failed = _copy(runs["anchor"], tmp_path / "failed", fail_deep)
    old = _copy(runs["formatting"], tmp_path / "old", older)
    lacking = _copy(runs["demo"], tmp_path / "lacking", add_claim)
    (lacking / "flows.csv").unlink()
    comparison = compare_runs([failed, old, lacking])
    assert len(comparison.runs) == 3  # nobody dropped
    missing = {(r.run, r.experiment): r.what for r in comparison.missing.itertuples()}
    f, o, lk = (_label(comparison, p) for p in (failed, old, lacking))
    assert missing[f, "deep"] == "incomplete (status 'failed': RuntimeError: boom); not shown"
    assert missing[f, "reweighting"] == "not run"
    assert missing[f, "heads"] == "no heads experiment"
    assert "schema 'anchor_flow.run/0'" in missing[o, "results.json"]
    assert "no findings" in missing[o, "findings"]
    assert missing[o, "model"].startswith("results.json records no n_layers; 2 read from")
    assert missing[lk, "saliency"] == "flows.csv missing although the experiment is complete"
    assert comparison.deep.query("run == @f").empty
    assert comparison.flows.query("run == @lk").empty
    assert set(comparison.deep.query("run == @o")["depth"]) == {0.0, 1.0}  # inferred 2 layers
    matrix = comparison.findings_matrix().set_index("claim")
    assert matrix.loc["Z9", lk].startswith("holds: 0.1 [0.05, 0.2]")
    assert comparison.findings.query("claim == 'Z9'")["reason"].item() == "why"


def test_anchor_heads(runs: dict[str, Path], tmp_path: Path) -> None:
    heads = _with_heads(runs["anchor"], tmp_path / "heads")
    comparison = compare_runs([runs["formatting"], heads])
    label = _label(comparison, heads)
    assert comparison.heads["run"].unique().tolist() == [label]
    assert comparison.heads["depth"].tolist() == [0.0, 1.0, 1.0]  # layers 0, 1, 1 of 2
    causal = comparison.heads_causal.set_index(["arm", "metric"])["mean"]
    assert causal["anchor_heads", "label_loyalty"] == 0.4
    assert ("planted-formatting · synthetic-k3", "heads") in {
        (r.run, r.experiment) for r in comparison.missing.itertuples()}  # fmt: skip
    figure = plot_compare_heads(comparison).to_dict()
    bars = [t for t in figure["data"] if t["type"] == "bar"]
    assert [list(t["y"]) for t in bars] == [[0.4], [0.95]]
    assert {t["name"] for t in figure["data"] if t["type"] == "scatter"} == {
        f"{label}: gathering", f"{label}: reading"}  # fmt: skip


def test_a_real_heads_experiment_is_read_from_its_own_files(runs: dict[str, Path]) -> None:
    """The demo run's default experiments include the anchor heads (issue 24): the comparison
    shows what its heads/top_heads.csv and heads/causal.csv hold."""
    comparison = compare_runs([runs["demo"]])
    top = pd.read_csv(runs["demo"] / "heads" / "top_heads.csv")
    causal = pd.read_csv(runs["demo"] / "heads" / "causal.csv")
    mine = comparison.heads
    assert len(mine) == len(top)
    assert mine["layer"].tolist() == top["layer"].tolist()
    assert mine["share"].tolist() == pytest.approx(top["share"].tolist())
    assert mine["depth"].tolist() == pytest.approx((top["layer"] / 5).tolist())  # 6 layers
    assert comparison.heads_causal["mean"].tolist() == pytest.approx(causal["mean"].tolist())
    assert "heads" not in set(comparison.missing["experiment"])


def test_save_load_and_frozen(runs: dict[str, Path], tmp_path: Path) -> None:
    comparison = compare_runs([runs["demo"], runs["formatting"]])
    with pytest.raises(dataclasses.FrozenInstanceError):
        comparison.flows = pd.DataFrame()  # type: ignore[misc]
    again = RunComparison.load(comparison.save(tmp_path / "saved"))
    assert again.labels == comparison.labels
    assert again.flows["normalised"].tolist() == pytest.approx(
        comparison.flows["normalised"].tolist())  # fmt: skip
    assert again.findings_matrix().equals(comparison.findings_matrix())


# --- the command: refusals, and the page in headless Chromium ------------------------------


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("anchor-flow: error: "), err
    return err


def test_refusals_write_nothing(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "page.html"
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("not a run")
    err = _one_line_error(capsys, ["compare", str(runs["demo"]), str(plain), "--out", str(out)])
    assert f"{str(plain)!r} holds no results.json" in err
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.json").write_text(json.dumps({"schema": "someone.else/3"}))
    err = _one_line_error(capsys, ["compare", str(other), "--out", str(out)])
    assert "holds schema 'someone.else/3'; expected 'anchor_flow.run/1'" in err
    err = _one_line_error(capsys, ["compare", str(runs["demo"]), str(runs["demo"]),
                                   "--out", str(out)])  # fmt: skip
    assert "given twice" in err
    assert not out.exists()
    mine = tmp_path / "mine.html"
    mine.write_text("my own notes")
    err = _one_line_error(capsys, ["compare", str(runs["demo"]), "--out", str(mine)])
    assert "is not a page written by anchor-flow" in err
    assert mine.read_text() == "my own notes"
    err = _one_line_error(capsys, ["compare", str(runs["demo"]), "--out", str(tmp_path)])
    assert "is a folder" in err
    with pytest.raises(ResultsError, match="no results folder given"):
        compare_runs([])


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("browser check of the comparison page SKIPPED: no Chromium; install `chromium`")


def _rendered(page: Path, profile: Path) -> tuple[int, int, str]:
    """(declared figures, figures plotly drew, recorded JavaScript errors), as in test_run."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}",
             "--virtual-time-budget=20000", "--dump-dom"]  # fmt: skip
    done = subprocess.run([_chromium(), *flags, page.resolve().as_uri()], capture_output=True,
                          text=True, timeout=180, check=False)  # fmt: skip
    dom = done.stdout
    assert done.returncode == 0, done.stderr[-2000:]
    declared = int(re.search(r'name="anchor-flow-figures" content="(\d+)"', dom).group(1))  # type: ignore[union-attr]
    errors = re.search(r'<pre id="js-errors">(.*?)</pre>', dom, re.S).group(1).strip()  # type: ignore[union-attr]
    drawn = 0
    for chunk in dom.split('id="figure-')[1:]:
        head, _, body = chunk.partition(">")
        drawn += "js-plotly-plot" in head and 'class="main-svg"' in body.split('id="figure-')[0]
    return declared, drawn, errors


def test_page_renders_every_figure_in_a_browser(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    heads = _with_heads(runs["anchor"], tmp_path / "heads")
    out = tmp_path / "page.html"
    argv = ["compare", str(runs["demo"]), str(heads), str(runs["formatting"]), "--out", str(out)]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip().endswith(f"wrote {out}")
    page = out.read_text()
    for text in (
        "Settings that differ",
        "What is missing",
        "no heads experiment",
        "Findings: claims x runs",
        "relative depth",
        "Applications: headline numbers",
    ):
        assert text in page, text  # fmt: skip
    declared, drawn, errors = _rendered(out, tmp_path / "profile")
    assert errors == ""
    assert declared == drawn == 4  # flows, AUCROC_l, isolation, anchor heads
    assert main(argv) == 0  # its own page may be overwritten


def test_a_single_run_with_two_experiments(runs: dict[str, Path], tmp_path: Path) -> None:
    """planted-formatting ran saliency and deep only: every part of the page still renders,
    the absent ones say so (this once raised KeyError: 'ci_low' in the isolation figure)."""
    comparison = compare_runs([runs["formatting"]])
    isolation = plot_compare_isolation(comparison).to_dict()
    assert isolation["data"] == []
    assert isolation["layout"]["annotations"][-1]["text"] == "no run holds isolation.csv"
    heads = plot_compare_heads(comparison).to_dict()
    assert heads["layout"]["annotations"][-1]["text"] == "no heads experiment"
    page = write_comparison(comparison, tmp_path / "one.html").read_text()
    assert 'name="anchor-flow-figures" content="3"' in page
    assert "no heads experiment" in page
