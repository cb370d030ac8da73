"""What the pooled result classes share: means over runs (stats.run_means), concat and files
(result_runs.PooledResult, result_files.StoredResult), the loyalty metrics (loyalty)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import Tensor

from anchor_flow.analysis.loyalty import LoyaltyResult
from anchor_flow.errors import AnchorFlowError, ResultsError
from anchor_flow.results.runs import PooledResult
from anchor_flow.results.stats import bootstrap_interval, run_means


@dataclass(frozen=True)
class Pooled(PooledResult):
    """A minimal pooled result: a per-prompt table on axis 1 and a per-run one on axis 0."""

    table: Tensor  # [2, prompt]
    per_run: Tensor  # [run]
    run: Tensor
    run_names: tuple[str, ...]
    label: str = "x"
    settings: dict[str, Any] = field(default_factory=dict)

    _STEM, _SCHEMA, _WHAT = "pooled", "test.pooled/1", "a pooled test result"
    _ARRAYS = ("table", "per_run", "run")
    _ON_AXIS_1 = ("table",)

    def __post_init__(self) -> None:
        self._check_run_indices()
        self._detach_arrays()

    def _meta(self) -> dict[str, Any]:
        return {**super()._meta(), "label": self.label}

    @classmethod
    def _fields_from_meta(cls, meta: Any) -> dict[str, Any]:
        return {**super()._fields_from_meta(meta), "label": meta["label"]}


@dataclass(frozen=True)
class Loyal(LoyaltyResult):
    baseline_predictions: Tensor
    predictions: Tensor
    word_jaccard: Tensor
    gold: Tensor
    run: Tensor
    run_names: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)

    _STEM, _SCHEMA, _WHAT = "loyal", "test.loyal/1", "a loyalty test result"
    _ARRAYS = ("baseline_predictions", "predictions", "word_jaccard", "gold", "run")

    def __post_init__(self) -> None:
        self._check_outcome_shapes(1, "outcomes", "outcome")
        self._detach_arrays()


def pooled(names: tuple[str, ...], n_prompts: int = 3, label: str = "x") -> Pooled:
    runs = torch.arange(n_prompts) % len(names)
    table = torch.arange(2 * n_prompts, dtype=torch.float64).reshape(2, n_prompts)
    return Pooled(table, torch.ones(len(names)), runs, names, label, {"k": 1})


def test_run_means_weigh_runs_equally_and_bootstrap_over_runs_or_prompts():
    values = torch.tensor([[1.0, 0.0, 0.0, 1.0, math.nan], [1.0, 1.0, 1.0, 0.0, 1.0]])
    run = torch.tensor([0, 0, 0, 1, 1])
    two = run_means(values, run, 2, level=0.9)
    # Run 0: 1/3 and 1; run 1: 1 (NaN left out) and 1/2; each run weighs the same.
    per_run = torch.tensor([[1 / 3, 1.0], [1.0, 0.5]], dtype=torch.float32)
    torch.testing.assert_close(two.mean, torch.tensor([2 / 3, 0.75]))
    low, high = bootstrap_interval(per_run, lambda v: v.nanmean(0), level=0.9)
    assert two.ci_over == "runs"
    torch.testing.assert_close((two.ci_low, two.ci_high), (low, high))
    one = run_means(values, torch.zeros(5, dtype=torch.long), 1)
    low, high = bootstrap_interval(values.T, lambda v: v.nanmean(0))
    assert one.ci_over == "prompts"
    torch.testing.assert_close((one.ci_low, one.ci_high), (low, high))
    row = one.row(1)
    assert row == {"mean": pytest.approx(0.8), "ci_low": float(low[1]), "ci_high": float(high[1])}


def test_concat_pools_tensors_on_their_axis_offsets_runs_and_keeps_the_other_fields():
    a, b = pooled(("seed-0", "seed-1")), pooled(("seed-2",), n_prompts=2, label="y")
    both = Pooled.concat([a, b])
    assert both.run_names == ("seed-0", "seed-1", "seed-2")
    assert both.n_runs == 3
    assert both.run.tolist() == [0, 1, 0, 2, 2]
    assert torch.equal(both.table, torch.cat([a.table, b.table], dim=1))
    assert both.per_run.shape == (3,)
    assert (both.label, both.settings) == ("x", {"k": 1})
    assert both.settings is not a.settings


def test_concat_and_run_index_errors():
    with pytest.raises(AnchorFlowError, match="concat needs at least one Pooled; got none"):
        Pooled.concat([])
    with pytest.raises(AnchorFlowError, match="run names must be unique across results"):
        Pooled.concat([pooled(("a",)), pooled(("a",))])
    with pytest.raises(AnchorFlowError, match=r"run indices must index run_names \('a',\)"):
        Pooled(torch.zeros(2, 1), torch.ones(1), torch.tensor([1]), ("a",))


def test_save_load_round_trip_keeps_meta_fields_and_checks_the_schema(tmp_path):
    result = pooled(("a", "b"), label="z")
    result.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pooled.npz", "pooled_meta.json"]
    back = Pooled.load(tmp_path)
    assert (back.run_names, back.label, back.settings) == (("a", "b"), "z", {"k": 1})
    assert torch.equal(back.table, result.table)
    assert torch.equal(back.run, result.run)
    with pytest.raises(ResultsError, match=r"pooled\.npz and pooled_meta\.json"):
        Pooled.load(tmp_path / "missing")


def test_loyalty_result_metrics_and_shape_errors():
    result = Loyal(
        baseline_predictions=torch.tensor([0, 1, 1]), predictions=torch.tensor([[0, 0, 1]]),
        word_jaccard=torch.tensor([[1.0, 0.5, 0.25]]), gold=torch.tensor([0, 0, -1]),
        run=torch.zeros(3, dtype=torch.long), run_names=("seed-0",),
    )  # fmt: skip
    assert result.n_prompts == 3
    assert result.per_prompt("label_loyalty").tolist() == [[1.0, 0.0, 1.0]]
    assert result.per_prompt("word_loyalty").tolist() == [[1.0, 0.5, 0.25]]
    accuracy = result.per_prompt("accuracy")[0]
    assert accuracy[:2].tolist() == [1.0, 1.0]
    assert math.isnan(accuracy[2])
    baseline = result.baseline_accuracy()
    assert baseline[:2].tolist() == [1.0, 0.0]
    assert math.isnan(baseline[2])
    with pytest.raises(AnchorFlowError, match="metric='x'; expected one of"):
        result.per_prompt("x")
    with pytest.raises(AnchorFlowError, match=r"Loyal with 1 outcomes and 3 prompts got shapes "):
        Loyal(torch.tensor([0, 1, 1]), torch.tensor([[0, 0]]), torch.ones(1, 3),
              torch.zeros(3).long(), torch.zeros(3).long(), ("a",))  # fmt: skip


def test_a_corrupt_archive_is_a_results_error_not_a_traceback(tmp_path) -> None:
    from anchor_flow.analysis.deep import DeepResult
    from anchor_flow.analysis.saliency.result import SaliencyResult
    from anchor_flow.errors import ResultsError

    for stem, cls in (("deep", DeepResult), ("saliency", SaliencyResult)):
        folder = tmp_path / stem
        folder.mkdir()
        (folder / f"{stem}_meta.json").write_text("{}")
        (folder / f"{stem}.npz").write_bytes(b"PK\x03\x04 truncated by a full disk")
        with pytest.raises(ResultsError, match="cannot read"):
            cls.load(folder)
