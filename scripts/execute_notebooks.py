"""Executed copies of notebooks/*.ipynb for the documentation site (docs/notebooks/).

The committed notebooks stay stripped; the site renders these copies with their outputs. A
copy records the SHA-256 of the notebook it was executed from, so an unchanged notebook is
not executed again. Copies written by the test suite (tests/model/test_notebooks.py writes
one into $ANCHOR_FLOW_NOTEBOOK_OUTPUTS when that is set, as .ci/run does) are reused, so
CI executes each notebook once. Plotly figures get an offline HTML rendering (the site's
notebook renderer cannot draw the plotly mime type).

    python scripts/execute_notebooks.py [--out docs/notebooks] [--from DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SOURCE_KEY = "anchor_flow_source_sha256"
CELL_TIMEOUT_S = 300
PLOTLY_MIME = "application/vnd.plotly.v1+json"


def source_hash(path: Path) -> str:
    """The SHA-256 of a committed notebook's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _recorded_hash(path: Path) -> str | None:
    import nbformat

    if not path.is_file():
        return None
    try:
        return nbformat.read(path, as_version=4).metadata.get(SOURCE_KEY)
    except Exception:  # an unreadable copy is executed again
        return None


def plotly_as_html(notebook: Any) -> Any:
    """Give every plotly figure output an offline HTML rendering (the site cannot render the
    plotly mime type): plotly.js inlined once, in the notebook's first figure, no CDN."""
    import plotly.io as pio

    first = True
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if PLOTLY_MIME not in data:
                continue
            figure = pio.from_json(json.dumps(data[PLOTLY_MIME]), skip_invalid=True)
            data["text/html"] = pio.to_html(
                figure, full_html=False, include_plotlyjs=first, include_mathjax=False
            )
            del data[PLOTLY_MIME]
            first = False
    return notebook


def write(notebook: Any, source: Path, target: Path) -> None:
    """Write an executed ``notebook`` of ``source`` to ``target`` for the site, atomically."""
    import nbformat

    notebook = plotly_as_html(notebook)
    notebook.metadata[SOURCE_KEY] = source_hash(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".ipynb.tmp")
    nbformat.write(notebook, tmp)
    tmp.replace(target)


def execute(source: Path, target: Path) -> None:
    """Execute ``source`` in a scratch folder (one thread, offline) and write it to ``target``."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(source, as_version=4)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as scratch:
        client = NotebookClient(
            notebook,
            timeout=CELL_TIMEOUT_S,
            kernel_name="python3",
            resources={"metadata": {"path": scratch}},
        )
        client.execute()
    write(notebook, source, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "notebooks")
    parser.add_argument(
        "--from",
        dest="reuse",
        type=Path,
        default=os.environ.get("ANCHOR_FLOW_NOTEBOOK_OUTPUTS") or None,
        help="a folder of executed copies to reuse when they match (default: "
        "$ANCHOR_FLOW_NOTEBOOK_OUTPUTS)",
    )
    args = parser.parse_args(argv)
    for source in sorted((ROOT / "notebooks").glob("*.ipynb")):
        target = args.out / source.name
        wanted = source_hash(source)
        if _recorded_hash(target) == wanted:
            print(f"{source.name}: up to date")
            continue
        if args.reuse is not None and _recorded_hash(args.reuse / source.name) == wanted:
            import nbformat

            write(nbformat.read(args.reuse / source.name, as_version=4), source, target)
            print(f"{source.name}: executed copy taken from {args.reuse}")
            continue
        print(f"{source.name}: executing ...", flush=True)
        execute(source, target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
