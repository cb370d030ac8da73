"""Render the report of a results folder (what ``anchor-flow`` commands and runs wrote).

:func:`render_results_folder` reads every result present in a folder (``saliency.json`` and
the raw folders ``isolation/``, ``deep/``, ``reweighting/``, ``diagnosis/``, ``compression/``),
and, for a folder written by :func:`anchor_flow.run.pipeline.run_experiments`, the run record
``results.json`` (the run's settings, versions, status and timings head the report; only
experiments it marks complete are shown). Runs no model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from anchor_flow.analysis.deep import DeepResult
from anchor_flow.analysis.flows import InformationFlow
from anchor_flow.analysis.isolation import IsolationResult
from anchor_flow.analysis.saliency.result import SaliencyResult
from anchor_flow.errors import ResultsError
from anchor_flow.report.findings import findings_sections, with_verdicts
from anchor_flow.report.heads import load_heads_part
from anchor_flow.report.html import ReportSection, write_report
from anchor_flow.report.sections import (
    applications_report_sections,
    compression_report_sections,
    deep_report_sections,
    isolation_report_sections,
    saliency_report_sections,
)
from anchor_flow.results.record import load_run
from anchor_flow.results.runs import run_folders

__all__ = ["render_results_folder", "write_saliency_report"]


def write_saliency_report(
    path: str | os.PathLike[str], flow: InformationFlow, result: SaliencyResult | None = None
) -> Path:
    """The standard saliency report of one run, with ``flow.settings`` as its settings table."""
    model = flow.settings.get("model", "model")
    return write_report(
        path,
        saliency_report_sections(flow, result),
        title=f"Information flow: {model}",
        settings=flow.settings,
    )


_RUN = (
    "This report was written by anchor-flow run (anchor_flow.run_experiments): every "
    "experiment below used the same model, task and seeds. The table lists each experiment's "
    "status and wall time; results.json in the same folder holds the same information with "
    "the full summaries, and one CSV per table holds the numbers behind every figure. "
    "Experiments not marked complete (an interrupted run) are not shown; rerunning the same "
    "command resumes them. The settings table at the end lists the run's protocol."
)


def _run_section(record: dict[str, Any]) -> ReportSection:
    rows = [
        {"experiment": name, "status": entry.get("status"),
         "seconds": entry.get("seconds"), "finished": entry.get("finished", ""),
         "error": entry.get("error", "")}
        for name, entry in record.get("experiments", {}).items()
    ]  # fmt: skip
    frame = pd.DataFrame(rows, columns=["experiment", "status", "seconds", "finished", "error"])
    return ReportSection("This run", None, _RUN + straddling_note(record), table=frame)


def straddling_note(record: dict[str, Any]) -> str:
    """A sentence on the tokens that join a text's end with the template (none: empty).

    Example:
        >>> straddling_note({"settings_resolved": {"straddling_tokens_fixed": {"seed-42": 3}}})[:40]
        ' Tokenization: 3 token positions of the '
    """
    resolved = record.get("settings_resolved", {})
    parts = []
    for key, label in (("straddling_tokens_per_example", "saliency's prompts"),
                       ("straddling_tokens_fixed", "the fixed-demonstration prompts")):  # fmt: skip
        total = sum(int(v) for v in (resolved.get(key) or {}).values())
        if total:
            parts.append(f"{total} token positions of {label}")
    if not parts:
        return ""
    return (
        f" Tokenization: {' and '.join(parts)} join a text's last characters with the "
        "template's newline (e.g. ' .\\n' on Llama-3 / Qwen-style tokenizers); they count as "
        "text, which changes only the role-to-role matrix and C1's text columns, not the "
        "paper's flows, isolation, the deep-layer classifier or compression "
        "(docs/tokenizers.md)."
    )


def _run_settings(record: dict[str, Any]) -> dict[str, Any]:
    """The run's settings: a setting that the run resolved (e.g. ``prepend_bos`` "auto")
    shows both, ``"auto (resolved: true)"``; resolved-only facts are added as they are."""
    settings: dict[str, Any] = {f"model {k}": v for k, v in record.get("model", {}).items()}
    settings.update(record.get("settings", {}))
    for key, value in record.get("settings_resolved", {}).items():
        if key in settings and settings[key] != value:
            requested = settings[key] if isinstance(settings[key], str) else json.dumps(
                settings[key], default=str)  # fmt: skip
            shown = value if isinstance(value, str) else json.dumps(value, default=str)
            settings[key] = f"{requested} (resolved: {shown})"
        else:
            settings[key] = value
    settings.update({f"version {k}": v for k, v in record.get("versions", {}).items()})
    settings["total seconds"] = record.get("timings", {}).get("total_seconds")
    return settings


def render_results_folder(directory: str | os.PathLike[str]) -> Path:
    """Render ``report.html`` from every result in ``directory``.

    Reads what the commands wrote: ``saliency.json`` (+ ``saliency/``), ``isolation/``,
    ``deep/``, ``reweighting/``, ``diagnosis/`` and ``compression/``; each present part adds
    its sections. In a folder with a run record (``results.json``) only the experiments it
    marks complete are read, and the run's settings head the report.

    Example:
        >>> render_results_folder("results/quickstart")  # doctest: +SKIP
        PosixPath('results/quickstart/report.html')
    """
    directory = Path(directory)
    record = _run_record(directory)
    complete = None if record is None else {
        name for name, entry in record.get("experiments", {}).items()
        if entry.get("status") == "complete"
    }  # fmt: skip

    def present(name: str, path: Path) -> bool:
        return path.is_file() and (complete is None or name in complete)

    summary = directory / "saliency.json"
    flow = InformationFlow.load(summary) if present("saliency", summary) else None
    isolation = directory / "isolation" / "isolation_meta.json"
    deep = directory / "deep" / "deep_meta.json"
    reweighting = directory / "reweighting" / "reweighting_meta.json"
    diagnosis = directory / "diagnosis" / "diagnosis_meta.json"
    compression = directory / "compression" / "compression_meta.json"
    heads = directory / "heads" / "blocking" / "head_blocking_meta.json"
    has = {
        "isolation": present("isolation", isolation), "deep": present("deep", deep),
        "reweighting": present("reweighting", reweighting),
        "diagnosis": present("diagnosis", diagnosis),
        "compression": present("compression", compression),
        "heads": present("heads", heads),
    }  # fmt: skip
    if flow is None and not any(has.values()) and record is None:
        raise ResultsError(
            f"{str(directory)!r} holds no results.json, saliency.json, isolation/, deep/, "
            "reweighting/, diagnosis/, compression/ or heads/; expected a results folder "
            "written by `anchor-flow run` or one of its experiment commands (a run that finished)"
        )
    sections: list[ReportSection] = [] if record is None else [_run_section(record)]
    sections = [*findings_sections(directory, record or {}), *sections]  # issue 16: first
    settings: dict[str, Any] = {} if record is None else _run_settings(record)

    def add(names: tuple[str, ...], build: Callable[[], Part]) -> None:
        built, parts = _memo(directory, record, names, build)
        sections.extend(built)
        for prefix, extra in parts:
            _merge(settings, prefix, extra, record)

    if flow is not None:
        add(("saliency",), lambda: _saliency_part(directory, flow))
    if has["isolation"]:
        add(("isolation",), lambda: _isolation_part(isolation.parent))
    if has["deep"]:
        add(("deep", "saliency"), lambda: _deep_part(deep.parent, flow))
    if has["reweighting"] or has["diagnosis"]:
        add(("reweighting", "diagnosis"), lambda: _applications_part(
            reweighting.parent if has["reweighting"] else None,
            diagnosis.parent if has["diagnosis"] else None))  # fmt: skip
    if has["compression"]:
        add(("compression",), lambda: _compression_part(compression.parent))
    if has["heads"]:
        add(("heads",), lambda: load_heads_part(directory / "heads"))
    model = (record or {}).get("model", {}).get("name") or next(
        (v for k, v in settings.items() if k.endswith("model") and isinstance(v, str)), None
    )
    title = f"Information flow: {model or 'model'}"
    sections = with_verdicts(sections, record or {})
    return write_report(directory / "report.html", sections, title=title, settings=settings)


Part = tuple[list[ReportSection], list[tuple[str, dict[str, Any]]]]
_MEMO: dict[str, Part] = {}  # a run renders after every experiment: build each part once


def _memo(
    directory: Path,
    record: dict[str, Any] | None,
    names: tuple[str, ...],
    build: Callable[[], Part],
) -> Part:
    """``build()``, or what it returned for the same files of the same run in this process.

    In a run's folder the key is the experiments' file hashes (``contents`` in results.json);
    a folder without a run record is always read afresh.
    """
    entries = (record or {}).get("experiments", {})
    contents = [entries.get(name, {}).get("contents") for name in names]
    if record is None or contents[0] is None:
        return build()
    key = json.dumps([str(directory.resolve()), names, contents], sort_keys=True, default=str)
    if key not in _MEMO:
        if len(_MEMO) >= 32:
            _MEMO.clear()
        _MEMO[key] = build()
    return _MEMO[key]


def _saliency_part(directory: Path, flow: InformationFlow) -> Part:
    # Raw results: saliency/ or saliency/<run>/ (one per seed). The role-to-role matrix
    # pools them all, as the flows do; the heatmaps use the first (its maps only).
    runs = run_folders(directory / "saliency", "saliency_meta.json")
    per_seed = [SaliencyResult.load(run, maps=index == 0) for index, run in enumerate(runs)]
    return saliency_report_sections(flow, per_seed), [("saliency ", flow.settings)]


def _isolation_part(folder: Path) -> Part:
    result = IsolationResult.load(folder)
    return isolation_report_sections(result), [("isolation ", result.settings)]


def _deep_part(folder: Path, flow: InformationFlow | None) -> Part:
    result = DeepResult.load(folder)
    return deep_report_sections(result, flow), [("deep ", result.settings)]


def _applications_part(reweighting: Path | None, diagnosis: Path | None) -> Part:
    from anchor_flow.applications.diagnosis.distances import DiagnosisResult
    from anchor_flow.applications.reweighting.protocol import ReweightingResult

    loaded = [ReweightingResult.load(reweighting) if reweighting else None,
              DiagnosisResult.load(diagnosis) if diagnosis else None]  # fmt: skip
    prefixes = ("reweighting ", "diagnosis ")
    settings = [(p, getattr(r, "settings", {})) for p, r in zip(prefixes, loaded, strict=True)]
    return applications_report_sections(*loaded), settings


def _compression_part(folder: Path) -> Part:
    built, settings = compression_report_sections(folder)
    plain = {k.removeprefix("compression "): v for k, v in settings.items()}
    return built, [("compression ", plain)]


def _run_record(directory: Path) -> dict[str, Any] | None:
    if not (directory / "results.json").is_file():
        return None
    return load_run(directory)


def _merge(
    settings: dict[str, Any], prefix: str, extra: dict[str, Any], record: dict[str, Any] | None
) -> None:
    """Add a result's settings; in a run, only those the run record does not already show
    (under the same name, as ``model <name>``, or as ``<experiment>_<name>``, e.g.
    ``reweighting_epochs``)."""
    for key, value in extra.items():
        # The run's table says "model name" and "model n_layers"; "experiment" is the prefix.
        if record is not None and key in ("model", "experiment", "n_model_layers"):
            continue
        shown = (key, f"model {key}", f"{prefix.strip()}_{key}", f"{prefix.strip()}_{key}s")
        same = any(name in settings and settings[name] == value for name in shown[2:])
        if record is None or not (same or any(name in settings for name in shown[:2])):
            settings.setdefault(f"{prefix}{key}", value)
