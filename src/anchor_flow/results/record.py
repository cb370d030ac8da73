"""The run record: a results folder's ``results.json`` (schema :data:`SCHEMA`) and its reader.

:func:`anchor_flow.run.pipeline.run_experiments` writes the record; :func:`load_run` reads it
for the report and for resumed runs. The JSON Schema is ``anchor_flow/data/results.schema.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from anchor_flow.errors import ResultsError

__all__ = ["SCHEMA", "load_run"]

SCHEMA = "anchor_flow.run/1"


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
