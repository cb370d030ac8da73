"""Fault injection: a run killed at random points (SIGKILL and SIGINT) resumes to the same
results as an uninterrupted run, with no temporary files and a valid results.json throughout.

The run is a forked copy of this process (no interpreter start-up per kill, so the test takes
seconds): planted-anchor on synthetic-k3, one seed, four examples, every experiment whose
numbers are deterministic and quick (compression's Table 3 is wall-clock time).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch

from anchor_flow import RunConfig, load_model, load_run, run_experiments

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

CONFIG = RunConfig(
    task="synthetic-k3", seeds=(42,), n_examples=4, n_components=2,
    experiments=("saliency", "isolation", "deep", "diagnosis"),
)  # fmt: skip
N_KILLS = 6


def _schema() -> dict:
    text = resources.files("anchor_flow").joinpath("data/results.schema.json").read_text()
    return json.loads(text)


def _run_in_child(model, out: Path) -> int:
    pid = os.fork()
    if pid == 0:  # the child: run, then leave without pytest's cleanup
        code = 1
        # SIGINT raises KeyboardInterrupt even where pytest runs as a background job (ignored).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            torch.set_num_threads(1)
            run_experiments(model, out, CONFIG, progress=False)
            code = 0
        except KeyboardInterrupt:
            code = 130
        finally:
            sys.stdout.flush()
            os._exit(code)
    return pid


def _files(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file()}


def _same(path: Path, other: Path) -> bool:
    if path.suffix == ".npz":
        a, b = np.load(path), np.load(other)
        return sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    return path.read_bytes() == other.read_bytes()


def test_killed_runs_resume_to_the_uninterrupted_results(tmp_path: Path) -> None:
    model = load_model("planted-anchor")
    reference = tmp_path / "reference"
    clock = time.perf_counter()
    run_experiments(model, reference, CONFIG, progress=False)
    duration = time.perf_counter() - clock
    out = tmp_path / "killed"
    rng = random.Random(15)
    schema = _schema()
    for kill in range(N_KILLS):
        pid = _run_in_child(model, out)
        time.sleep(rng.uniform(0.05, 0.4) * duration)
        os.kill(pid, signal.SIGKILL if kill % 2 == 0 else signal.SIGINT)
        os.waitpid(pid, 0)
        if (out / "results.json").exists():
            jsonschema.validate(load_run(out), schema)
    run_experiments(model, out, CONFIG, progress=False)
    record, expected = load_run(out), load_run(reference)
    jsonschema.validate(record, schema)
    for name, entry in expected["experiments"].items():
        assert record["experiments"][name]["summary"] == entry["summary"], name
        assert record["experiments"][name]["contents"] == entry["contents"], name
    files, reference_files = _files(out), _files(reference)
    assert sorted(files) == sorted(reference_files)  # no temporary files, no lock, no extras
    for name, path in reference_files.items():
        if name not in ("results.json", "report.html"):
            assert _same(files[name], path), name
