"""The comparison's rows, from one run's files: findings, isolation, applications, settings.

Pure functions of frames and records (no files, no model). Each keeps what a run wrote:
the findings pass every key through (claims, subjects and keys added later included),
the applications' headline numbers are the CSV rows themselves (re-weighting's gain is the
difference of the two means, shown beside both intervals).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from anchor_flow.analysis.findings.verdicts import CLAIMS

__all__ = [
    "application_rows",
    "differing_settings",
    "finding_rows",
    "format_value",
    "isolation_rows",
    "shown_isolation_count",
]

_SCALAR = (str, int, float, bool, type(None))
_FINDING_COLUMNS = ("claim", "claim_title", "subject", "verdict", "value", "ci_low", "ci_high",
                    "statistic", "no_effect", "control", "control_value", "sentence",
                    "n_prompts")  # fmt: skip
NOT_RECORDED = "(not recorded)"


def format_value(x: Any) -> str:
    """Three significant digits; "n/a" for None and NaN."""
    if x is None:
        return "n/a"
    try:
        value = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "n/a" if math.isnan(value) else f"{value:.3g}"


def _number(x: Any) -> float:
    try:
        return float(x) if x is not None else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def finding_rows(findings: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per finding (``Finding.to_dict()`` entries); unknown keys kept as columns."""
    rows = []
    for f in findings:
        interval = f.get("interval")
        low, high = (interval if isinstance(interval, list | tuple) and len(interval) == 2
                     else (None, None))  # fmt: skip
        claim = str(f["claim"])
        row: dict[str, Any] = {
            "claim": claim, "claim_title": f"{claim}: {CLAIMS[claim]}" if claim in CLAIMS
            else claim, "subject": str(f.get("subject") or "model"),
            "verdict": f.get("verdict", "n/a"), "value": _number(f.get("value")),
            "ci_low": _number(low), "ci_high": _number(high),
            "statistic": f.get("statistic"), "no_effect": _number(f.get("no_effect")),
            "control": f.get("control"), "control_value": _number(f.get("control_value")),
            "sentence": f.get("sentence"), "n_prompts": f.get("n_prompts"),
        }  # fmt: skip
        for key, value in f.items():
            if key not in row and key != "interval":
                row[key] = value if isinstance(value, _SCALAR) else json.dumps(value, default=str)
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame if rows else pd.DataFrame(columns=list(_FINDING_COLUMNS))


def shown_isolation_count(counts: Sequence[int], n_shallow: int | None) -> int | None:
    """The isolated layer count the page shows: the largest not above the shallow layers of
    the findings (C3's rule), else the smallest."""
    counts = sorted({int(c) for c in counts if int(c) > 0})
    if not counts:
        return None
    if n_shallow is None:
        return counts[-1]
    return max([c for c in counts if c <= n_shallow], default=counts[0])


def isolation_rows(frame: pd.DataFrame, n_shallow: int | None) -> pd.DataFrame:
    """isolation.csv with ``isolated_layers``, ``depth_part`` (shallow / deep) and ``shown``."""
    frame = frame.rename(columns={"n_layers": "isolated_layers"}).copy()
    frame.insert(
        list(frame.columns).index("position") + 1,
        "depth_part",
        frame["position"].map({"first": "shallow", "last": "deep"}).fillna("none"),
    )
    k = shown_isolation_count(frame["isolated_layers"].tolist(), n_shallow)
    frame["shown"] = (frame["isolated_layers"] == k) & (frame["depth_part"] != "none")
    return frame


def _row(frame: pd.DataFrame, match: Mapping[str, str]) -> pd.Series | None:
    mask = pd.Series(True, index=frame.index)
    for column, value in match.items():
        mask &= frame[column] == value
    hits = frame[mask]
    return None if hits.empty else hits.iloc[0]


def _headline(application: str, quantity: str, row: pd.Series, source: str) -> dict[str, Any]:
    return {"application": application, "quantity": quantity, "mean": _number(row["mean"]),
            "ci_low": _number(row.get("ci_low")), "ci_high": _number(row.get("ci_high")),
            "n_prompts": row.get("n_prompts"), "source": source}  # fmt: skip


