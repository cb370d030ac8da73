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
over). The experiment computations themselves live in :mod:`anchor_flow.pipeline_steps`.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from anchor_flow.errors import AnchorFlowError, ResultsError
from anchor_flow.result_files import write_atomic
from anchor_flow.sampling import PAPER_SEEDS

__all__ = ["EXPERIMENTS", "SCHEMA", "RunConfig", "load_run", "run_experiments"]

SCHEMA = "anchor_flow.run/1"
EXPERIMENTS = ("saliency", "isolation", "deep", "reweighting", "compression", "diagnosis")
# Settings a resumed run may change (the record keeps the latest): the results do not depend
# on them beyond float rounding (the compression engines are tested equal). The dtype does.
_NOT_IN_RESULTS = ("device", "compression_engine")
_COMPRESSION_METHODS = ("text_anchor", "hidden_random", "hidden_random_top", "hidden_anchor")


@dataclass(frozen=True)
class RunConfig:
    """Settings of a run: the task protocol, the experiments and their options.

    Defaults are the paper's (PAPER.md §0, §7): five seeds, 1000 test examples per seed,
    one demonstration per class, label words isolated in 1/3/5/7 layers (scaled down for
    small models), re-weighting with Adam lr 0.01 for 10 epochs, 20 Hidden_random-top trials,
    diagnosis at 2/3 of the depth with M=10 principal components. ``speed_queries`` test
    examples of the first seed, at 1, 2 and 4 demonstrations per class, time the compressed
    vs the full prompt (Table 3).

    Example:
        >>> RunConfig(task="demo-k3", n_examples=50, experiments=("saliency", "deep")).seeds
        (42, 43, 44, 45, 46)
    """

    task: str = "demo-k3"
    seeds: tuple[int, ...] = PAPER_SEEDS
    n_examples: int = 1000
    shots_per_class: int = 1
    fix_class_order: bool = False
    label_token_policy: Literal["single", "first", "all"] | None = None
    on_overflow: Literal["error", "skip"] = "error"
    data_dir: str | None = None
    batch_size: int = 8
    experiments: tuple[str, ...] = EXPERIMENTS
    top_k: int = 5
    saliency_loss: Literal["gold", "predicted"] = "gold"
    saliency_gradient: Literal["pattern", "scores"] = "pattern"
    isolation_layer_counts: tuple[int, ...] | None = None
    isolation_mode: Literal["renormalise", "zero"] = "renormalise"
    reweighting_epochs: int = 10
    reweighting_lr: float = 0.01
    train_per_class: int = 4
    compression_methods: tuple[str, ...] = _COMPRESSION_METHODS
    position_policy: Literal["original", "compact", "restart"] = "original"
    compression_engine: Literal["auto", "cache", "mask"] = "auto"
    top_trials: int = 20
    speed_queries: int = 8
    diagnosis_layer: int | None = None
    n_components: int = 10

    def __post_init__(self) -> None:
        unknown = [e for e in self.experiments if e not in EXPERIMENTS]
        if unknown or not self.experiments or len(set(self.experiments)) != len(self.experiments):
            raise AnchorFlowError(
                f"experiments={list(self.experiments)!r}; expected distinct names from "
                f"{', '.join(EXPERIMENTS)}"
            )
        if not self.seeds:
            raise AnchorFlowError("seeds=(); expected at least one seed (the paper: 42..46)")
        counts = ("n_examples", "shots_per_class", "batch_size", "top_k", "reweighting_epochs",
                  "train_per_class", "top_trials", "speed_queries", "n_components")  # fmt: skip
        for name in counts:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise AnchorFlowError(f"{name}={value!r}; expected a positive integer")
        for name, kind in get_type_hints(RunConfig).items():
            allowed = _literal_values(kind)
            if allowed and getattr(self, name) not in allowed:
                raise AnchorFlowError(
                    f"{name}={getattr(self, name)!r}; expected one of "
                    f"{', '.join(map(repr, allowed))}"
                )
        bad = [m for m in self.compression_methods if m not in _COMPRESSION_METHODS]
        if bad or not self.compression_methods:
            raise AnchorFlowError(
                f"compression_methods={list(self.compression_methods)!r}; expected a subset of "
                f"{', '.join(_COMPRESSION_METHODS)}"
            )

    def settings(self) -> dict[str, Any]:
        """The JSON-safe settings that define the results (all but the experiment list)."""
        values = asdict(self)
        values.pop("experiments")
        return json.loads(json.dumps(values, default=str))


