"""Several runs side by side: :func:`compare_runs` and the frozen :class:`RunComparison`.

Every frame is long and keyed by run (``run``: a label from the model and the task, with the
folder name added where two runs share both; ``model``; ``task``). Per-layer frames also
carry ``n_layers`` and ``depth`` = layer / (n_layers - 1), so that a 6-layer and a 48-layer
model share one axis from 0 (first layer) to 1 (last). Values are the runs' own numbers as
their CSVs hold them (flows.csv, deep.csv, isolation.csv, reweighting.csv, compression.csv,
compression_speed.csv, diagnosis.json, heads/*.csv) and their findings from results.json;
nothing is recomputed, and what a run lacks is listed in :attr:`RunComparison.missing`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd

from anchor_flow.errors import ResultsError
from anchor_flow.report.compare.folders import FolderRun, read_folder
from anchor_flow.report.compare.tables import (
    application_rows,
    differing_settings,
    finding_rows,
    format_value,
    isolation_rows,
)

__all__ = ["KEYS", "RunComparison", "compare_runs"]

KEYS = ("run", "model", "task")
_FRAMES = ("runs", "settings", "missing", "findings", "flows", "deep", "isolation",
           "applications", "heads", "heads_causal")  # fmt: skip


@dataclass(frozen=True)
class RunComparison:
    """Runs side by side (issue 25): long frames keyed by run, from their results folders.

    Example:
        >>> comparison = compare_runs(["results/demo", "results/planted"])  # doctest: +SKIP
        >>> comparison.flows[["run", "depth", "flow", "normalised"]]  # doctest: +SKIP
        >>> plot_compare_flows(comparison)  # doctest: +SKIP

    Attributes:
        runs: one row per run: run, model, task, path, n_layers, null_model, schema,
            complete (the experiments the record marks complete).
        settings: (setting, run, value) for the settings that differ between runs.
        missing: (run, experiment, what) for everything a run lacks.
        findings: one row per run, claim and subject (model / null model / ...): verdict,
            value, ci_low, ci_high, statistic, control, control_value, and any other keys
            the record holds.
        flows: flows.csv of each run: layer, depth, flow, mean and normalised, with intervals.
        deep: deep.csv of each run: layer, depth, auc_roc, ci_low, ci_high, r.
        isolation: isolation.csv of each run (its ``n_layers`` renamed ``isolated_layers``)
            with ``depth_part`` (shallow / deep) and ``shown`` (the count the page shows).
        applications: headline numbers: application, quantity, mean, ci_low, ci_high, source.
        heads: heads/top_heads.csv of each run (with depth); empty when no run has it.
        heads_causal: heads/causal.csv of each run; empty when no run has it.
        shared_settings: the settings every run has in common.
    """

    runs: pd.DataFrame
    settings: pd.DataFrame
    missing: pd.DataFrame
    findings: pd.DataFrame
    flows: pd.DataFrame
    deep: pd.DataFrame
    isolation: pd.DataFrame
    applications: pd.DataFrame
    heads: pd.DataFrame
    heads_causal: pd.DataFrame
    shared_settings: dict[str, Any]

    def __post_init__(self) -> None:
        if self.runs.empty:
            raise ResultsError("a RunComparison needs at least one run")

    @property
    def labels(self) -> list[str]:
        """The runs' labels, in the order they were given."""
        return [str(label) for label in self.runs["run"]]

    def to_frame(self) -> pd.DataFrame:
        """The runs table (one row per run)."""
        return self.runs.copy()

    def findings_matrix(self) -> pd.DataFrame:
        """Claims x runs: "verdict value [low, high]"; each run's null model (and any other
        subject the record holds) in a column beside it."""
        frame = self.findings
        columns: list[str] = []
        cells: dict[tuple[str, str], str] = {}
        for label in self.labels:
            rows = frame[frame["run"] == label] if len(frame) else frame
            subjects = sorted(set(rows["subject"]) if len(rows) else {"model"},
                              key=lambda s: (s != "model", s != "null model", s))  # fmt: skip
            for subject in subjects:
                column = label if subject == "model" else f"{label} · {subject}"
                columns.append(column)
                for _, row in rows[rows["subject"] == subject].iterrows():
                    cells[(str(row["claim_title"]), column)] = (
                        f"{row['verdict']}: {format_value(row['value'])} "
                        f"[{format_value(row['ci_low'])}, {format_value(row['ci_high'])}]"
                    )
        claims = list(dict.fromkeys(frame["claim_title"])) if len(frame) else []
        table = [{"claim": c, **{col: cells.get((c, col), "—") for col in columns}}
                 for c in claims]  # fmt: skip
        return pd.DataFrame(table, columns=["claim", *columns])

    def settings_table(self) -> pd.DataFrame:
        """The settings that differ: one row per setting, one column per run."""
        if self.settings.empty:
            return pd.DataFrame(columns=["setting", *self.labels])
        wide = self.settings.pivot(index="setting", columns="run", values="value")
        return wide.reindex(columns=self.labels).reset_index().rename_axis(columns=None)

    def applications_table(self) -> pd.DataFrame:
        """The applications' headline numbers: quantity x runs, "mean [low, high]"."""
        frame = self.applications
        if frame.empty:
            return pd.DataFrame(columns=["application", "quantity", *self.labels])
        text = frame.assign(cell=[
            format_value(m) if pd.isna(lo) else
            f"{format_value(m)} [{format_value(lo)}, {format_value(hi)}]"
            for m, lo, hi in zip(frame["mean"], frame["ci_low"], frame["ci_high"], strict=True)
        ])  # fmt: skip
        wide = text.pivot_table(index=["application", "quantity"], columns="run",
                                values="cell", aggfunc="first", sort=False)  # fmt: skip
        wide = wide.reindex(columns=self.labels).astype(object).fillna("—")
        return wide.reset_index().rename_axis(columns=None)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Each frame as ``<name>.csv`` and the shared settings as ``comparison.json``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in _FRAMES:
            getattr(self, name).to_csv(directory / f"{name}.csv", index=False)
        text = json.dumps({"shared_settings": self.shared_settings}, indent=1, default=str)
        (directory / "comparison.json").write_text(text)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> RunComparison:
        """What :meth:`save` wrote."""
        directory = Path(directory)
        if not (directory / "comparison.json").is_file():
            raise ResultsError(
                f"{str(directory)!r} holds no comparison.json; expected a folder written by "
                "RunComparison.save"
            )
        frames = {}
        for name in _FRAMES:
            try:
                frames[name] = pd.read_csv(directory / f"{name}.csv")
            except pd.errors.EmptyDataError:
                frames[name] = pd.DataFrame()
        shared = json.loads((directory / "comparison.json").read_text())["shared_settings"]
        return cls(**frames, shared_settings=shared)


