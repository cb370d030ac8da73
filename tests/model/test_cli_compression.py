"""``anchor-flow compress``: writes compression.json atomically, the raw result and a report."""

from __future__ import annotations

import json

import pytest

from anchor_flow.applications.compression.baselines import CompressionResult
from anchor_flow.cli import main
from anchor_flow.report.figures.compression import plot_compression, plot_speedup

# Same on every TransformerLens line, so not run again under 3.9: the subject is the compress
# command's files and errors, above the model interface that the tl_class-parametrized tests and
# test_run.py check on every installed line (docs/development.md, "Test tiers").
pytestmark = pytest.mark.same_on_tl_lines


def test_compress_command_writes_results_and_report(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["compress", "--model", "planted-anchor", "--task", "synthetic-k3",
                 "--seeds", "1,2", "--n-examples", "6", "--top-trials", "2", "--quiet",
                 "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "compression.json").read_text())
    assert summary["runs"] == ["seed-1", "seed-2"]
    assert summary["n_prompts"] == 12
    methods = {row["method"] for row in summary["means"]}
    assert methods == {"icl", "text_anchor", "hidden_random", "hidden_random_top",
                       "hidden_anchor"}  # fmt: skip
    assert len(summary["random_top_trials"]) == 4
    assert not list(out.glob("*.tmp"))
    html = (out / "report.html").read_text()
    assert "Anchor-only context compression" in html
    result = CompressionResult.load(out / "compression")
    fig = plot_compression(result).to_dict()
    assert [t["name"] for t in fig["data"]] == ["Label loyalty", "Word loyalty", "Accuracy"]
    assert fig["data"][0]["x"][0] == "ICL"
    assert fig["data"][0]["y"][0] == 1.0
    assert fig["layout"]["yaxis"]["title"]["text"] == "Loyalty / accuracy"


def test_compress_command_refuses_bad_options(tmp_path, capsys):
    code = main(["compress", "--model", "toy-gpt2", "--task", "toy-sentiment",
                 "--top-trials", "0", "--out", str(tmp_path)])  # fmt: skip
    assert code == 2
    assert "--top-trials=0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["compress", "--model", "toy-gpt2", "--methods", "hidden", "--out", str(tmp_path)])


def test_compress_engines_give_the_same_results(tmp_path, capsys):
    summaries = {}
    for engine in ("cache", "mask", "fast"):
        out = tmp_path / engine
        # planted-anchor: learned positions, so TL 3.x's HookedTransformer can run the cache.
        code = main(["compress", "--model", "planted-anchor", "--task", "synthetic-k3",
                     "--seeds", "3", "--n-examples", "6", "--top-trials", "2", "--quiet",
                     "--engine", engine, "--out", str(out)])  # fmt: skip
        assert code == 0, capsys.readouterr().err
        summaries[engine] = json.loads((out / "compression.json").read_text())
        assert summaries[engine]["settings"]["engine"] == engine

    def values(engine: str) -> dict[tuple[str, str], float]:
        return {(row["method"], row["metric"]): row["mean"] for row in summaries[engine]["means"]}

    assert len(values("cache")) == 15
    assert values("mask") == pytest.approx(values("cache"), abs=1e-6)
    assert values("fast") == pytest.approx(values("cache"), abs=1e-6)
    assert summaries["mask"]["random_top_trials"] == summaries["cache"]["random_top_trials"]
    trials = [{k: pytest.approx(v, abs=1e-6) for k, v in row.items()}
              for row in summaries["cache"]["random_top_trials"]]  # fmt: skip
    assert summaries["fast"]["random_top_trials"] == trials


def test_compress_mask_engine_refuses_other_position_policies(tmp_path, capsys):
    code = main(["compress", "--model", "demo", "--task", "demo-k3", "--seeds", "3",
                 "--n-examples", "4", "--quiet", "--engine", "mask",
                 "--position-policy", "compact", "--out", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "engine='mask' computes position_policy='original' only" in err
    assert not (tmp_path / "out" / "compression.json").exists()


def test_speedup_plot_has_measured_paper_and_ideal_series():
    fig = plot_speedup({"small": ([61, 18], [3.0, 1.5])}, ideal=([18, 61], [2.0, 9.0])).to_dict()
    names = [t["name"] for t in fig["data"]]
    assert names == ["small", "GPT2-XL (paper)", "GPT-J (paper)", "FLOP-ideal"]
    assert list(fig["data"][0]["x"]) == [18, 61]
    assert list(fig["data"][0]["y"]) == [1.5, 3.0]
    assert fig["layout"]["xaxis"]["title"]["text"].startswith("Demonstration length")
    with pytest.raises(ValueError, match="has 1 lengths and 2 speed-ups"):
        plot_speedup({"bad": ([1], [1.0, 2.0])})
