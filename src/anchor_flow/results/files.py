"""Files of result objects: one ``<stem>.npz`` of arrays and one ``<stem>_meta.json``.

Every result class (ICL, isolation, deep layers, re-weighting, diagnosis, compression) saves
through here, so all writes are atomic (a temporary file in the same folder renamed into
place: a later run never trusts a half-written file) and all reads fail with one kind of
:class:`~anchor_flow.errors.ResultsError` that names the folder and the expected files.
:class:`StoredResult` gives a result dataclass its ``save``/``load`` from a few class
attributes (file stem, schema, tensor fields).
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import Tensor

from anchor_flow.errors import ResultsError

__all__ = ["StoredResult", "load_arrays", "save_arrays", "write_atomic"]

_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomic(target: Path, write: Callable[[Any], Any]) -> None:
    """Write ``target`` through a temporary file in its folder renamed into place.

    ``target`` is whole or untouched, whatever happens; a failure to write (a full disk, a
    read-only folder, an immutable file) is one :class:`ResultsError` naming the file.
    """
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as error:
        raise _unwritable(target, error) from error
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are ordinary files
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, target)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise _unwritable(target, error) from error
        raise


def _unwritable(target: Path, error: OSError) -> ResultsError:
    reason = error.strerror or str(error) or type(error).__name__
    return ResultsError(
        f"cannot write {str(target)!r} ({reason}); free space on that disk or make the folder "
        "and the file writable, then rerun the command (what is there is whole: a run resumes)"
    )


def save_arrays(
    directory: str | os.PathLike[str],
    stem: str,
    arrays: Mapping[str, Tensor | np.ndarray],
    meta: Mapping[str, Any],
) -> None:
    """Write ``<stem>.npz`` and ``<stem>_meta.json`` into ``directory``, each atomically.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> save_arrays(folder, "x", {"a": torch.ones(2)}, {"schema": "s/1"})
        >>> load_arrays(folder, "x", schema="s/1", names=["a"], what="x")[0]["a"]
        tensor([1., 1.])
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    plain = {k: v.numpy() if isinstance(v, Tensor) else v for k, v in arrays.items()}
    write_atomic(directory / f"{stem}.npz", lambda f: np.savez_compressed(f, **plain))  # type: ignore[arg-type]
    write_atomic(directory / f"{stem}_meta.json", lambda f: f.write(json.dumps(meta).encode()))


def load_arrays(
    directory: str | os.PathLike[str],
    stem: str,
    *,
    schema: str,
    names: Iterable[str],
    what: str,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read what :func:`save_arrays` wrote; check the schema.

    Args:
        directory: the folder.
        stem: file stem, e.g. ``"isolation"``.
        schema: the expected ``meta["schema"]``.
        names: the arrays to read (all required).
        what: the result's name for error messages, e.g. ``"an isolation result"``.

    Returns:
        ``(arrays, meta)``.
    """
    directory = Path(directory)
    try:
        meta = json.loads((directory / f"{stem}_meta.json").read_text())
        with np.load(directory / f"{stem}.npz") as data:
            arrays = {name: torch.from_numpy(data[name]) for name in names}
    except (
        OSError,
        json.JSONDecodeError,
        ValueError,
        KeyError,
        EOFError,
        zipfile.BadZipFile,
    ) as error:
        raise ResultsError(
            f"cannot read {what} from {str(directory)!r}: {error}; expected {stem}.npz and "
            f"{stem}_meta.json written by its save()"
        ) from error
    if meta.get("schema") != schema:
        raise ResultsError(
            f"{str(directory)!r} holds schema {meta.get('schema')!r}; expected {schema!r}"
        )
    return arrays, meta


StoredT = TypeVar("StoredT", bound="StoredResult")


class StoredResult:
    """Mixin of frozen result dataclasses stored as ``<stem>.npz`` and ``<stem>_meta.json``.

    A subclass names its files (``_STEM``, e.g. ``"deep"``), its ``_SCHEMA``, its tensor
    fields (``_ARRAYS``) and itself in errors (``_WHAT``, e.g. ``"a deep-layer result"``);
    its other fields travel in the JSON file through :meth:`_meta` and
    :meth:`_fields_from_meta`. The JSON file holds ``schema``, ``settings`` and then those.
    """

    _STEM: ClassVar[str]
    _SCHEMA: ClassVar[str]
    _ARRAYS: ClassVar[tuple[str, ...]]
    _WHAT: ClassVar[str]
    settings: dict[str, Any]

    def _meta(self) -> dict[str, Any]:
        """The JSON-safe fields besides the tensors and ``settings``."""
        return {}

    @classmethod
    def _fields_from_meta(cls, meta: Mapping[str, Any]) -> dict[str, Any]:
        """The constructor arguments :meth:`_meta` wrote."""
        return {}

    def _detach_arrays(self) -> None:
        """Keep detached CPU copies of the tensor fields (for ``__post_init__``)."""
        for name in self._ARRAYS:
            object.__setattr__(self, name, getattr(self, name).detach().cpu())

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write ``<stem>.npz`` and ``<stem>_meta.json`` into ``directory``, each atomically."""
        arrays = {name: getattr(self, name).numpy() for name in self._ARRAYS}
        meta = {"schema": self._SCHEMA, "settings": self.settings, **self._meta()}
        save_arrays(directory, self._STEM, arrays, meta)

    @classmethod
    def load(cls: type[StoredT], directory: str | os.PathLike[str]) -> StoredT:
        """Read a result written by :meth:`save`."""
        arrays, meta = load_arrays(
            directory, cls._STEM, schema=cls._SCHEMA, names=cls._ARRAYS, what=cls._WHAT
        )
        build: Callable[..., StoredT] = cls
        return build(settings=meta["settings"], **cls._fields_from_meta(meta), **arrays)
