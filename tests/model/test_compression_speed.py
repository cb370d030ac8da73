"""Timing of compression (Table 3): structure, FLOP arithmetic, files, plots, errors.

No wall-clock thresholds: only that the numbers exist, are positive and finite, and that the
arithmetic around them is right.
"""

from __future__ import annotations

import json

import pytest
import torch

from anchor_flow.applications.compression.engines import CompressionError
from anchor_flow.applications.compression.speed import measure_speedup, measure_token_speedup
from anchor_flow.applications.compression.speedup_result import SpeedupResult, flop_ideal_ratio
from anchor_flow.errors import ResultsError
from anchor_flow.icl.prompts import ICLPrompt
from anchor_flow.report.figures.compression import plot_speedup
from anchor_flow.testbeds.toy import toy_prompts

COLUMNS = ["demo_length", "query_length", "full_ms", "compressed_ms", "build_ms", "speedup",
           "amortised_speedup", "floor_ratio", "flop_ideal", "of_ideal", "of_floor"]  # fmt: skip


def _shared(n, shots, seed):
    prompts = toy_prompts(n, shots_per_class=shots, seed=seed)
    first = prompts[0]
    return [ICLPrompt(first.template, first.label_words, first.demonstrations, p.query)
            for p in prompts]  # fmt: skip


@pytest.fixture
def curve(tl_model):
    """Shared contexts with 2 and 4 demonstrations, plus 2 prompts with their own 6."""
    prompts = _shared(3, 1, 1) + _shared(2, 2, 2) + toy_prompts(2, shots_per_class=3, seed=3)
    return measure_speedup(tl_model, prompts, batch_size=2, repeats=2, warmup=0)


def test_result_structure_and_positive_finite_ratios(curve):
    assert curve.groups == ("2 demonstrations", "4 demonstrations", "6 demonstrations")
    assert curve.n_demonstrations.tolist() == [2, 4, 6]
    assert curve.n_contexts.tolist() == [1, 1, 2]
    assert curve.n_queries.tolist() == [3, 2, 2]
    assert curve.queries_per_build.tolist() == [3.0, 2.0, 1.0]
    frame = curve.to_frame()
    assert set(COLUMNS) <= set(frame.columns)
    assert frame["demo_length"].is_monotonic_increasing
    assert (frame["kept_length"] < frame["demo_length"]).all()
    for name in COLUMNS:
        values = torch.tensor(frame[name].to_numpy())
        assert bool(torch.isfinite(values).all()), name
        assert bool((values > 0).all()), name
    assert torch.allclose(curve.speedup, curve.full_ms / curve.compressed_ms)
    amortised = curve.full_ms / (curve.compressed_ms + curve.build_ms / curve.queries_per_build)
    assert torch.allclose(curve.amortised_speedup, amortised)
    assert curve.settings["batch_size"] == 2
    json.dumps(curve.summary())


def test_flop_ideal_matches_a_hand_computation():
    # full: 13 new tokens, (4*2*2 + 2*2*8) * 13 = 624 linear + 2*2*(13*14/2) = 364 attention;
    # compressed: 3 new after 4 cached, 48 * 3 = 144 + 2*2*(3*4 + 3*4/2) = 72.
    assert flop_ideal_ratio(10, 4, 3, d_model=2, d_mlp=8) == pytest.approx(988 / 216)
    assert flop_ideal_ratio(10, 4, 3, d_model=2) == flop_ideal_ratio(10, 4, 3, d_model=2, d_mlp=8)
    assert flop_ideal_ratio(0, 0, 5, d_model=7) == pytest.approx(1.0)