def _labels(runs: Sequence[FolderRun]) -> list[str]:
    base = [f"{run.model} · {run.task}" for run in runs]
    labels = [b if base.count(b) == 1 else f"{b} · {run.path.name}" for b, run in
              zip(base, runs, strict=True)]  # fmt: skip
    return [lab if labels.count(lab) == 1 else f"{b} · {run.path}" for lab, b, run in
            zip(labels, base, runs, strict=True)]  # fmt: skip


def _keyed(run: FolderRun, label: str, frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    for index, (key, value) in enumerate(zip(KEYS, (label, run.model, run.task), strict=True)):
        frame.insert(index, key, value)
    return frame


def _depth(run: FolderRun, frame: pd.DataFrame) -> pd.DataFrame:
    n = run.n_layers
    frame = frame.copy()
    position = list(frame.columns).index("layer")
    frame.insert(position, "n_layers", n if n is not None else float("nan"))
    depth = frame["layer"] / (n - 1) if n is not None and n > 1 else frame["layer"] * 0.0
    frame.insert(position + 2, "depth", depth if n is not None else float("nan"))
    return frame


def _concat(parts: list[pd.DataFrame], columns: Sequence[str]) -> pd.DataFrame:
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame(columns=list(columns))
    return pd.concat(parts, ignore_index=True)


def compare_runs(paths: Sequence[str | os.PathLike[str]]) -> RunComparison:
    """Read results folders (``anchor-flow run``) into one :class:`RunComparison`.

    Reads files only (never runs a model). Each run is labelled by its model and task (with
    the folder name where two runs share both); the settings that differ between the runs are
    listed, and anything a run lacks (an experiment not run or not complete, a file, a
    column, findings, a null model, an older record schema) is named in ``missing``.

    Example:
        >>> comparison = compare_runs(["results/gpt2", "results/gpt2-xl"])  # doctest: +SKIP
        >>> comparison.findings_matrix()  # doctest: +SKIP

    Raises:
        ResultsError: no path, a path given twice, or a folder that is not a results folder
            of ``anchor-flow run`` (no results.json, or a record of another kind).
    """
    folders = [Path(p) for p in paths]
    if not folders:
        raise ResultsError("no results folder given; expected one or more run folders")
    resolved = [p.resolve() for p in folders]
    twice = sorted({str(p) for p, r in zip(folders, resolved, strict=True)
                    if resolved.count(r) > 1})  # fmt: skip
    if twice:
        raise ResultsError(f"results folder(s) {', '.join(twice)} given twice; expected each once")
    runs = [read_folder(p) for p in folders]
    labels = _labels(runs)
    frames: dict[str, list[pd.DataFrame]] = {name: [] for name in _FRAMES}
    for run, label in zip(runs, labels, strict=True):
        tables = run.tables
        complete = [n for n, e in run.record.get("experiments", {}).items()
                    if isinstance(e, dict) and e.get("status") == "complete"]  # fmt: skip
        null = run.record.get("null_model") or {}
        frames["runs"].append(pd.DataFrame([{
            "run": label, "model": run.model, "task": run.task, "path": str(run.path),
            "n_layers": run.n_layers, "null_model": null.get("kind", "none"),
            "schema": run.record.get("schema"), "complete": ", ".join(complete),
        }]))  # fmt: skip
        frames["missing"].append(pd.DataFrame(
            [{"run": label, "experiment": e, "what": w} for e, w in run.missing]))  # fmt: skip
        frames["findings"].append(_keyed(run, label, finding_rows(run.findings)))
        if "flows.csv" in tables:
            frames["flows"].append(_keyed(run, label, _depth(run, tables["flows.csv"])))
        if "deep.csv" in tables:
            frames["deep"].append(_keyed(run, label, _depth(run, tables["deep.csv"])))
        if "isolation.csv" in tables:
            rows = isolation_rows(tables["isolation.csv"], run.n_shallow)
            frames["isolation"].append(_keyed(run, label, rows))
        frames["applications"].append(_keyed(run, label, application_rows(tables)))
        if "heads/top_heads.csv" in tables:
            frames["heads"].append(_keyed(run, label, _depth(run, tables["heads/top_heads.csv"])))
        if "heads/causal.csv" in tables:
            frames["heads_causal"].append(_keyed(run, label, tables["heads/causal.csv"]))
    settings, shared = differing_settings([r.record for r in runs], labels)
    columns = {"missing": ("run", "experiment", "what"),
               "findings": (*KEYS, "claim", "claim_title", "subject", "verdict", "value",
                            "ci_low", "ci_high"),
               "flows": (*KEYS, "n_layers", "layer", "depth", "flow", "normalised",
                         "normalised_ci_low", "normalised_ci_high"),
               "deep": (*KEYS, "n_layers", "layer", "depth", "auc_roc", "ci_low", "ci_high"),
               "isolation": (*KEYS, "control", "position", "depth_part", "isolated_layers",
                             "metric", "mean", "ci_low", "ci_high", "shown"),
               "applications": (*KEYS, "application", "quantity", "mean", "ci_low", "ci_high"),
               "heads": (*KEYS, "kind", "rank", "layer", "head", "depth", "share", "ci_low",
                         "ci_high"),
               "heads_causal": (*KEYS, "arm", "metric", "mean", "ci_low", "ci_high")}  # fmt: skip
    built = {name: _concat(parts, columns.get(name, ())) for name, parts in frames.items()}
    built["settings"] = settings
    names = {f.name for f in fields(RunComparison)}
    return RunComparison(**{k: v for k, v in built.items() if k in names}, shared_settings=shared)
