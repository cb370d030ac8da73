"""Data-parallel runs (issue 17): ``torchrun --nproc-per-node 2 -m anchor_flow.cli run`` on CPU
(gloo) equals a single-process run of the same settings, and only rank 0 writes.

The equality run is one small run of every experiment (planted-anchor on synthetic-k3, two
seeds so that re-weighting gives each rank a seed, ten examples so that diagnosis' M=10
fits). Every rank records the files it opens for writing (an audit hook installed by a
``sitecustomize`` on ``PYTHONPATH``). The error tests start the two ranks themselves, with
the environment torchrun gives them, to read each rank's own exit code and output (torchrun's
agent may terminate the survivors of a failed rank before they exit on their own).
The parts-and-join tests run in this process: a part's random draws and a join of parts
equal the whole list's.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from anchor_flow import load_model, toy_prompts
from anchor_flow.analysis.isolation import IsolationResult, run_isolation
from anchor_flow.applications.compression.baselines import CompressionResult, run_compression
from anchor_flow.applications.compression.outcomes import CompressionOutcomes, compression_outcomes
from anchor_flow.applications.diagnosis.distances import record_diagnosis, run_diagnosis
from anchor_flow.cli import main
from anchor_flow.run.distributed import Ranks
from anchor_flow.run.shards import join_diagnosis

# Same on every TransformerLens line, so not run again under 3.9: the subject is ranks, sharding
# and the launcher, above the model interface that the tl_class-parametrized tests and test_run.py
# check on every installed line (docs/development.md, "Test tiers").
pytestmark = pytest.mark.same_on_tl_lines

ARGS = ["--model", "planted-anchor", "--task", "synthetic-k3", "--seeds", "42,43",
        "--n-examples", "10", "--top-trials", "2", "--epochs", "1", "--null-model", "none",
        "--quiet"]  # fmt: skip
TIMED = ("compression_speed",)  # Table 3 is wall-clock time, measured on rank 0 alone

# Installed in every rank through PYTHONPATH: the audit log of writes under AF_TEST_WATCH, and
# an injected user error (AF_TEST_FAULT="module:function") where the test asks for one.
SITECUSTOMIZE = """
import atexit, os, sys
_watch, _log = os.environ.get("AF_TEST_WATCH"), os.environ.get("AF_TEST_WRITE_LOG")
if _watch and _log and os.environ.get("RANK") is not None:
    _writes = []
    def _hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                mode is None and isinstance(flags, int)
                and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        elif event in ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "shutil.rmtree"):
            path, writing = args[0], True
        else:
            return
        if writing and isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(_watch):
            _writes.append(event + " " + os.fspath(path))
    sys.addaudithook(_hook)
    def _dump():
        with open(os.path.join(_log, "rank-" + os.environ["RANK"] + ".txt"), "w") as f:
            f.write("\\n".join(_writes))
    atexit.register(_dump)
_fault = os.environ.get("AF_TEST_FAULT")
if _fault:
    import importlib
    _module, _name = _fault.split(":")
    def _broken(*args, **kwargs):
        from anchor_flow.errors import AnchorFlowError
        raise AnchorFlowError("injected fault in " + _name)
    setattr(importlib.import_module(_module), _name, _broken)
_kill = os.environ.get("AF_TEST_KILL")  # "rank:module:function": that rank dies (SIGKILL)
if _kill and _kill.split(":")[0] == os.environ.get("RANK"):
    import importlib, signal
    _, _module, _name = _kill.split(":")
    def _die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)
    setattr(importlib.import_module(_module), _name, _die)
