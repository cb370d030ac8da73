"""The results folder's ownership, writer lock and fingerprints (``anchor_flow.run.folder``).

No model: paths, a second process holding the lock, and fingerprints of small objects.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from anchor_flow.errors import ResultsError
from anchor_flow.icl.data import TaskData
from anchor_flow.icl.prompts import Example
from anchor_flow.icl.tasks import get_task
from anchor_flow.run.folder import (
    LOCK_NAME,
    changed,
    check_out,
    fingerprints,
    hold_lock,
    remove_listed,
)


def test_check_out_accepts_new_empty_and_owned_folders(tmp_path: Path) -> None:
    assert check_out(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # nothing created
    (tmp_path / "empty").mkdir()
    check_out(tmp_path / "empty")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text("{}")
    (tmp_path / "run" / "deep.csv").write_text("x")
    check_out(tmp_path / "run")
    (tmp_path / "stale").mkdir()
    (tmp_path / "stale" / LOCK_NAME).write_text("123")  # a killed run's lock file only
    check_out(tmp_path / "stale")


def test_check_out_refuses_a_users_own_folder(tmp_path: Path) -> None:
    (tmp_path / "deep.csv").write_text("my own numbers")
    (tmp_path / "saliency").mkdir()
    (tmp_path / "saliency" / "thesis.tex").write_text("\\section{}")
    with pytest.raises(ResultsError, match=r"non-empty folder that no anchor-flow run wrote .*"
                       r"'deep\.csv', 'saliency'.*choose a new or empty folder"):  # fmt: skip
        check_out(tmp_path)
    check_out(tmp_path, owned_if=("deep.csv",))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda t: (t / "f").write_text("x") and t / "f", "is an existing file; expected a folder"),
        (lambda t: (t / "f").write_text("x") and t / "f" / "sub", "lies under the file"),
        (lambda t: Path("/proc/anchor-flow-out"), "is a system path"),
        (lambda t: Path("/sys"), "is a system path"),
    ],
)
def test_check_out_refuses_paths_that_cannot_be_a_folder(make, message: str, tmp_path) -> None:
    with pytest.raises(ResultsError, match=message):
        check_out(make(tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_check_out_refuses_an_unwritable_parent(tmp_path: Path) -> None:
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ResultsError, match=r"is not writable"):
            check_out(locked / "out")
    finally:
        locked.chmod(0o700)


_HOLDER = """
import sys, time
from pathlib import Path
from anchor_flow.run.folder import hold_lock
with hold_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(folder: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_writer_is_refused_naming_the_holder(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    try:
        message = rf"another anchor-flow run \(pid {holder.pid}\)"
        with pytest.raises(ResultsError, match=message), hold_lock(tmp_path):
            pass
    finally:
        holder.kill()
        holder.wait()
    # The kernel released the killed holder's lock: the stale file does not block.
    assert (tmp_path / LOCK_NAME).exists()
    with hold_lock(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text() == str(os.getpid())
    assert not (tmp_path / LOCK_NAME).exists()  # released and removed


def test_a_lock_is_released_after_an_interrupt(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    holder.send_signal(signal.SIGINT)
    holder.wait()
    with hold_lock(tmp_path):
        pass


def test_remove_listed_keeps_what_the_run_did_not_list(tmp_path: Path) -> None:
    (tmp_path / "isolation").mkdir()
    (tmp_path / "isolation" / "isolation_meta.json").write_text("{}")
    (tmp_path / "isolation" / "data.txt").write_text("the user's")
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "deep.npz").write_text("x")
    (tmp_path / "isolation.csv").write_text("x")
    remove_listed(tmp_path, ["isolation.csv", "isolation/isolation_meta.json", "deep/deep.npz"])
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["data.txt", "isolation"]


def _fingerprint(task=None, data=None, model=None) -> dict[str, str]:
    task = task or get_task("sst2")
    data = data or TaskData(task, (Example("dull", 0),), (Example("fun", 1),), "builtin")
    torch.manual_seed(0)
    model = model or torch.nn.Linear(3, 2)
    return fingerprints(task, data, model, None, None)


def test_fingerprints_change_with_task_content_data_and_weights() -> None:
    base = _fingerprint()
    assert _fingerprint() == base  # deterministic
    task = get_task("sst2")
    edited = replace(task, label_words=tuple(reversed(task.label_words)))
    assert changed({"fingerprint": base}, _fingerprint(task=edited)) == [
        "fingerprint.task (the task description's content changed)"
    ]
    data = TaskData(task, (Example("dull", 0),), (Example("fun", 0),), "builtin")
    assert changed({"fingerprint": base}, _fingerprint(data=data))[0].startswith("fingerprint.data")
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight[0, 0] += 1e-6
    assert changed({"fingerprint": base}, _fingerprint(model=model)) == [
        "fingerprint.model (the model's weights changed)"
    ]
    half = torch.nn.Linear(3, 2).to(torch.bfloat16)  # dtypes numpy lacks are hashed too
    assert len(_fingerprint(model=half)["model"]) == 16


def test_a_checkpoint_folder_is_hashed_by_its_files(tmp_path: Path) -> None:
    task = get_task("sst2")
    data = TaskData(task, (Example("dull", 0),), (Example("fun", 1),), "builtin")
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 10)
    before = fingerprints(task, data, None, None, str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 9 + b"\1")
    after = fingerprints(task, data, None, None, str(tmp_path))
    assert before["model"] != after["model"]
    assert before["task"] == after["task"]