def application_rows(tables: Mapping[str, Any]) -> pd.DataFrame:
    """The applications' headline numbers of one run (those its files hold)."""
    rows: list[dict[str, Any]] = []
    reweighting = tables.get("reweighting.csv")
    if reweighting is not None:
        accuracy = {c: _row(reweighting, {"condition": c, "metric": "accuracy"})
                    for c in ("re-weighted", "vanilla 1-shot", "vanilla k-shot")}  # fmt: skip
        for condition, row in accuracy.items():
            if row is not None:
                rows.append(_headline("re-weighting", f"{condition} accuracy", row,
                                      "reweighting.csv"))  # fmt: skip
        if accuracy["re-weighted"] is not None and accuracy["vanilla 1-shot"] is not None:
            gain = _number(accuracy["re-weighted"]["mean"]) - _number(
                accuracy["vanilla 1-shot"]["mean"]
            )
            rows.append({"application": "re-weighting", "quantity":
                         "gain over vanilla 1-shot (difference of the means above)",
                         "mean": gain, "ci_low": float("nan"), "ci_high": float("nan"),
                         "n_prompts": accuracy["re-weighted"].get("n_prompts"),
                         "source": "reweighting.csv"})  # fmt: skip
    compression = tables.get("compression.csv")
    if compression is not None:
        for method, metric in (("hidden_anchor", "label_loyalty"), ("hidden_anchor",
                               "word_loyalty"), ("hidden_random", "label_loyalty"),
                               ("hidden_anchor", "accuracy"), ("icl", "accuracy")):  # fmt: skip
            row = _row(compression, {"method": method, "metric": metric})
            if row is not None:
                rows.append(_headline("compression", f"{method} {metric}", row,
                                      "compression.csv"))  # fmt: skip
    speed = tables.get("compression_speed.csv")
    if speed is not None and len(speed):
        row = speed.loc[speed["n_demonstrations"].idxmax()]
        n = int(row["n_demonstrations"])
        for column, quantity in (("speedup", "speed-up"), ("flop_ideal", "FLOP-ideal speed-up")):
            rows.append({"application": "compression", "quantity":
                         f"{quantity} ({n} demonstrations)", "mean": _number(row[column]),
                         "ci_low": float("nan"), "ci_high": float("nan"), "n_prompts": None,
                         "source": "compression_speed.csv"})  # fmt: skip
    diagnosis = tables.get("diagnosis.json")
    if isinstance(diagnosis, dict):
        spearman = diagnosis.get("spearman") or {}
        rows.append({"application": "diagnosis", "quantity":
                     "Spearman(predicted, real confusion)", "mean": _number(spearman.get("mean")),
                     "ci_low": _number(spearman.get("ci_low")),
                     "ci_high": _number(spearman.get("ci_high")), "n_prompts": None,
                     "source": "diagnosis.json"})  # fmt: skip
    return pd.DataFrame(rows)


def _flat(record: Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {f"model {k}": v for k, v in record.get("model", {}).items()}
    settings = record.get("settings", {})
    flat.update(settings)
    for key, value in record.get("settings_resolved", {}).items():
        if settings.get(key, NOT_RECORDED) != value:
            flat[f"{key} (resolved)"] = value
    flat.update({f"version {k}": v for k, v in record.get("versions", {}).items()})
    experiments = record.get("experiments", {})
    flat["experiments"] = [n for n, e in experiments.items() if isinstance(e, dict)]
    return flat


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)


def differing_settings(
    records: Sequence[Mapping[str, Any]], labels: Sequence[str]
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(setting, run, value) for the settings that differ, and the settings all runs share."""
    flats = [_flat(r) for r in records]
    keys = list(dict.fromkeys(k for flat in flats for k in flat))
    rows, shared = [], {}
    for key in keys:
        values = [_text(flat.get(key, NOT_RECORDED)) for flat in flats]
        if len(set(values)) == 1:
            shared[key] = flats[0][key]
            continue
        rows += [{"setting": key, "run": label, "value": value}
                 for label, value in zip(labels, values, strict=True)]  # fmt: skip
    return pd.DataFrame(rows, columns=["setting", "run", "value"]), shared
