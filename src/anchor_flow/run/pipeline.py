"""The main job: every experiment of the paper for one model × task × seeds, in one folder.

:func:`run_experiments` runs saliency flows (§2.1), isolation (§2.2), deep-layer AUCROC_l /
R_l (§2.3), anchor re-weighting (§3.1), anchor-only compression (§3.2), error diagnosis
(§3.3) with the paper's protocol, and the anchor heads (issue 24), and writes a results folder:

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

Data-parallel runs (``torchrun``/``accelerate launch``, :mod:`anchor_flow.run.distributed`):
every rank validates the same inputs (a failure anywhere ends every rank with that error),
then rank 0 alone creates the folder, holds its lock, decides what to skip or resume, and
names each experiment to run; every rank computes its part of the prompts (re-weighting: of
the seeds), rank 0 joins the parts (:mod:`anchor_flow.run.shards`), writes every file and
renders the report. Table 3's timing and the findings' null model run on rank 0 alone.
"""

from __future__ import annotations

import contextlib
import json
import platform
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from anchor_flow.errors import AnchorFlowError, ResultsError
from anchor_flow.models.bos import forced_prepend_bos, prepend_bos_option
from anchor_flow.models.tl_adapter import adapt
from anchor_flow.report.folder import render_results_folder
from anchor_flow.results.files import write_atomic
from anchor_flow.results.record import SCHEMA, load_run
from anchor_flow.run.config import NOT_IN_RESULTS, RunConfig
from anchor_flow.run.distributed import Ranks
from anchor_flow.run.findings import NULL_FILES, update_findings
from anchor_flow.run.folder import (
    RESULT_SUFFIXES,
    changed,
    check_out,
    contents,
    fingerprints,
    hold_lock,
    listed_files,
    recovery_files,
    remove_listed,
    remove_temporary,
)
from anchor_flow.run.steps import STEP_FILES, RunContext, model_info, run_step
from anchor_flow.run.threads import thread_policy

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


def _partial(directory: Path, name: str, entry: Mapping[str, Any]) -> list[str]:
    """What an unfinished step may have left: a killed ("running") step's files in its places
    that were not there when it started; a failed step removed its own when it failed."""
    if entry.get("status") != "running":
        return []
    kept, listed = set(entry.get("kept", ())), STEP_FILES.get(name, ())
    return [f for f in contents(directory, listed)
            if f not in kept and (f in listed or f.endswith(RESULT_SUFFIXES))]  # fmt: skip


