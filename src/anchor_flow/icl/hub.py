"""A task's split from the Hugging Face hub as the hub serves it today (PAPER.md §0.2).

``datasets`` >= 4 refuses loading scripts, and the main branches of ``CogComp/trec`` and
``SemEvalWorkshop/emo`` hold only one (``trec.py``, ``emo.py``). The hub keeps an automatic
parquet conversion of both on the revision ``refs/convert/parquet``, one folder per config
(``default/`` for TREC, ``emo2019/`` for EmoC) with ``<split>/0000.parquet`` files that carry the
dataset card's columns and class labels. :func:`hub_frame` reads the main branch and, when that
is a script, the conversion (``load_dataset(id, revision="refs/convert/parquet",
data_dir=<config>, split=...)``, which ``datasets`` resolves like any parquet repository).
When the hub cannot be reached (or ``HF_HUB_OFFLINE`` is set) it reads the local cache only,
so a missing dataset fails in seconds instead of retrying for a minute.

Deliberately not here: local files and rows -> examples (:mod:`anchor_flow.icl.data`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from anchor_flow.icl.tasks import Task, TaskError
from anchor_flow.models.hub import hub_unreachable

__all__ = ["PARQUET_REVISION", "hub_frame"]

PARQUET_REVISION = "refs/convert/parquet"
LOCAL_HINT = (
    "Put train/test files in a folder and pass data_dir=... (--data-dir DIR): "
    "DIR/train.jsonl and DIR/test.jsonl with columns text,label"
)


def _is_script_refusal(error: Exception) -> bool:
    text = str(error).lower()
    return "script" in text or "trust_remote_code" in text


@contextlib.contextmanager
def _cache_only(offline: bool) -> Iterator[None]:
    """``datasets`` and ``huggingface_hub`` in offline mode for the block (cache only)."""
    if not offline:
        yield
        return
    import datasets.config
    import huggingface_hub.constants

    modules: tuple[Any, ...] = (datasets.config, huggingface_hub.constants)
    saved = [(m, getattr(m, "HF_HUB_OFFLINE", None)) for m in modules]
    for module, _ in saved:
        module.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for module, value in saved:
            module.HF_HUB_OFFLINE = value


def hub_frame(task: Task, split: str) -> Any:  # -> pandas.DataFrame
    """One split of ``task.hub_id`` as a pandas frame, from the main branch or, when that is a
    loading script, from the hub's parquet conversion.

    Example:
        >>> hub_frame(get_task("trec"), "test").columns.tolist()  # doctest: +SKIP
        ['text', 'coarse_label', 'fine_label']

    Raises:
        TaskError: one line naming the dataset, the reason and ``--data-dir``.
    """
    try:
        import datasets
    except ImportError as error:  # pragma: no cover - datasets is a dependency
        raise TaskError(f"the datasets package is not installed. {LOCAL_HINT}") from error
    name = repr(task.hub_id) + (f" ({task.hub_config})" if task.hub_config else "")
    unreachable = hub_unreachable()
    with _cache_only(unreachable is not None):
        try:
            dataset = datasets.load_dataset(task.hub_id, task.hub_config, split=split)
        except Exception as error:  # datasets/huggingface_hub raise many types
            if not _is_script_refusal(error):
                raise _hub_error(name, split, error, unreachable) from error
            config = task.hub_parquet_config or task.hub_config or "default"
            try:
                dataset = datasets.load_dataset(
                    task.hub_id, revision=PARQUET_REVISION, data_dir=config, split=split
                )
            except Exception as second:
                reason = (
                    f"{type(error).__name__}: {error} (split {split!r}); this datasets version "
                    "does not run the dataset's loading script, and its parquet conversion "
                    f"(revision {PARQUET_REVISION!r}, config {config!r}) failed too: "
                    f"{type(second).__name__}: {second}"
                )
                raise TaskError(_message(name, reason, unreachable)) from second
    return dataset.to_pandas()


def _hub_error(name: str, split: str, error: Exception, unreachable: str | None) -> TaskError:
    reason = f"{type(error).__name__}: {error} (split {split!r})"
    return TaskError(_message(name, reason, unreachable))


def _message(name: str, reason: str, unreachable: str | None) -> str:
    text = f"cannot load dataset {name} from the Hugging Face hub: {reason}. Offline? "
    where = f" ({unreachable}: only the local cache was read)" if unreachable else ""
    return " ".join((text + LOCAL_HINT + where).split())
