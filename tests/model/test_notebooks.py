"""Every notebook in notebooks/ is committed stripped, imports only the public API and runs
top to bottom against the offline demo model (each notebook's default)."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import anchor_flow

# Same on every TransformerLens line, so not run again under 3.9: the subject is the notebooks
# through the public API, above the model interface that the tl_class-parametrized tests and
# test_run.py check on every installed line (docs/development.md, "Test tiers").
pytestmark = pytest.mark.same_on_tl_lines

NOTEBOOKS = sorted((Path(__file__).parents[2] / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 180  # per cell; each notebook takes well under a minute on a 2-core CPU
# The paper's order: §2.1 saliency, §2.2 isolation, §2.3 deep layers, §3.1 re-weighting,
# §3.2 compression, §3.3 error diagnosis.
SECTIONS = ("01", "02", "03", "04", "05", "06")


def _code_cells(path: Path) -> list[nbformat.NotebookNode]:
    notebook = nbformat.read(path, as_version=4)
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def _private_imports(source: str) -> list[str]:
    """``anchor_flow`` submodules and names outside ``anchor_flow.__all__`` that ``source``
    imports."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("anchor_flow."):
                bad.append(node.module)
            elif node.module == "anchor_flow":
                bad += [a.name for a in node.names if a.name not in anchor_flow.__all__]
        elif isinstance(node, ast.Import):
            bad += [a.name for a in node.names if a.name.startswith("anchor_flow.")]
    return bad


def test_there_is_one_notebook_per_paper_section():
    prefixes = [path.name[:2] for path in NOTEBOOKS]
    assert all(re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", p.name) for p in NOTEBOOKS), NOTEBOOKS
    assert len(set(prefixes)) == len(prefixes), f"two notebooks share a number: {prefixes}"
    assert set(SECTIONS) <= set(prefixes), f"notebooks/ lacks {set(SECTIONS) - set(prefixes)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stripped(path):
    dirty = [
        index
        for index, cell in enumerate(_code_cells(path))
        if cell.outputs or cell.execution_count is not None
    ]
    assert not dirty, f"{path.name} was committed with outputs in code cells {dirty}; strip them"
    ids = [cell.get("id") for cell in json.loads(path.read_text())["cells"]]  # raw: no repair
    assert None not in ids, f"{path.name} has cells without an id (nbformat 4.5 requires one)"
    assert len(set(ids)) == len(ids), f"{path.name} has duplicate cell ids"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_defaults_to_the_demo_model(path):
    first = _code_cells(path)[0].source
    assert re.search(r'^MODEL = "demo"', first, re.MULTILINE), (
        f'{path.name}: the first code cell should choose the model, MODEL = "demo" by default'
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_uses_only_the_public_api(path):
    bad = [name for cell in _code_cells(path) for name in _private_imports(cell.source)]
    assert not bad, f"{path.name} imports {bad}, which anchor_flow does not export"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
    # The kernel inherits this environment: offline (tests/conftest.py), and one thread,
    # because on a shared 2-core machine torch's thread pool makes these tiny models
    # 10-100x slower than a single thread.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()  # raises CellExecutionError with the failing cell's traceback
    if outputs := os.environ.get("ANCHOR_FLOW_NOTEBOOK_OUTPUTS"):
        # .ci/run: the documentation site renders this executed copy instead of executing
        # the notebook again (scripts/execute_notebooks.py checks the source hash).
        notebook.metadata["anchor_flow_source_sha256"] = hashlib.sha256(
            path.read_bytes()
        ).hexdigest()
        Path(outputs).mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, Path(outputs) / path.name)
