"""Who owns a results folder, who writes it, and what its numbers depend on.

:func:`run_experiments <anchor_flow.run.pipeline.run_experiments>` calls these so that a
results folder never destroys what it did not write and never keeps stale results:

* :func:`check_out` validates an output path before anything is created: not a file, not under
  a file, writable, not in ``/proc``, ``/sys`` or ``/dev``, and not somebody else's folder (an
  existing, non-empty folder without ``results.json`` is refused);
* :func:`hold_lock` holds an exclusive ``fcntl`` lock on ``.anchor-flow.lock`` in the folder for
  the whole run; a second writer is refused at once with the holder's process id. The kernel
  drops the lock when its process dies, so a killed run never blocks the next one;
* :func:`fingerprints` hashes what the numbers depend on besides the settings: the task
  description's content, the examples read (train and test texts and labels, whatever their
  source), the model's weights and its tokenizer;
* :func:`listed_files` is what a previous run wrote (``--restart`` deletes only these);
  :func:`recovery_files` is what ``--restart`` deletes when ``results.json`` cannot be read
  (truncated, or from another schema): the record's own list where it still has one, and the
  files the run's layout names.

Cost of the model fingerprint: one pass over the weights. A checkpoint folder is hashed file by
file in 1 MiB chunks (reading GPT-2 XL's 6 GB takes seconds from the page cache); a model
object's parameters are copied to the CPU one tensor at a time and hashed (memory: the largest
tensor). Deliberately not here: which experiment to skip (the pipeline decides from the record).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from anchor_flow.errors import ResultsError
from anchor_flow.models.offload import stored_tensor

__all__ = [
    "LOCK_NAME",
    "RESULT_SUFFIXES",
    "check_out",
    "fingerprints",
    "hold_lock",
    "listed_files",
    "recovery_files",
    "remove_listed",
    "remove_temporary",
]

LOCK_NAME = ".anchor-flow.lock"
_SYSTEM = (Path("/proc"), Path("/sys"), Path("/dev"))
_CHUNK = 1 << 20


def _foreign(directory: Path, known: Sequence[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in (LOCK_NAME, *known))


def check_out(out: str | os.PathLike[str], *, owned_if: Sequence[str] = ("results.json",)) -> Path:
    """``out`` as a folder this run may write into; nothing is created.

    Example:
        >>> import tempfile
        >>> check_out(Path(tempfile.mkdtemp()) / "new").name
        'new'

    Args:
        out: the results folder (it may not exist yet).
        owned_if: an existing, non-empty folder is accepted only when it holds one of these
            files (a previous anchor-flow run's record).

    Raises:
        ResultsError: ``out`` is a file, lies under a file, is not writable, is a system path,
            or is a non-empty folder that anchor-flow did not write.
    """
    directory = Path(out)
    absolute = Path(os.path.abspath(directory))
    if any(absolute == root or root in absolute.parents for root in _SYSTEM):
        raise ResultsError(f"--out {str(out)!r} is a system path; expected a folder for results")
    if directory.exists() and not directory.is_dir():
        raise ResultsError(f"--out {str(out)!r} is an existing file; expected a folder")
    existing = absolute
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ResultsError(
            f"--out {str(out)!r} lies under the file {str(existing)!r}; expected a folder path"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ResultsError(f"--out {str(out)!r}: {str(existing)!r} is not writable")
    if directory.is_dir():
        foreign = _foreign(directory, ())
        if foreign and not any((directory / name).is_file() for name in owned_if):
            raise ResultsError(
                f"--out {str(out)!r} is a non-empty folder that no anchor-flow run wrote (it "
                f"holds {', '.join(map(repr, foreign[:3]))}{', ...' if len(foreign) > 3 else ''}"
                " and no results.json); choose a new or empty folder"
            )
    return directory


@contextlib.contextmanager
def hold_lock(directory: Path) -> Iterator[None]:
    """Hold the folder's writer lock (``.anchor-flow.lock``, ``fcntl.flock``) while inside.

    Raises:
        ResultsError: another live process holds it (its pid is in the message).
    """
    path = directory / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise ResultsError(
                f"{str(directory)!r} is being written by another anchor-flow run (pid {holder}); "
                "wait for it to finish or choose another output folder"
            ) from None
        # The holder before us may have unlinked the file after we opened it: lock the new one.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def listed_files(record: Mapping[str, Any]) -> list[str]:
    """Every path a run record lists as written, relative to its folder."""
    names: list[str] = []
    for entry in record.get("experiments", {}).values():
        names += entry.get("contents") or entry.get("files", ())
    names += (record.get("null_model") or {}).get("files", ())  # the findings' null model
    return names


#: What a step writes inside its folders (``<stem>.npz``, ``<stem>_meta.json``, CSVs): a file
#: of another kind there (a user's notes) is never deleted by a resume or a recovery.
RESULT_SUFFIXES = (".npz", ".json", ".csv")


def recovery_files(directory: Path, layout: Sequence[str]) -> list[str]:
    """What ``--restart`` deletes when the record is unreadable or from another schema.

    ``layout`` is every path a run may write (``"deep.csv"``, ``"deep/"``, ...). Listed files
    are deleted; inside a listed folder only the result files (``.npz``, ``.json``, ``.csv``),
    so a user's notes there stay. A record that still parses adds its own list.
    """
    names = [n for n in layout if not n.endswith("/")]
    for folder in (n for n in layout if n.endswith("/")):
        names += [f for f in contents(directory, [folder]) if f.endswith(RESULT_SUFFIXES)]
    try:
        raw = json.loads((directory / "results.json").read_text())
        names += listed_files(raw) if isinstance(raw, dict) else []
    except (OSError, ValueError, AttributeError, TypeError):
        pass  # truncated or not a record: the layout alone
    return [n for n in dict.fromkeys(names) if isinstance(n, str) and _inside(directory, n)]


def _inside(directory: Path, name: str) -> bool:
    """A listed name that stays inside the folder (an edited record cannot reach out)."""
    target = Path(os.path.abspath(directory / name))
    return Path(os.path.abspath(directory)) in target.parents


def contents(directory: Path, names: Sequence[str]) -> list[str]:
    """The files a step wrote: ``names`` with each folder (``"deep/"``) expanded to its files."""
    found: list[str] = []
    for name in names:
        path = directory / name.rstrip("/")
        if path.is_dir():
            found += sorted(str(p.relative_to(directory)) for p in path.rglob("*") if p.is_file())
        elif path.exists():
            found.append(name)
    return found


def remove_listed(directory: Path, names: Sequence[str]) -> None:
    """Delete the listed paths (a listed folder only when nothing unlisted is left in it)."""
    for name in names:
        path = directory / name.rstrip("/")
        if path.is_dir() and not name.endswith("/"):
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    parents = {(directory / n).parent for n in names} - {directory}
    for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
        while parent != directory and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent


def remove_temporary(directory: Path, names: Sequence[str]) -> None:
    """Delete the temporary files a killed writer left (``.<name>.*.tmp``, see ``write_atomic``)
    next to the listed ``names`` and inside the listed folders; call it holding the lock."""
    for name in names:
        path = directory / name.rstrip("/")
        for tmp in directory.glob(f".{path.name}.*.tmp"):
            tmp.unlink(missing_ok=True)
        if name.endswith("/") and path.is_dir():
            for tmp in path.rglob(".*.tmp"):
                tmp.unlink(missing_ok=True)


def _digest(parts: Iterator[bytes]) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part)
    return hasher.hexdigest()[:16]


def _task_bytes(task: Any) -> Iterator[bytes]:
    for field in dataclasses.fields(task):
        value = getattr(task, field.name)
        if not callable(value):
            yield f"{field.name}={value!r};".encode()


def _data_bytes(data: Any) -> Iterator[bytes]:
    for split in (data.train, data.test):
        yield b"split;"
        for example in split:
            yield json.dumps([example.text, example.label], default=str).encode()


def _folder_bytes(folder: Path) -> Iterator[bytes]:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        yield str(path.relative_to(folder)).encode()
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                yield chunk


def _parameter_bytes(model: Any) -> Iterator[bytes]:
    import torch

    for name, tensor in model.state_dict().items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            if tensor.is_meta:  # offloaded by accelerate (a device map's "cpu" / "disk")
                tensor = stored_tensor(model, name)
            flat = tensor.detach().to("cpu").contiguous().view(-1)
            yield f"{name}:{flat.dtype};".encode()
            for start in range(0, flat.numel(), _CHUNK):
                yield flat[start : start + _CHUNK].view(torch.uint8).numpy().tobytes()


def _tokenizer_bytes(tokenizer: Any) -> Iterator[bytes]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        yield backend.to_str().encode()
    else:
        yield json.dumps(sorted(tokenizer.get_vocab().items())).encode()
    yield json.dumps(getattr(tokenizer, "special_tokens_map", {}), default=str).encode()


def fingerprints(
    task: Any, data: Any, model: Any, tokenizer: Any, model_source: str | None
) -> dict[str, str]:
    """Hashes of what the numbers depend on besides the settings (see the module docstring).

    ``model_source`` naming a checkpoint folder hashes the folder's files (weights and
    tokenizer); otherwise the model's floating-point parameters and its tokenizer are hashed.
    """
    folder = Path(model_source) if model_source else None
    if folder is not None and folder.is_dir():
        weights = _digest(_folder_bytes(folder))
    else:
        weights = _digest(_parameter_bytes(model))
    return {
        "task": _digest(_task_bytes(task)),
        "data": _digest(_data_bytes(data)),
        "model": weights,
        "tokenizer": "" if tokenizer is None else _digest(_tokenizer_bytes(tokenizer)),
    }


def changed(previous: Mapping[str, Any], current: Mapping[str, str]) -> list[str]:
    """What differs between two fingerprints, e.g. ``["fingerprint.task (the task ...)"]``."""
    what = {"task": "the task description's content", "data": "the examples read",
            "model": "the model's weights", "tokenizer": "the tokenizer"}  # fmt: skip
    old = previous.get("fingerprint")
    if not isinstance(old, Mapping):  # an edited or foreign record: nothing can be checked
        return ["fingerprint (missing: the inputs of the recorded run cannot be checked)"]
    return [f"fingerprint.{key} ({what.get(key, key)} changed)"
            for key, value in current.items() if old.get(key) != value]  # fmt: skip