def _start(
    directory: Path,
    config: RunConfig,
    model_info: dict[str, Any],
    restart: bool,
    fingerprint: dict[str, str],
) -> dict[str, Any]:
    """The run record to continue: the existing one (same settings) or a fresh one."""
    fresh = {
        "schema": SCHEMA, "created": _now(), "updated": _now(), "settings": config.settings(),
        "model": model_info, "fingerprint": fingerprint, "versions": _versions(),
        "experiments": {}, "timings": {"total_seconds": 0.0},
    }  # fmt: skip
    if not (directory / "results.json").exists():
        return fresh
    try:
        previous = load_run(directory)
    except ResultsError as error:  # truncated, or another schema: only a restart recovers it
        if not restart:
            raise ResultsError(
                f"{error}; restart=True (--restart) deletes the files an anchor-flow run writes "
                "there and starts over"
            ) from None
        layout = [f for v in STEP_FILES.values() for f in v] + [*NULL_FILES, "report.html"]
        remove_listed(directory, [*recovery_files(directory, layout), "results.json"])
        return fresh
    done = [e for e in previous.get("experiments", {}).values() if e.get("status") == "complete"]
    if restart or not done:  # nothing complete: nothing to keep, any settings may follow
        unfinished = [(n, e) for n, e in previous.get("experiments", {}).items() if e not in done]
        remove_listed(directory, [f for n, e in unfinished for f in _partial(directory, n, e)])
        remove_listed(directory, [*listed_files(previous), "results.json", "report.html"])
        return fresh
    same = {"settings": config.settings(), "model": model_info}
    differ = [
        f"{part}.{key}: {previous.get(part, {}).get(key)!r} -> {value!r}"
        for part, values in same.items()
        for key, value in values.items()
        if previous.get(part, {}).get(key) != value and key not in NOT_IN_RESULTS
    ] + changed(previous, fingerprint)
    if differ:
        raise ResultsError(
            f"{str(directory)!r} holds a run with other settings ({'; '.join(differ[:4])}); "
            "use another output folder, or restart=True (--restart) to start this one over"
        )
    for part, values in same.items():
        previous[part].update({k: v for k, v in values.items() if k in NOT_IN_RESULTS})
    previous["versions"] = _versions()
    previous["fingerprint"] = fingerprint
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
    ranks: Ranks | None = None,
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
        ranks: this process's rank in a data-parallel run (default: the initialised
            ``torch.distributed`` group's, else one process; see
            :mod:`anchor_flow.run.distributed`). Every rank calls ``run_experiments`` with the
            same arguments; rank 0 writes the folder, the others return its record.

    Returns:
        The content of ``results.json``.

    Raises:
        ResultsError: ``out`` holds a run with other settings, or an unreadable results.json.
        AnchorFlowError: bad settings, unknown task, prompts that do not fit, ...
    """
    config = config or RunConfig()
    ranks = ranks or Ranks.current()
    say = on_event if on_event is not None and ranks.leader else (lambda _line: None)

    def prepare() -> tuple[dict[str, Any], RunContext, dict[str, str]]:
        # Everything is validated before the folder is created; only rank 0 looks at it.
        directory = check_out(out) if ranks.leader else Path(out)
        adapter = adapt(model)
        info = {**model_info(adapter), "source": model_source or adapter.name}
        # One bar per experiment (see _bar); the run_* calls inside the steps stay quiet.
        context = RunContext.create(model, adapter, config, directory, False, ranks)
        # Validation measures prompt lengths: with the run's BOS choice, as the steps will.
        with forced_prepend_bos(model, prepend_bos_option(config.prepend_bos)):
            _resolve_inputs(context, say)
        fingerprint = fingerprints(context.task, context.data, model, adapter.tokenizer,
                                   model_source)  # fmt: skip
        return info, context, fingerprint

    info, context, fingerprint = ranks.agree(prepare)  # a failure on any rank: all raise
    _check_same_inputs(ranks.everyone((fingerprint, config.settings())))
    if not ranks.leader:  # computes its parts of the experiments rank 0 runs; writes nothing
        with thread_policy(model):
            return ranks.follow(lambda name: run_step(name, context))  # type: ignore[no-any-return]
    directory = context.out
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with hold_lock(directory), thread_policy(model):
            remove_temporary(directory, [*(f for v in STEP_FILES.values() for f in v),
                                         *NULL_FILES, "results.json", "report.html"])  # fmt: skip
            record = _start(directory, config, info, restart, fingerprint)
            record = _run_steps(directory, config, context, record, say, progress)
    except BaseException as error:
        with contextlib.suppress(Exception):  # the other ranks end with this error too
            ranks.fail(error)
        raise
    ranks.send(("done", record))
    return record


def _check_same_inputs(inputs: Sequence[tuple[dict[str, str], dict[str, Any]]]) -> None:
    """Every rank must have read the same task, data, model weights, tokenizer and settings."""
    flat = [{**{f"fingerprint.{k}": v for k, v in prints.items()},
             **{f"settings.{k}": v for k, v in settings.items()}}
            for prints, settings in inputs]  # fmt: skip
    differ = [
        f"rank {rank}: {', '.join(sorted(k for k in {*f, *flat[0]} if f.get(k) != flat[0].get(k)))}"
        for rank, f in enumerate(flat)
        if f != flat[0]
    ]
    if differ:
        raise AnchorFlowError(
            f"the ranks of this run read other inputs than rank 0 ({'; '.join(differ)}); "
            "start every rank with the same model, task, data and settings"
        )


# The prompt scheme each step reads from the context (re-weighting draws its own prompts).
_SCHEMES: dict[str, Literal["fixed", "per_example"] | None] = {
    "saliency": "per_example", "isolation": "fixed", "deep": "fixed", "reweighting": None,
    "compression": "fixed", "diagnosis": "fixed", "heads": "fixed",
}  # fmt: skip


# Which prompt sets' overflow counts (settings_resolved "skipped_too_long_<key>") each uses.
_SKIPPED_IN = {"saliency": ("per_example",), "isolation": ("fixed",), "deep": ("fixed",),
               "reweighting": ("reweighting",), "compression": ("fixed", "speed"),
               "diagnosis": ("fixed",), "heads": ("fixed",)}  # fmt: skip


def _resolve_inputs(context: RunContext, say: Callable[[str], None]) -> None:
    """Check the inputs before the folder exists; record what the task and data resolved to."""
    from anchor_flow.icl.tasks import task_names

    config, task = context.config, context.task
    if config.task not in task_names():  # a task file: never recorded as a built-in task
        context.resolved["task"] = f"{task.name} (task file {config.task})"
    if task.prompt_source is None and len(context.data.test) < config.n_examples:
        context.resolved["n_examples_used"] = len(context.data.test)
        say(f"using {len(context.data.test)} test examples per seed: the test split has "
            f"{len(context.data.test)} (n_examples={config.n_examples})")  # fmt: skip
    needed = 1 + config.train_per_class  # re-weighting's 1-shot + auxiliary examples
    if "reweighting" in config.experiments and task.prompt_source is None:
        counts = [sum(e.label == c for e in context.data.train) for c in range(task.n_classes)]
        if min(counts) < needed:
            names = task.label_names or tuple(map(str, range(task.n_classes)))
            has = ", ".join(f"{name!r}: {n}" for name, n in zip(names, counts, strict=False))
            raise AnchorFlowError(
                f"re-weighting needs {needed} training examples per class (1 shot + "
                f"train_per_class={config.train_per_class}); the training split has {has}"
            )
    for scheme in ("per_example", "fixed"):
        if scheme in {_SCHEMES[name] for name in config.experiments}:
            context.prompt_sets(scheme)  # label words, class counts, prompt lengths
    if "diagnosis" in config.experiments:
        _check_components(context)


def _check_components(context: RunContext) -> None:
    """Diagnosis' PCA needs n_components <= min(prompts per seed, d_model) (else it fails last)."""
    config = context.config
    for name, prompts in context.prompt_sets("fixed").items():
        limit = min(len(prompts), context.adapter.d_model)
        if not 1 <= config.n_components <= limit:
            raise AnchorFlowError(
                f"diagnosis: n_components={config.n_components} but {name} has {len(prompts)} "
                f"prompts (d_model {context.adapter.d_model}); expected at most {limit}: "
                "more examples (--n-examples) or fewer components (--n-components)"
            )


