"""The main job: every experiment of the paper for one model × task × seeds, in one folder.

:func:`run_experiments` runs saliency flows (§2.1), isolation (§2.2), deep-layer AUCROC_l /
R_l (§2.3), anchor re-weighting (§3.1), anchor-only compression (§3.2) and error diagnosis
(§3.3) with the paper's protocol, and writes a results folder:

* ``results.json`` — schema ``anchor_flow.run/1`` (:data:`SCHEMA`, JSON Schema in
  ``anchor_flow/data/results.schema.json``): the settings, library / model versions, seeds,
  per-experiment status, timings, file list and summary;
* one CSV per table (``flows.csv``, ``isolation.csv``, ``deep.csv``, ``reweighting.csv``,
  ``compression.csv``, ``compression_trials.csv``, ``diagnosis.csv``), one JSON summary and one
  raw-result folder per experiment (loadable with the result classes' ``load``);
* ``report.html`` — every figure with its explanation, self-contained.

Every file is written atomically. An experiment is complete only once ``results.json`` says
so; a rerun into the same folder with the same settings skips complete experiments and
deletes and recomputes the files of any other (an interrupted run resumes; a half-written file
is never trusted). Different settings in the same folder are refused (``restart=True`` starts
over). The experiment computations themselves live in :mod:`anchor_flow.run.steps`.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from anchor_flow.errors import ResultsError
from anchor_flow.models.tl_adapter import adapt
from anchor_flow.report.folder import render_results_folder
from anchor_flow.results.files import write_atomic
from anchor_flow.results.record import SCHEMA, load_run
from anchor_flow.run.config import NOT_IN_RESULTS, RunConfig
from anchor_flow.run.findings import NULL_FILES, update_findings
from anchor_flow.run.steps import STEP_FILES, STEPS, RunContext, model_info

__all__ = ["run_experiments"]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _versions() -> dict[str, str]:
    import importlib.metadata as metadata

    from anchor_flow._version import __version__

    versions = {"anchor_flow": __version__, "python": platform.python_version()}
    for package in ("transformer-lens", "torch", "transformers", "numpy"):
        try:
            versions[package.replace("-", "_")] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package.replace("-", "_")] = "not installed"
    return versions


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    text = json.dumps(data, indent=1, default=str).encode()
    write_atomic(path, lambda handle: handle.write(text))


def _complete(record: Mapping[str, Any], directory: Path) -> bool:
    return record.get("status") == "complete" and all(
        (directory / name.rstrip("/")).exists() for name in record.get("files", ())
    )


def _remove(directory: Path, names: Sequence[str]) -> None:
    for name in names:
        path = directory / name.rstrip("/")
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _start(
    directory: Path, config: RunConfig, model_info: dict[str, Any], restart: bool
) -> dict[str, Any]:
    """The run record to continue: the existing one (same settings) or a fresh one."""
    fresh = {
        "schema": SCHEMA, "created": _now(), "updated": _now(), "settings": config.settings(),
        "model": model_info, "versions": _versions(), "experiments": {},
        "timings": {"total_seconds": 0.0},
    }  # fmt: skip
    if not (directory / "results.json").exists():
        return fresh
    if restart:
        _remove(directory, [f for files in STEP_FILES.values() for f in files])
        _remove(directory, ["results.json", "report.html", *NULL_FILES])
        return fresh
    previous = load_run(directory)
    same = {"settings": config.settings(), "model": model_info}
    differ = [
        f"{part}.{key}: {previous.get(part, {}).get(key)!r} -> {value!r}"
        for part, values in same.items()
        for key, value in values.items()
        if previous.get(part, {}).get(key) != value and key not in NOT_IN_RESULTS
    ]
    if differ:
        raise ResultsError(
            f"{str(directory)!r} holds a run with other settings ({'; '.join(differ[:4])}); "
            "use another output folder, or restart=True (--restart) to start this one over"
        )
    for part, values in same.items():
        previous[part].update({k: v for k, v in values.items() if k in NOT_IN_RESULTS})
    previous["versions"] = _versions()
    return previous


@contextmanager
def _bar(name: str, progress: bool) -> Iterator[None]:
    """One progress bar for one experiment: its name and time, full when it is done."""
    with tqdm(total=1, desc=name, unit="experiment", disable=not progress, leave=True) as bar:
        yield
        bar.update(1)


def run_experiments(
    model: Any,
    out: str | Path,
    config: RunConfig | None = None,
    *,
    model_source: str | None = None,
    restart: bool = False,
    progress: bool = True,
    on_event: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the configured experiments into ``out``, resuming a run with the same settings.

    Example:
        >>> from anchor_flow import load_model
        >>> record = run_experiments(load_model("demo"), "results/demo",
        ...                          RunConfig(n_examples=20, seeds=(42,)))  # doctest: +SKIP
        >>> record["experiments"]["isolation"]["summary"]  # doctest: +SKIP

    Args:
        model: a TransformerLens model with live attention hooks (see :func:`load_model`).
        out: the results folder (created if missing).
        config: the run's settings (default: :class:`RunConfig`'s, the paper's protocol).
        model_source: how the model was named (recorded; default: the model's name).
        restart: delete this folder's previous run files first instead of resuming.
        progress: one progress bar per experiment (the inner calls' own bars stay hidden).
        on_event: called with one line per experiment started, skipped and finished.

    Returns:
        The content of ``results.json``.

    Raises:
        ResultsError: ``out`` holds a run with other settings, or an unreadable results.json.
        AnchorFlowError: bad settings, unknown task, prompts that do not fit, ...
    """
    config = config or RunConfig()
    say = on_event or (lambda _line: None)
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    adapter = adapt(model)
    info = {**model_info(adapter), "source": model_source or adapter.name}
    record = _start(directory, config, info, restart)
    # One bar per experiment (see _bar); the run_* calls inside the steps stay quiet.
    context = RunContext.create(model, adapter, config, directory, False)
    # Merge: a resumed run skips steps, so it would not re-resolve what they resolved.
    resolved = record.get("settings_resolved", {})
    record["settings_resolved"] = context.resolved = {**resolved, **context.resolved}
    for name in config.experiments:
        previous = record["experiments"].get(name, {})
        if _complete(previous, directory):
            say(f"{name}: complete in {directory}, skipped")
            continue
        _remove(directory, STEP_FILES[name])
        say(f"{name}: running")
        started, clock = _now(), time.perf_counter()
        record["experiments"][name] = {"status": "running", "started": started}
        _write_json(directory / "results.json", {**record, "updated": _now()})
        try:
            with _bar(name, progress):
                summary = STEPS[name](context)
        except BaseException as error:
            record["experiments"][name] = {
                "status": "failed", "started": started, "error": f"{type(error).__name__}: "
                f"{' '.join(str(error).split())}"[:500],
            }  # fmt: skip
            _write_json(directory / "results.json", {**record, "updated": _now()})
            raise
        seconds = time.perf_counter() - clock
        record["experiments"][name] = {
            "status": "complete", "started": started, "finished": _now(),
            "seconds": round(seconds, 3), "files": list(STEP_FILES[name]), "summary": summary,
        }  # fmt: skip
        record["timings"]["total_seconds"] = round(
            sum(e.get("seconds", 0.0) for e in record["experiments"].values()), 3
        )
        _write_json(directory / "results.json", {**record, "updated": _now()})
        render_results_folder(directory)
        say(f"{name}: done in {seconds:.1f} s")
    with _bar("findings", progress):
        findings = update_findings(context, record)  # the claims' verdicts (issue 16)
    if any(record.get(k) != v for k, v in findings.items()):
        record.update(findings)
        _write_json(directory / "results.json", {**record, "updated": _now()})
        render_results_folder(directory)
    if not (directory / "report.html").exists():
        render_results_folder(directory)
    return record