def _literal_values(kind: Any) -> tuple[Any, ...]:
    """The values a ``Literal[...]`` (or ``Literal[...] | None``) annotation allows, else ()."""
    if get_origin(kind) is Literal:
        return get_args(kind)
    parts = get_args(kind)
    literals = [p for p in parts if get_origin(p) is Literal]
    if len(literals) == 1 and len(parts) == 2 and type(None) in parts:
        return (*get_args(literals[0]), None)
    return ()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _versions() -> dict[str, str]:
    import importlib.metadata as metadata

    from anchor_flow import __version__

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


def load_run(directory: str | Path) -> dict[str, Any]:
    """The ``results.json`` of a results folder, checked for the run schema.

    Example:
        >>> load_run("results/demo-demo-k3")["experiments"]["deep"]["status"]  # doctest: +SKIP
        'complete'

    Raises:
        ResultsError: no ``results.json``, unreadable JSON, or another schema.
    """
    path = Path(directory) / "results.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ResultsError(
            f"cannot read {str(path)!r}: {error}; expected the results.json written by "
            "anchor-flow run / run_experiments"
        ) from error
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        schema = data.get("schema") if isinstance(data, dict) else None
        raise ResultsError(f"{str(path)!r} holds schema {schema!r}; expected {SCHEMA!r}")
    return data


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
    from anchor_flow.pipeline_steps import STEP_FILES

    fresh = {
        "schema": SCHEMA, "created": _now(), "updated": _now(), "settings": config.settings(),
        "model": model_info, "versions": _versions(), "experiments": {},
        "timings": {"total_seconds": 0.0},
    }  # fmt: skip
    if not (directory / "results.json").exists():
        return fresh
    if restart:
        _remove(directory, [f for files in STEP_FILES.values() for f in files])
        _remove(directory, ["results.json", "report.html"])
        return fresh
    previous = load_run(directory)
    same = {"settings": config.settings(), "model": model_info}
    differ = [
        f"{part}.{key}: {previous.get(part, {}).get(key)!r} -> {value!r}"
        for part, values in same.items()
        for key, value in values.items()
        if previous.get(part, {}).get(key) != value and key not in _NOT_IN_RESULTS
    ]
    if differ:
        raise ResultsError(
            f"{str(directory)!r} holds a run with other settings ({'; '.join(differ[:4])}); "
            "use another output folder, or restart=True (--restart) to start this one over"
        )
    for part, values in same.items():
        previous[part].update({k: v for k, v in values.items() if k in _NOT_IN_RESULTS})
    previous["versions"] = _versions()
    return previous


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
        progress: progress bars.
        on_event: called with one line per experiment started, skipped and finished.

    Returns:
        The content of ``results.json``.

    Raises:
        ResultsError: ``out`` holds a run with other settings, or an unreadable results.json.
        AnchorFlowError: bad settings, unknown task, prompts that do not fit, ...
    """
    from anchor_flow.pipeline_steps import STEP_FILES, STEPS, RunContext, model_info
    from anchor_flow.report_folder import render_results_folder
    from anchor_flow.tl_adapter import adapt

    config = config or RunConfig()
    say = on_event or (lambda _line: None)
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    adapter = adapt(model)
    info = {**model_info(adapter), "source": model_source or adapter.name}
    record = _start(directory, config, info, restart)
    context = RunContext.create(model, adapter, config, directory, progress)
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
    if not (directory / "report.html").exists():
        render_results_folder(directory)
    return record