def _run_steps(
    directory: Path,
    config: RunConfig,
    context: RunContext,
    record: dict[str, Any],
    say: Callable[[str], None],
    progress: bool,
) -> dict[str, Any]:
    # Merge: a resumed run skips steps, so it would not re-resolve what they resolved.
    resolved = record.get("settings_resolved", {})
    record["settings_resolved"] = context.resolved = {**resolved, **context.resolved}
    record["timings"]["ranks"] = context.ranks.world_size  # data-parallel processes
    for name in config.experiments:
        previous = record["experiments"].get(name, {})
        if _complete(previous, directory):
            say(f"{name}: complete in {directory}, skipped")
            continue
        if previous.get("status") == "complete":  # its files are missing: rerun it
            remove_listed(directory, listed_files({"experiments": {name: previous}}))
        elif previous:  # running (killed) or failed: what it may have left
            remove_listed(directory, _partial(directory, name, previous))
        before = set(contents(directory, STEP_FILES[name]))
        say(f"{name}: running")
        started, clock = _now(), time.perf_counter()
        record["experiments"][name] = {"status": "running", "started": started,
                                       "kept": sorted(before)}  # fmt: skip
        _write_json(directory / "results.json", {**record, "updated": _now()})
        try:
            with _bar(name, progress):
                summary = run_step(name, context)
        except BaseException as error:
            written = contents(directory, STEP_FILES[name])  # a failed step leaves no partials
            remove_listed(directory, [f for f in written if f not in before])
            why = (f"interrupted ({str(error) or 'SIGINT, Ctrl-C'}); rerun to resume"
                   if isinstance(error, KeyboardInterrupt) else  # SIGTERM too (the CLI's)
                   f"{type(error).__name__}: {' '.join(str(error).split())}")  # fmt: skip
            record["experiments"][name] = {"status": "failed", "started": started,
                                           "error": why[:500]}  # fmt: skip
            _write_json(directory / "results.json", {**record, "updated": _now()})
            if isinstance(error, Exception):  # the report shows the error (not on Ctrl-C)
                with contextlib.suppress(Exception):
                    render_results_folder(directory)
            raise
        seconds = time.perf_counter() - clock
        record["experiments"][name] = {
            "status": "complete", "started": started, "finished": _now(),
            "seconds": round(seconds, 3), "files": list(STEP_FILES[name]), "summary": summary,
            "contents": [f for f in contents(directory, STEP_FILES[name]) if f not in before],
            "skipped": sum(sum(context.resolved.get(f"skipped_too_long_{key}", {}).values())
                           for key in _SKIPPED_IN[name]),
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
    render_results_folder(directory)  # rewritten only when it changed (a failed write before)
    return record