"""


def _environment(tmp: Path, watch: Path) -> dict[str, str]:
    site = tmp / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    logs = tmp / "logs"
    logs.mkdir(exist_ok=True)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "AF_TEST_WATCH": str(watch), "AF_TEST_WRITE_LOG": str(logs)}  # fmt: skip


def _writes(tmp: Path) -> dict[int, list[str]]:
    logs = sorted((tmp / "logs").glob("rank-*.txt"))
    return {int(p.stem.split("-")[1]): p.read_text().split("\n") if p.read_text() else []
            for p in logs}  # fmt: skip


def _volatile(record: dict) -> dict:
    experiments = {}
    for name, entry in record["experiments"].items():
        summary = dict(entry["summary"])
        summary.pop("speed", None)
        experiments[name] = {"status": entry["status"], "summary": summary,
                             "files": entry["files"], "skipped": entry["skipped"]}  # fmt: skip
    kept = ("settings", "settings_resolved", "fingerprint", "claim_layers", "findings")
    return {"experiments": experiments, **{k: record.get(k) for k in kept}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("dp")
    single, parallel = tmp / "watched" / "single", tmp / "watched" / "parallel"
    clock = time.perf_counter()
    assert main(["run", "--out", str(single), *ARGS]) == 0
    single_seconds = time.perf_counter() - clock
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "-m", "anchor_flow.cli", "run", "--out", str(parallel),
               *ARGS]  # fmt: skip
    clock = time.perf_counter()
    done = subprocess.run(command, env=_environment(tmp, tmp / "watched"), capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    parallel_seconds = time.perf_counter() - clock
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"\nsingle process: {single_seconds:.1f} s (in-process); torchrun 2 ranks: "
          f"{parallel_seconds:.1f} s (incl. start-up)")  # fmt: skip
    return {"single": single, "parallel": parallel, "tmp": tmp, "stdout": done.stdout}


def test_two_ranks_equal_one_process_file_by_file(runs: dict) -> None:
    single, parallel = runs["single"], runs["parallel"]
    names = {str(p.relative_to(single)) for p in single.rglob("*")}
    assert names == {str(p.relative_to(parallel)) for p in parallel.rglob("*")}
    one = json.loads((single / "results.json").read_text())
    two = json.loads((parallel / "results.json").read_text())
    assert _volatile(one) == _volatile(two)
    assert two["timings"]["ranks"] == 2
    assert one["timings"]["ranks"] == 1
    compared = 0
    for path in sorted(single.rglob("*")):
        other = parallel / path.relative_to(single)
        if path.parts[-2].startswith(TIMED) or path.name.startswith(TIMED):
            continue
        if path.suffix == ".csv":
            pd.testing.assert_frame_equal(pd.read_csv(path), pd.read_csv(other), rtol=1e-6)
        elif path.suffix == ".npz":
            mine, theirs = np.load(path), np.load(other)
            assert mine.files == theirs.files
            for key in mine.files:
                assert mine[key].shape == theirs[key].shape, (path, key)
                assert np.allclose(mine[key], theirs[key], rtol=1e-6, atol=1e-12,
                                   equal_nan=True), (path, key)  # fmt: skip
        elif path.name.endswith("_meta.json"):
            assert json.loads(path.read_text()) == json.loads(other.read_text()), path
        else:
            continue
        compared += 1
    assert compared >= 20  # 8 CSVs, every raw folder's arrays and meta


def test_only_rank_zero_writes_and_holds_the_lock(runs: dict) -> None:
    writes = _writes(runs["tmp"])
    assert sorted(writes) == [0, 1]
    assert writes[1] == [], writes[1][:5]  # rank 1 wrote nothing, not even the lock
    parallel = str(runs["parallel"])
    assert any(w.endswith(f"{parallel}/.anchor-flow.lock") for w in writes[0])
    assert any("results.json" in w for w in writes[0])
    assert all(parallel in w for w in writes[0])  # nothing outside its folder
    lines = runs["stdout"].splitlines()
    assert sum("anchor-flow: finished" in line for line in lines) == 1  # rank 0 alone prints


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _launch(tmp: Path, args: list[str], faults: dict[int, str] | None = None) -> list:
    """Two ranks with torchrun's environment; each one's exit code, stdout and stderr."""
    env = _environment(tmp, tmp)
    shared = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
              "MASTER_PORT": str(_free_port())}  # fmt: skip
    ranks = []
    for rank in range(2):
        own = {**env, **shared, "RANK": str(rank), "LOCAL_RANK": str(rank)}
        if faults and rank in faults:
            own["AF_TEST_FAULT"] = faults[rank]
        ranks.append(subprocess.Popen([sys.executable, "-m", "anchor_flow.cli", "run", *args],
                                      env=own, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))  # fmt: skip
    return [(p.wait(timeout=300), *p.communicate()) for p in ranks]


def test_a_refused_folder_on_rank_zero_ends_every_rank_with_one_line(tmp_path: Path) -> None:
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "notes.txt").write_text("somebody else's folder")
    results = _launch(tmp_path, ["--out", str(out), *ARGS, "--experiments", "deep"])
    for rank, (code, stdout, stderr) in enumerate(results):
        assert code == 2, (rank, stderr[-2000:])
        assert stdout == ""
    assert results[1][2] == ""  # rank 0 alone says it (issue 28)
    assert results[0][2].count("\n") == 1, results[0][2]
    assert "no anchor-flow run wrote" in results[0][2]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_failure_on_rank_one_ends_every_rank_and_resume_skips_on_every_rank(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    args = ["--out", str(out), *ARGS, "--seeds", "42", "--experiments", "isolation,deep"]
    broken = {1: "anchor_flow.analysis.deep:run_deep"}
    results = _launch(tmp_path, args, broken)
    for rank, (code, _, stderr) in enumerate(results):
        assert code == 2, (rank, stderr[-2000:])
    assert results[0][2] == "anchor-flow: error: rank 1: injected fault in run_deep\n"
    assert results[1][2] == ""  # rank 0 alone says it (issue 28)
    record = json.loads((out / "results.json").read_text())
    assert record["experiments"]["isolation"]["status"] == "complete"
    assert record["experiments"]["deep"]["status"] == "failed"
    assert "rank 1: injected fault" in record["experiments"]["deep"]["error"]
    # Resume: isolation is complete and skipped on every rank (rank 1 would fail in it).
    results = _launch(tmp_path, args, {1: "anchor_flow.analysis.isolation:run_isolation"})
    for rank, (code, _, stderr) in enumerate(results):
        assert code == 0, (rank, stderr[-2000:])
    assert "isolation: complete" in results[0][1]
    assert results[1][1] == ""
    record = json.loads((out / "results.json").read_text())
    assert {e["status"] for e in record["experiments"].values()} == {"complete"}


def _launcher(tmp: Path, args: list[str], **env: str) -> subprocess.CompletedProcess:
    """``python -m anchor_flow.cli.launch`` (torchrun's options, then the command), 2 ranks."""
    command = [sys.executable, "-m", "anchor_flow.cli.launch", "--standalone",
               "--nproc-per-node", "2", "run", *args]  # fmt: skip
    return subprocess.run(command, env={**_environment(tmp, tmp), **env}, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def test_the_launcher_gives_one_line_and_exit_2_for_a_bad_input(tmp_path: Path) -> None:
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "notes.txt").write_text("somebody else's folder")
    done = _launcher(tmp_path, ["--out", str(out), *ARGS, "--experiments", "deep"])
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.count("\n") == 1, done.stderr  # no ChildFailedError, no agent log
    assert "no anchor-flow run wrote" in done.stderr


def test_a_rank_that_dies_is_named_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["--out", str(out), *ARGS, "--seeds", "42", "--experiments", "deep"]
    done = _launcher(tmp_path, args, AF_TEST_KILL="1:anchor_flow.analysis.deep:run_deep")
    assert done.returncode == 128 + 9, done.stderr[-3000:]  # rank 1's SIGKILL, the first
    assert done.stderr.count("\n") == 1, done.stderr
    assert re.fullmatch(r"anchor-flow: error: rank 1 \(pid \d+\) died .*rerun the command "
                        r"to resume\n", done.stderr), done.stderr  # fmt: skip
    assert json.loads((out / "results.json").read_text())["experiments"]["deep"]["status"] == (
        "failed"
    )


# In-process: the parts of a prompt list, joined, equal the whole list (what each rank runs).


@pytest.fixture(scope="module")
def model_and_prompts() -> tuple:
    # A random-weight model: unlike the planted one, its outputs move with the random draws.
    return load_model("toy-gpt2"), toy_prompts(9)


def _parts(prompts: list, world: int = 3) -> list[tuple[int, list]]:
    return [Ranks(rank, world).shard(prompts) for rank in range(world)]


def _equal(a: object, b: object) -> None:
    """Equal arrays: integers exactly, floats to float32 rounding (batches pad differently)."""
    for name in a._ARRAYS:  # type: ignore[attr-defined]
        mine, theirs = getattr(a, name), getattr(b, name)
        if mine.is_floating_point():
            assert torch.allclose(mine, theirs, rtol=1e-6, atol=1e-7, equal_nan=True), name
        else:
            assert torch.equal(mine, theirs), name


def test_isolation_parts_draw_the_whole_lists_random_rows(model_and_prompts: tuple) -> None:
    model, prompts = model_and_prompts
    options = {"seed": 42, "layer_counts": (1, 2), "progress": False}
    whole = run_isolation(model, prompts, **options)
    parts = [run_isolation(model, part, first_prompt_id=first, **options)
             for first, part in _parts(prompts)]  # fmt: skip
    _equal(IsolationResult.join(parts), whole)
    unshifted = [run_isolation(model, part, **options) for _, part in _parts(prompts)]
    joined = IsolationResult.join(unshifted)  # every part drawing as prompts 0.. differs
    assert not torch.equal(joined.word_jaccard, whole.word_jaccard)


def test_compression_parts_joined_equal_the_whole_run(model_and_prompts: tuple) -> None:
    model, prompts = model_and_prompts
    options = {"seed": 42, "n_top_trials": 3}
    whole = run_compression(model, prompts, **options)
    parts = [compression_outcomes(model, part, first_prompt_id=first, **options)
             for first, part in _parts(prompts)]  # fmt: skip
    joined = CompressionResult.from_outcomes(CompressionOutcomes.join(parts), "seed-42")
    _equal(joined, whole)
    assert joined.settings == whole.settings
    unshifted = [compression_outcomes(model, part, **options) for _, part in _parts(prompts)]
    wrong = CompressionResult.from_outcomes(CompressionOutcomes.join(unshifted), "seed-42")
    assert not torch.equal(wrong.trials, whole.trials)


def test_diagnosis_parts_joined_equal_the_whole_run(model_and_prompts: tuple) -> None:
    model, prompts = model_and_prompts
    options = {"n_components": 4, "progress": False}
    whole = run_diagnosis(model, prompts, **options)
    parts = [record_diagnosis(model, part, **options) for _, part in _parts(prompts)]
    joined = join_diagnosis(parts, 4)  # each part has 3 prompts: fewer than M
    _equal(joined, whole)
    assert joined.correlation() == pytest.approx(whole.correlation(), nan_ok=True)