def test_token_speedup_uses_the_model_width_and_the_given_lengths(tl_model):
    result = measure_token_speedup(tl_model, torch.arange(1, 41), [0, 10, 20, 30],
                                   torch.ones(3, 6, dtype=torch.long), name="t",
                                   n_demonstrations=4, batch_size=2, repeats=1, warmup=1,
                                   amortise_over=100)  # fmt: skip
    row = result.to_frame().iloc[0]
    assert (row["group"], row["n_contexts"], row["n_queries"]) == ("t", 1, 3)
    assert (row["demo_length"], row["kept_length"], row["query_length"]) == (40, 4, 6)
    assert row["queries_per_build"] == 100
    assert row["flop_ideal"] == pytest.approx(flop_ideal_ratio(40, 4, 6, d_model=32))


def test_save_load_round_trip_and_concat(curve, tmp_path):
    curve.save(tmp_path / "speed")
    loaded = SpeedupResult.load(tmp_path / "speed")
    assert loaded.groups == curve.groups
    assert torch.equal(loaded.full_ms, curve.full_ms)
    assert loaded.summary() == curve.summary()
    both = SpeedupResult.concat([curve, loaded])
    assert len(both.groups) == 6
    with pytest.raises(ResultsError, match=r"speedup\.npz"):
        SpeedupResult.load(tmp_path / "missing")


def test_plot_shows_measured_amortised_floor_ideal_and_paper(curve):
    fig = plot_speedup(curve).to_dict()
    names = [trace["name"] for trace in fig["data"]]
    assert names == ["Speed-up (cache pre-built)", "Amortised (incl. cache build)",
                     "GPT2-XL (paper)", "GPT-J (paper)", "Floor (query alone)",
                     "FLOP-ideal"]  # fmt: skip
    assert list(fig["data"][0]["x"]) == curve.demo_length.tolist()
    assert list(fig["data"][0]["y"]) == pytest.approx(curve.speedup.tolist())
    assert list(fig["data"][5]["y"]) == pytest.approx(curve.flop_ideal.tolist())
    assert fig["layout"]["xaxis"]["title"]["text"].startswith("Demonstration length")
    assert fig["layout"]["yaxis"]["title"]["text"] == "Speed-up (×)"
    bare = plot_speedup(curve, paper=False).to_dict()
    assert len(bare["data"]) == 4


def test_bad_input_raises_clear_errors(tl_model):
    prompts = toy_prompts(1)
    with pytest.raises(CompressionError, match="got no prompts"):
        measure_speedup(tl_model, [])
    with pytest.raises(CompressionError, match="batch_size=0; expected an integer >= 1"):
        measure_speedup(tl_model, prompts, batch_size=0)
    with pytest.raises(CompressionError, match="repeats=0"):
        measure_speedup(tl_model, prompts, repeats=0)
    with pytest.raises(CompressionError, match="warmup=-1; expected an integer >= 0"):
        measure_speedup(tl_model, prompts, warmup=-1)
    with pytest.raises(CompressionError, match="amortise_over=0"):
        measure_speedup(tl_model, prompts, amortise_over=0)
    with pytest.raises(CompressionError, match=r"query_tokens has shape \(1, 0\)"):
        measure_token_speedup(tl_model, torch.arange(5), [0], torch.ones(1, 0, dtype=torch.long))
    with pytest.raises(CompressionError, match="strictly increasing"):
        measure_token_speedup(tl_model, torch.arange(5), [3, 1], torch.ones(1, 2, dtype=torch.long))
    with pytest.raises(CompressionError, match="expected 0 <= kept <= context and query > 0"):
        flop_ideal_ratio(4, 5, 1, d_model=8)
    one = torch.ones(1, dtype=torch.float64)
    with pytest.raises(CompressionError, match="expected one value per group"):
        SpeedupResult(("a", "b"), torch.ones(1, dtype=torch.long), *[one] * 3,
                      torch.ones(1, dtype=torch.long), torch.ones(1, dtype=torch.long),
                      *[one] * 6)  # fmt: skip
    with pytest.raises(ValueError, match="has 1 lengths and 2 speed-ups"):
        plot_speedup({"bad": ([1], [1.0, 2.0])})
