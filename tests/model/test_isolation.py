"""Isolation (paper §2.2) on tiny and planted models: acceptance, batching, results, plots."""

from __future__ import annotations

import pytest
import torch

from anchor_flow.analysis.isolation import IsolationResult, run_isolation
from anchor_flow.models.loading import load_model
from anchor_flow.report.figures.analysis import plot_isolation
from anchor_flow.testbeds.synthetic import synthetic_prompts
from anchor_flow.testbeds.toy import toy_prompts
from conftest import assert_no_hooks


@pytest.fixture(scope="module")
def planted_results():
    """Label/random isolation of layer 0 (first 1) and layer 1 (last 1) on both planted models."""
    torch.set_num_threads(1)
    prompts = synthetic_prompts(100, k=3, seed=5)
    out = {}
    for kind in ("anchor", "formatting"):
        model = load_model(f"planted-{kind}")
        out[kind] = run_isolation(model, prompts, batch_size=50, seed=0, progress=False)
        assert_no_hooks(model)
    return out


def mean(result: IsolationResult, control: str, position: str, metric: str) -> float:
    frame = result.summary_frame()
    row = frame[
        (frame.control == control) & (frame.position == position) & (frame.metric == metric)
    ]
    assert len(row) == 1
    return float(row["mean"].iloc[0])


def test_label_isolation_in_layer_0_collapses_label_loyalty_on_planted_anchor(planted_results):
    result = planted_results["anchor"]
    assert result.settings["layer_counts"] == [1]  # two layers: first 1 = layer 0, last 1 = 1
    assert mean(result, "label", "first", "label_loyalty") < 0.6  # 3 classes: chance 1/3
    assert mean(result, "random", "first", "label_loyalty") > 0.85
    assert mean(result, "label", "last", "label_loyalty") > 0.95
    assert mean(result, "random", "last", "label_loyalty") > 0.95
    assert mean(result, "label", "first", "word_loyalty") < mean(
        result, "random", "first", "word_loyalty"
    )


def test_label_isolation_is_harmless_on_planted_formatting(planted_results):
    result = planted_results["formatting"]
    for position in ("first", "last"):
        assert mean(result, "label", position, "label_loyalty") > 0.95
        assert mean(result, "label", position, "word_loyalty") > 0.95


def test_isolation_on_tiny_models_is_batch_independent_and_reproducible(tl_model):
    prompts = toy_prompts(6, seed=3) + toy_prompts(3, shots_per_class=2, seed=4)
    kwargs = {"layer_counts": (1,), "top_k": 3, "seed": 7, "progress": False}
    batched = run_isolation(tl_model, prompts, batch_size=4, **kwargs)
    single = run_isolation(tl_model, prompts, batch_size=1, **kwargs)
    assert torch.equal(batched.predictions, single.predictions)
    assert torch.allclose(batched.word_jaccard, single.word_jaccard)
    assert [c.name for c in batched.conditions] == [
        "label, first 1", "label, last 1", "random, first 1", "random, last 1",
    ]  # fmt: skip
    other_seed = run_isolation(tl_model, prompts, batch_size=4, **{**kwargs, "seed": 8})
    assert batched.run_names == ("seed-7",)
    assert other_seed.run_names == ("seed-8",)
    pooled = IsolationResult.concat([batched, other_seed])
    assert pooled.n_prompts == 18
    assert set(pooled.summary_frame()["ci_over"]) == {"runs"}
    assert_no_hooks(tl_model)


def test_zero_mode_and_bad_layer_counts(tl_model):
    prompts = toy_prompts(4, seed=3)
    result = run_isolation(tl_model, prompts, layer_counts=(2,), positions=("first",),
                           controls=("label",), mode="zero", progress=False)  # fmt: skip
    assert result.settings["mode"] == "zero"
    assert len(result.conditions) == 1
    from anchor_flow.analysis.blocking import BlockingError

    with pytest.raises(BlockingError, match=r"layer_counts \[3\] out of range; expected 1..2"):
        run_isolation(tl_model, prompts, layer_counts=(1, 3), progress=False)


def test_plot_isolation_bars_with_intervals(planted_results):
    figure = plot_isolation(planted_results["anchor"]).to_dict()
    assert [t["type"] for t in figure["data"]] == ["bar", "bar"]
    assert [t["name"] for t in figure["data"]] == ["Label loyalty", "Word loyalty"]
    label = figure["data"][0]
    assert list(label["x"]) == [
        "label words, first 1", "label words, last 1", "random, first 1", "random, last 1",
    ]  # fmt: skip
    assert label["y"][0] < 0.6
    assert label["y"][1] > 0.95
    assert len(label["error_y"]["array"]) == 4
    assert figure["layout"]["yaxis"]["title"]["text"] == "Loyalty"
    assert figure["layout"]["barmode"] == "group"
    with_accuracy = plot_isolation(planted_results["anchor"], metrics=("accuracy",)).to_dict()
    assert [t["name"] for t in with_accuracy["data"]] == ["Accuracy"]
    from anchor_flow.errors import AnchorFlowError

    with pytest.raises(AnchorFlowError, match="expected a non-empty subset"):
        plot_isolation(planted_results["anchor"], metrics=("loyalty",))
