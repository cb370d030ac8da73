"""One results folder as the comparison reads it: its record, its tables, what it lacks.

:func:`read_folder` reads ``results.json`` and, for each experiment the record marks
complete, the CSV (or JSON summary) its step wrote (:data:`READS`). Nothing is dropped
silently: an experiment that was not run, is not complete, lacks a file or a column, a run
without findings or a null model, an older record schema — each becomes a line of
:attr:`FolderRun.missing` (experiment, what). A folder without a run record, or whose record
is not an anchor-flow run's, is refused with one line (:class:`~anchor_flow.errors.ResultsError`).

Tolerant by design: extra columns and extra findings keys (claims added later, reason lines)
pass through; only the columns listed in :data:`COLUMNS` are required.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from anchor_flow.errors import ResultsError
from anchor_flow.results.record import SCHEMA

__all__ = ["COLUMNS", "READS", "FolderRun", "read_folder"]

#: What the comparison reads of each experiment, in the page's order. ``heads`` is the anchor
#: heads experiment (heads/top_heads.csv, heads/causal.csv), present in newer runs only.
READS: dict[str, tuple[str, ...]] = {
    "saliency": ("flows.csv",),
    "isolation": ("isolation.csv",),
    "deep": ("deep.csv",),
    "reweighting": ("reweighting.csv",),
    "compression": ("compression.csv", "compression_speed.csv"),
    "diagnosis": ("diagnosis.json",),
    "heads": ("heads/top_heads.csv", "heads/causal.csv"),
}
#: Per CSV: the columns without which it is not shown, and those filled with NaN if absent.
COLUMNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "flows.csv": (("layer", "flow", "normalised"),
                  ("mean", "ci_low", "ci_high", "normalised_ci_low", "normalised_ci_high",
                   "n_prompts")),
    "isolation.csv": (("control", "position", "n_layers", "metric", "mean"),
                      ("ci_low", "ci_high", "n_prompts")),
    "deep.csv": (("layer", "auc_roc"), ("ci_low", "ci_high", "r", "n_prompts")),
    "reweighting.csv": (("condition", "metric", "mean"), ("ci_low", "ci_high", "n_prompts")),
    "compression.csv": (("method", "metric", "mean"), ("ci_low", "ci_high", "n_prompts")),
    "compression_speed.csv": (("n_demonstrations", "speedup"), ("flop_ideal", "full_ms",
                                                                "compressed_ms")),
    "heads/top_heads.csv": (("kind", "rank", "layer", "head", "share"), ("ci_low", "ci_high")),
    "heads/causal.csv": (("arm", "metric", "mean"), ("ci_low", "ci_high", "n_prompts")),
}  # fmt: skip
_NOT_RUN = {"heads": "no heads experiment"}


@dataclass(frozen=True)
class FolderRun:
    """One results folder: its record, the tables read from it and what it lacks.

    Attributes:
        path: the folder.
        record: ``results.json`` as read (possibly of an older schema).
        n_layers: the model's layer count (from the record, else from its CSVs; None if
            neither says).
        tables: file name (``READS``) -> its frame, for the files that could be read.
        findings: ``results.json["findings"]`` entries (dicts), as written.
        missing: (experiment or part, what is missing) lines, in the page's order.
    """

    path: Path
    record: dict[str, Any]
    n_layers: int | None
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    findings: tuple[dict[str, Any], ...] = ()
    missing: tuple[tuple[str, str], ...] = ()

    @property
    def model(self) -> str:
        model = self.record.get("model", {})
        return str(model.get("source") or model.get("name") or "model?")

    @property
    def task(self) -> str:
        resolved = self.record.get("settings_resolved", {})
        return str(resolved.get("task") or self.record.get("settings", {}).get("task", "task?"))

    @property
    def n_shallow(self) -> int | None:
        """How many layers the findings call shallow (C3's isolation count follows it)."""
        shallow = self.record.get("claim_layers", {}).get("shallow")
        if isinstance(shallow, list) and shallow:
            return len(shallow)
        return None if self.n_layers is None else math.ceil(self.n_layers / 3)


def _record(path: Path) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    if not path.is_dir():
        raise ResultsError(
            f"{str(path)!r} is not a folder; expected a results folder written by "
            "`anchor-flow run` (it holds results.json)"
        )
    file = path / "results.json"
    if not file.is_file():
        raise ResultsError(
            f"{str(path)!r} holds no results.json; expected a results folder written by "
            "`anchor-flow run` / run_experiments"
        )
    try:
        record = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResultsError(
            f"cannot read {str(file)!r}: {' '.join(str(error).split())}; expected the "
            "results.json written by `anchor-flow run`"
        ) from None
    schema = record.get("schema") if isinstance(record, dict) else None
    if not isinstance(schema, str) or not schema.startswith(SCHEMA.split("/")[0] + "/"):
        raise ResultsError(
            f"{str(file)!r} holds schema {schema!r}; expected {SCHEMA!r} (the record of "
            "`anchor-flow run`)"
        )
    assert isinstance(record, dict)
    notes = []
    if schema != SCHEMA:
        notes.append(("results.json", f"schema {schema!r}, this version writes {SCHEMA!r}: "
                                      "shown as far as its files allow"))  # fmt: skip
    return record, notes


def _table(path: Path, name: str, missing: list[tuple[str, str]], experiment: str) -> Any:
    file = path / name
    if not file.is_file():
        missing.append((experiment, f"{name} missing although the experiment is complete"))
        return None
    if name.endswith(".json"):
        try:
            return json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as error:
            missing.append((experiment, f"{name} unreadable ({type(error).__name__})"))
            return None
    try:
        frame = pd.read_csv(file)
    except (OSError, ValueError) as error:  # pandas' parser errors are ValueErrors
        missing.append((experiment, f"{name} unreadable ({type(error).__name__})"))
        return None
    required, optional = COLUMNS[name]
    lacking = [c for c in required if c not in frame.columns]
    if lacking:
        missing.append((experiment, f"{name} lacks column(s) {', '.join(lacking)}; not shown"))
        return None
    absent = [c for c in optional if c not in frame.columns]
    if absent:
        missing.append((experiment, f"{name} has no {', '.join(absent)} (an older run): "
                                    "shown without"))  # fmt: skip
        for column in absent:
            frame[column] = float("nan")
    return frame


def _n_layers(
    record: dict[str, Any], tables: dict[str, Any], missing: list[tuple[str, str]]
) -> int | None:
    n = record.get("model", {}).get("n_layers")
    if isinstance(n, int) and n > 0:
        return n
    seen = [int(t["layer"].max()) + 1 for k, t in tables.items()
            if k in ("flows.csv", "deep.csv") and len(t)]  # fmt: skip
    if seen:
        missing.append(("model", f"results.json records no n_layers; {max(seen)} read from "
                                 "the layers of its CSVs"))  # fmt: skip
        return max(seen)
    missing.append(("model", "results.json records no n_layers: no relative depth"))
    return None


def read_folder(directory: str | Path) -> FolderRun:
    """Read one results folder for the comparison (see the module doc).

    Example:
        >>> run = read_folder("results/demo-demo-k3")  # doctest: +SKIP
        >>> run.n_layers, run.missing[:1]  # doctest: +SKIP
        (6, (('heads', 'no heads experiment'),))

    Raises:
        ResultsError: not a folder, no ``results.json``, or a record of another kind.
    """
    path = Path(directory)
    record, missing = _record(path)
    entries = record.get("experiments")
    entries = entries if isinstance(entries, dict) else {}
    tables: dict[str, Any] = {}
    for experiment, files in READS.items():
        entry = entries.get(experiment)
        if not isinstance(entry, dict):
            missing.append((experiment, _NOT_RUN.get(experiment, "not run")))
            continue
        status = entry.get("status")
        if status != "complete":
            error = f": {entry['error']}" if entry.get("error") else ""
            missing.append((experiment, f"incomplete (status {status!r}{error}); not shown"))
            continue
        for name in files:
            table = _table(path, name, missing, experiment)
            if table is not None:
                tables[name] = table
    findings = record.get("findings")
    if not isinstance(findings, list):
        missing.append(("findings", "results.json has no findings (a run before issue 16)"))
        findings = []
    findings = [f for f in findings if isinstance(f, dict) and "claim" in f]
    null = record.get("null_model")
    if isinstance(null, dict) and null.get("status") != "complete":
        missing.append(("null model", str(null.get("reason") or "not run")))
    elif not isinstance(null, dict) and findings:
        missing.append(("null model", "results.json records none"))
    n_layers = _n_layers(record, tables, missing)
    return FolderRun(path, record, n_layers, tables, tuple(findings), tuple(missing))
