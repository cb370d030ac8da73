"""Reading a task's demonstration pool and evaluation split (PAPER.md §0.2, §7).

:func:`load_task_data` returns the train split (the pool demonstrations are drawn from) and
the test split (GLUE validation for SST-2, as the paper) of a :class:`~anchor_flow.icl.tasks.Task`
as :class:`~anchor_flow.icl.prompts.Example` tuples with class indices. One argument picks the
source: ``data_dir=None`` reads the Hugging Face hub through ``datasets.load_dataset``; a folder
reads local files with pandas (``train.*`` and ``test.*`` as JSONL, JSON, CSV or Parquet), so
the library works offline. Rows with a negative label are dropped, as in the paper's code.

Deliberately not here: the test subsample, seeds and demonstration sampling
(:mod:`anchor_flow.icl.sampling`), prompt assembly (:mod:`anchor_flow.icl.prompts`) and any
caching beyond what ``datasets`` does itself.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anchor_flow.icl.hub import LOCAL_HINT, hub_frame
from anchor_flow.icl.prompts import Example
from anchor_flow.icl.tasks import Task, TaskError, get_task

__all__ = ["TaskData", "load_task_data", "read_examples", "save_task_data"]

logger = logging.getLogger(__name__)

EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")
_FALLBACK_COLUMNS = ("text", "label")
_LOCAL_HINT = LOCAL_HINT


@dataclass(frozen=True)
class TaskData:
    """A task's demonstration pool and evaluation split.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "train.csv").write_text("text,label\\ndull,0\\nfun,Positive\\n")
        >>> _ = (folder / "validation.csv").write_text("text,label\\ngreat,1\\n")
        >>> data = load_task_data("sst2", data_dir=folder)
        >>> data.train
        (Example(text='dull', label=0), Example(text='fun', label=1))

    Attributes:
        task: the task the examples belong to.
        train: the demonstration pool (rows with a negative label dropped).
        test: the evaluation split (``task.test_split`` on the hub, e.g. GLUE validation).
        source: where the examples came from, ``"hub:<id>[/<config>]"`` or ``"local:<folder>"``.
    """

    task: Task
    train: tuple[Example, ...]
    test: tuple[Example, ...]
    source: str

    def __post_init__(self) -> None:
        for split, examples in (("train", self.train), ("test", self.test)):
            if not examples:
                raise TaskError(f"TaskData for {self.task.name!r}: the {split} split is empty")
            for i, example in enumerate(examples):
                if example.label is None or not 0 <= example.label < self.task.n_classes:
                    raise TaskError(
                        f"TaskData for {self.task.name!r}: {split} example {i} has label "
                        f"{example.label!r}; expected a class index in "
                        f"0..{self.task.n_classes - 1}"
                    )


def load_task_data(task: Task | str, *, data_dir: str | os.PathLike[str] | None = None) -> TaskData:
    """Read a task's train and test examples from the hub or from a local folder.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "train.jsonl").write_text('{"text": "dull", "label": 0}\\n')
        >>> _ = (folder / "test.jsonl").write_text('{"text": "fun", "label": " Positive"}\\n')
        >>> load_task_data("sst2", data_dir=folder).test
        (Example(text='fun', label=1),)

    Args:
        task: a :class:`Task`, a registered name (``"sst2"``) or a task description file.
        data_dir: ``None`` loads ``task.hub_id`` with ``datasets.load_dataset``. A folder
            holding ``train.<ext>`` and ``test.<ext>`` (or the task's own split names, e.g.
            ``validation`` for SST-2), directly or in a subfolder named after the task, with
            ``<ext>`` one of jsonl, json, csv, parquet, is read locally.

    Raises:
        TaskError: unknown task, unreachable hub, missing or ambiguous files, missing columns,
            unknown labels, non-text texts or an empty split.
    """
    task = get_task(task)
    if data_dir is not None:
        folder, files = _find_split_files(task, Path(data_dir))
        return TaskData(
            task=task,
            train=read_examples(files["train"], task=task),
            test=read_examples(files["test"], task=task),
            source=f"local:{folder}",
        )
    if task.builtin_data is not None:
        train, test = task.builtin_data()
        return TaskData(task=task, train=tuple(train), test=tuple(test), source="builtin")
    if task.hub_id is None:
        raise TaskError(
            f"task {task.name!r} has no hub_id, so its data cannot come from the Hugging Face "
            f"hub. {_LOCAL_HINT}"
        )
    source = f"hub:{task.hub_id}" + (f"/{task.hub_config}" if task.hub_config else "")
    splits = {}
    for role, split in (("train", task.train_split), ("test", task.test_split)):
        frame = hub_frame(task, split)
        splits[role] = _frame_examples(frame, task, f"{source} split {split!r}")
    return TaskData(task=task, train=splits["train"], test=splits["test"], source=source)


def read_examples(path: str | os.PathLike[str], *, task: Task) -> tuple[Example, ...]:
    """Read one local split file (JSONL, JSON, CSV or Parquet) into examples with class indices.

    Example:
        >>> import tempfile, pathlib
        >>> from anchor_flow.icl.tasks import get_task
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "test.csv"
        >>> _ = path.write_text("text,label\\nwhat is AI?,abbreviation\\nwho?,-1\\n")
        >>> read_examples(path, task=get_task("trec"))
        (Example(text='what is AI?', label=0),)

    The text column is ``task.text_column`` if present, else ``"text"``; the label column is
    ``task.label_column`` if present, else ``"label"``. Labels are class indices or strings equal
    to a label name or label word (case and surrounding spaces ignored). Rows with a negative
    label are dropped. A ``.json`` file holds a JSON array of records or JSON lines.

    Raises:
        TaskError: unreadable file, unknown extension, missing columns, a missing or non-string
            text, an unknown or out-of-range label, or no rows left.
    """
    path = Path(path)
    return _frame_examples(_read_frame(path), task, repr(str(path)))


def save_task_data(
    data: TaskData, directory: str | os.PathLike[str], *, overwrite: bool = True
) -> Path:
    """Write ``train.jsonl`` and ``test.jsonl`` (columns text,label) into ``directory``.

    Run it once on a machine with network access; afterwards
    ``load_task_data(task, data_dir=directory)`` works offline. Each file is written atomically
    (temp file + ``os.replace``) with the umask's permissions; other files in ``directory``
    are left alone.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "train.csv").write_text("text,label\\ndull,0\\n")
        >>> _ = (folder / "test.csv").write_text("text,label\\nfun,1\\n")
        >>> data = load_task_data("sst2", data_dir=folder)
        >>> load_task_data("sst2", data_dir=save_task_data(data, folder / "copy")).test
        (Example(text='fun', label=1),)

    Args:
        data: the splits to write.
        directory: the folder (created if needed).
        overwrite: replace an existing ``train.jsonl`` / ``test.jsonl`` of other content;
            with ``False`` (what ``anchor-flow data`` passes) such a file is refused and
            nothing is written. A file that already holds exactly these rows is kept.

    Returns:
        The directory, created if needed.

    Raises:
        TaskError: ``directory`` cannot be created, or (``overwrite=False``) holds a
            ``train.jsonl`` / ``test.jsonl`` with other rows.
    """
    from anchor_flow.results.files import write_atomic

    target = Path(directory)
    texts = {f"{name}.jsonl": _jsonl(examples)
             for name, examples in (("train", data.train), ("test", data.test))}  # fmt: skip
    if not overwrite and target.is_dir():
        other = [n for n, t in texts.items() if (target / n).exists() and _read(target / n) != t]
        if other:
            raise TaskError(
                f"{str(target / other[0])!r} exists and holds other rows than "
                f"{data.source!r}; move it away or choose another --out folder (nothing was "
                "written)"
            )
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TaskError(
            f"cannot create data folder {str(target)!r} ({error.strerror}); expected a "
            "writable folder path"
        ) from error
    for name, text in texts.items():
        if _read(target / name) != text:  # the same rows: kept as they are
            write_atomic(target / name, functools.partial(_write, text))
    return target


def _jsonl(examples: tuple[Example, ...]) -> bytes:
    lines = (json.dumps({"text": e.text, "label": e.label}, ensure_ascii=False) for e in examples)
    return "".join(line + "\n" for line in lines).encode("utf-8")


def _write(text: bytes, handle: Any) -> None:
    handle.write(text)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _find_split_files(task: Task, data_dir: Path) -> tuple[Path, dict[str, Path]]:
    """The folder used and the train/test file in it (``DIR/`` or ``DIR/<task.name>/``)."""
    if not data_dir.is_dir():
        what = "is not a folder" if data_dir.exists() else "does not exist"
        raise TaskError(
            f"data_dir {str(data_dir)!r} {what}; expected a folder with train.<ext> and "
            f"test.<ext> (ext: {', '.join(e[1:] for e in EXTENSIONS)}), directly or in a "
            f"subfolder {task.name!r}"
        )
    folders = [data_dir.resolve()]
    if (data_dir / task.name).is_dir():
        folders.append((data_dir / task.name).resolve())
    names = {"train": ["train"], "test": ["test"]}
    for role, split in (("train", task.train_split), ("test", task.test_split)):
        if split not in names[role]:
            names[role].append(split)
    found: dict[str, list[Path]] = {"train": [], "test": []}
    unknown: list[Path] = []
    for folder in folders:
        for path in sorted(folder.iterdir()):
            kind = next((r for r, stems in names.items() if path.stem in stems), None)
            if kind is None or not path.is_file():
                continue
            (found[kind] if path.suffix.lower() in EXTENSIONS else unknown).append(path)
    files: dict[str, Path] = {}
    for role in ("train", "test"):
        candidates = found[role]
        expected = " or ".join(f"{stem}.<ext>" for stem in names[role])
        if len(candidates) > 1:
            raise TaskError(
                f"data_dir {str(data_dir)!r} has {len(candidates)} files for the {role} split "
                f"({', '.join(str(p) for p in candidates)}); expected exactly one {expected}; "
                "remove or rename the others"
            )
        if not candidates:
            odd = [p for p in unknown if p.stem in names[role]]
            if odd:
                raise TaskError(
                    f"{str(odd[0])!r} has an unknown extension {odd[0].suffix!r}; expected "
                    f"{expected} with ext one of {', '.join(e[1:] for e in EXTENSIONS)}"
                )
            present = sorted(
                str(p.relative_to(data_dir.resolve())) for f in folders for p in f.iterdir()
            )
            raise TaskError(
                f"data_dir {str(data_dir)!r} has no {role} file for task {task.name!r}; found "
                f"{present or 'nothing'}; expected {expected} (ext: "
                f"{', '.join(e[1:] for e in EXTENSIONS)}) in the folder or in its subfolder "
                f"{task.name!r}"
            )
        files[role] = candidates[0]
    return files["train"].parent, files


def _read_frame(path: Path) -> Any:  # -> pandas.DataFrame
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix not in EXTENSIONS:
        raise TaskError(
            f"{str(path)!r} has an unknown extension {path.suffix!r}; expected one of "
            f"{', '.join(EXTENSIONS)}"
        )
    try:
        if suffix == ".csv":
            # Texts stay strings ("007" is not 7); only empty fields are missing values.
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        if suffix == ".parquet":
            return pd.read_parquet(path)
        with path.open(encoding="utf-8") as f:
            head = f.read(4096).lstrip()
        lines = suffix == ".jsonl" or not head.startswith("[")
        return pd.read_json(path, lines=lines, dtype=False)
    except OSError as error:
        raise TaskError(
            f"cannot read {str(path)!r} ({error.strerror or error}); expected a readable file"
        ) from error
    except Exception as error:  # pandas/pyarrow raise many types for malformed files
        raise TaskError(
            f"cannot parse {str(path)!r} as {suffix[1:]} ({type(error).__name__}: {error}); "
            "expected one record per row with a text and a label column"
        ) from error


def _frame_examples(frame: Any, task: Task, where: str) -> tuple[Example, ...]:
    text_column = _pick_column(frame, task.text_column, "text", where, task)
    label_column = _pick_column(frame, task.label_column, "label", where, task)
    classes = _label_lookup(task)
    examples = []
    dropped = 0
    for row, (text, raw) in enumerate(
        zip(frame[text_column].tolist(), frame[label_column].tolist(), strict=True), start=1
    ):
        label = _label_index(raw, classes, task, where, row)
        if label < 0:
            dropped += 1
            continue
        if not isinstance(text, str):
            raise TaskError(
                f"{where}, data row {row}: text {text!r} in column {text_column!r} is "
                f"{'missing' if _is_missing(text) else type(text).__name__}; expected a string"
            )
        examples.append(Example(text, label))
    if dropped:
        logger.info("%s: dropped %d rows with a negative label", where, dropped)
    if not examples:
        raise TaskError(
            f"{where}: empty dataset ({len(frame)} rows, {dropped} with a negative label); "
            "expected at least one labelled row"
        )
    return tuple(examples)


def _pick_column(frame: Any, preferred: str, fallback: str, where: str, task: Task) -> str:
    for column in (preferred, fallback):
        if column in frame.columns:
            return column
    wanted = repr(preferred) if preferred == fallback else f"{preferred!r} or {fallback!r}"
    raise TaskError(
        f"{where} has no column {wanted} for task {task.name!r}; found columns "
        f"{[str(c) for c in frame.columns]}; rename a column or set the task's "
        f"{'text' if fallback == _FALLBACK_COLUMNS[0] else 'label'}_column"
    )


def _label_lookup(task: Task) -> dict[str, set[int]]:
    classes: dict[str, set[int]] = {}
    for c, (word, name) in enumerate(zip(task.label_words, task.label_names, strict=True)):
        for key in (word, name):
            classes.setdefault(key.strip().lower(), set()).add(c)
    return classes


def _label_index(raw: Any, classes: dict[str, set[int]], task: Task, where: str, row: int) -> int:
    value = raw.item() if hasattr(raw, "item") else raw  # numpy scalars from pandas
    index: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        index = value
    elif isinstance(value, float) and value.is_integer():
        index = int(value)
    elif isinstance(value, str):
        key = value.strip().lower()
        if key.lstrip("-").isdigit():
            index = int(key)
        elif len(classes.get(key, ())) == 1:
            (index,) = classes[key]
        elif key in classes:
            raise TaskError(
                f"{where}, data row {row}: label {value!r} names several classes "
                f"{sorted(classes[key])} of task {task.name!r}; use a class index"
            )
    if index is None or index >= task.n_classes:
        allowed = ", ".join(
            f"{c}={name!r}/{word.strip()!r}"
            for c, (word, name) in enumerate(zip(task.label_words, task.label_names, strict=True))
        )
        shown = "missing" if _is_missing(value) else repr(value)
        raise TaskError(
            f"{where}, data row {row}: label {shown} is not a class of task {task.name!r}; "
            f"expected a class index 0..{task.n_classes - 1} or a label name/word ({allowed}); "
            "negative labels mark rows to skip"
        )
    return index


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
