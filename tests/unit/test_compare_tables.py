"""The comparison's pure rows (issue 25) and its folder reader's refusals, without a model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from anchor_flow.errors import ResultsError
from anchor_flow.report.compare.folders import read_folder
from anchor_flow.report.compare.tables import (
    differing_settings,
    finding_rows,
    format_value,
    shown_isolation_count,
)


@pytest.mark.parametrize(
    ("counts", "n_shallow", "expected"),
    [([1, 3, 5, 7], 4, 3), ([3, 5], 2, 3), ([1, 3], None, 3), ([0, 1, 3], 2, 1), ([], 2, None)],
)
def test_the_isolation_count_shown_follows_c3s_rule(
    counts: list[int], n_shallow: int | None, expected: int | None
) -> None:
    assert shown_isolation_count(counts, n_shallow) == expected


def test_findings_rows_keep_what_a_later_version_adds() -> None:
    rows = finding_rows([
        {"claim": "C2", "subject": "null model", "verdict": "inconclusive", "value": None,
         "interval": [None, None], "details": {"k": 1}, "layers": [4, 5]},
        {"claim": "Z9", "verdict": "holds", "value": 0.3, "interval": [0.1, 0.5],
         "reason": "a claim of a later version"},
    ])  # fmt: skip
    first, second = rows.to_dict("records")
    assert first["claim_title"] == "C2: deep layers: the target reads the label words"
    assert math.isnan(first["value"])
    assert math.isnan(first["ci_low"])
    assert first["details"] == '{"k": 1}'
    assert first["layers"] == "[4, 5]"
    assert (second["claim_title"], second["subject"]) == ("Z9", "model")
    assert (second["ci_low"], second["ci_high"]) == (0.1, 0.5)
    assert second["reason"] == "a claim of a later version"


def test_settings_that_differ_and_those_shared() -> None:
    a = {"model": {"name": "gpt2", "n_layers": 12}, "settings": {"task": "sst2", "seeds": [42]}}
    b = {"model": {"name": "gpt2-xl", "n_layers": 48}, "settings": {"task": "sst2"}}
    frame, shared = differing_settings([a, b], ["small", "xl"])
    wide = frame.pivot(index="setting", columns="run", values="value")
    assert wide.loc["model n_layers"].tolist() == ["12", "48"]
    assert wide.loc["seeds"].tolist() == ["[42]", "(not recorded)"]
    assert shared["task"] == "sst2"
    assert "task" not in wide.index


def test_format_value() -> None:
    assert [format_value(x) for x in (0.123456, None, float("nan"), 2, "x")] == [
        "0.123", "n/a", "n/a", "2", "x"]  # fmt: skip


def test_read_folder_refuses_what_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match=r"'.*nowhere' is not a folder"):
        read_folder(tmp_path / "nowhere")
    with pytest.raises(ResultsError, match=r"holds no results\.json"):
        read_folder(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ResultsError, match=r"cannot read .*results\.json"):
        read_folder(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps(["a", "list"]))
    with pytest.raises(ResultsError, match=r"holds schema None; expected 'anchor_flow\.run/1'"):
        read_folder(tmp_path)


def test_a_bare_older_record_is_read_and_named(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text(json.dumps({"schema": "anchor_flow.run/0"}))
    run = read_folder(tmp_path)
    what = dict(run.missing)
    assert "schema 'anchor_flow.run/0'" in what["results.json"]
    assert what["saliency"] == "not run"
    assert what["heads"] == "no heads experiment"
    assert what["model"] == "results.json records no n_layers: no relative depth"
    assert run.n_layers is None
