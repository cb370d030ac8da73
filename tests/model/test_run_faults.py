"""Fault injection: a run killed at random points (SIGKILL and SIGINT) resumes to the same
results as an uninterrupted run, with no temporary files and a valid results.json throughout.

The run is a forked copy of this process (no interpreter start-up per kill, so the test takes
seconds): planted-anchor on synthetic-k3, one seed, four examples, every experiment whose
numbers are deterministic and quick (compression's Table 3 is wall-clock time).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch

from anchor_flow import RunConfig, load_model, load_run, run_experiments

# Same on every TransformerLens line, so not run again under 3.9: the subject is a killed run's
# folder and its resume, above the model interface that the tl_class-parametrized tests and
# test_run.py check on every installed line (docs/development.md, "Test tiers").
pytestmark = [
    pytest.mark.same_on_tl_lines,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
]

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


# -- issue 28: a full disk, a read-only folder, an immutable record, SIGTERM -----------------

SMALL = RunConfig(task="synthetic-k3", seeds=(42,), n_examples=4, experiments=("deep",),
                  null_model="none")  # fmt: skip
CLI = ["run", "--model", "planted-anchor", "--task", "synthetic-k3", "--seeds", "42",
       "--n-examples", "4", "--experiments", "deep", "--null-model", "none", "--quiet"]  # fmt: skip
ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-experiment run (copy it before changing it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    run_experiments(load_model("planted-anchor"), out, SMALL, progress=False)
    return out


def _in_child(call, err: Path, limit: int | None = None) -> int:
    """``call()``'s return value as the exit code of a forked child; its stderr into ``err``."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
            sys.stderr = open(2, "w", closefd=False)  # (pytest captures sys.stderr)  # noqa: SIM115
            if limit is not None:  # a file-size limit: writes past it fail with EFBIG
                import resource

                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
            torch.set_num_threads(1)
            code = call()
        finally:
            sys.stderr.flush()
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _one_line(err: Path, code: int, expected: int = 2) -> str:
    text = err.read_text()
    assert code == expected, text
    assert "Traceback" not in text, text
    assert len(text.strip().splitlines()) == 1, text
    return text


@contextlib.contextmanager
def _tmpfs(folder: Path, size: str):
    folder.mkdir()
    if not ROOT or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                                   str(folder)], capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("a small tmpfs needs root and mount (the rlimit case covers a full disk)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


@pytest.mark.parametrize("disk", ["tmpfs", "rlimit"])
def test_a_full_disk_is_one_line_and_leaves_no_half_report(finished, tmp_path, disk) -> None:
    from anchor_flow.cli import main

    with contextlib.ExitStack() as stack:
        where = tmp_path / "disk"
        if disk == "tmpfs":  # 1 MiB: the folder fits, the ~5 MB report does not
            stack.enter_context(_tmpfs(where, "1m"))
        else:
            where.mkdir()
        out = where / "run"
        shutil.copytree(finished, out, ignore=shutil.ignore_patterns("report.html"))
        before = _files(out)
        limit = None if disk == "tmpfs" else 1 << 20
        code = _in_child(lambda: main(["report", str(out)]), tmp_path / "err", limit)
        text = _one_line(tmp_path / "err", code)
        assert "report.html" in text, text
        assert sorted(_files(out)) == sorted(before)  # no half report, no temporary file


@pytest.mark.skipif(not ROOT, reason="a read-only bind mount needs root (root ignores modes)")
def test_report_into_a_read_only_folder_is_one_line(finished, tmp_path) -> None:
    from anchor_flow.cli import main

    out = tmp_path / "run"
    shutil.copytree(finished, out, ignore=shutil.ignore_patterns("report.html"))
    mounted = subprocess.run(["mount", "--bind", str(out), str(out)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(out)], check=True)
        code = _in_child(lambda: main(["report", str(out)]), tmp_path / "err")
        assert "Read-only file system" in _one_line(tmp_path / "err", code)
    finally:
        subprocess.run(["umount", str(out)], check=False)


@pytest.mark.skipif(not ROOT or shutil.which("chattr") is None, reason="chattr +i needs root")
def test_an_immutable_results_json_is_one_line(finished, tmp_path) -> None:
    from anchor_flow.cli import main

    out = tmp_path / "run"
    shutil.copytree(finished, out)
    if subprocess.run(["chattr", "+i", str(out / "results.json")]).returncode != 0:
        pytest.skip("this file system has no immutable flag")
    try:  # resuming with one more experiment must update the record
        argv = [*CLI, "--experiments", "deep,isolation", "--out", str(out)]
        code = _in_child(lambda: main(argv), tmp_path / "err")
        assert "results.json" in _one_line(tmp_path / "err", code)
    finally:
        subprocess.run(["chattr", "-i", str(out / "results.json")], check=False)


def test_a_report_that_did_not_change_is_not_rewritten(finished, tmp_path) -> None:
    from anchor_flow import render_results_folder

    out = tmp_path / "run"
    shutil.copytree(finished, out)
    before = (out / "report.html").stat()
    render_results_folder(out)
    after = (out / "report.html").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_sigterm_is_one_line_143_and_the_step_is_recorded_interrupted(tmp_path) -> None:
    import anchor_flow.run.steps as steps
    from anchor_flow.cli import main

    out, started = tmp_path / "run", tmp_path / "started"

    def slow(run):
        (run.out / "deep").mkdir(exist_ok=True)
        (run.out / "deep" / "deep_meta.json").write_text("half")  # a partial file
        started.write_text("deep")
        time.sleep(120)

    def child() -> int:
        steps.STEPS["deep"] = slow  # (in the forked child only)
        return main([*CLI, "--out", str(out)])

    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.dup2(os.open(tmp_path / "err", os.O_WRONLY | os.O_CREAT), 2)
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
            code = child()
        finally:
            sys.stderr.flush()
            os._exit(code)
    deadline = time.monotonic() + 300
    while not started.exists():
        assert time.monotonic() < deadline
        assert os.waitpid(pid, os.WNOHANG) == (0, 0)
        time.sleep(0.05)
    os.kill(pid, signal.SIGTERM)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    assert "terminated (SIGTERM)" in _one_line(tmp_path / "err", code, 143)
    entry = load_run(out)["experiments"]["deep"]
    assert entry["status"] == "failed", entry
    assert entry["error"].startswith("interrupted (SIGTERM"), entry
    assert not (out / "deep" / "deep_meta.json").exists()  # the partial file is gone


def test_a_sigterm_while_main_returns_is_no_traceback(monkeypatch, capsys) -> None:
    """Seen under the launcher on CI: rank 0 had printed 'rank 1 ... died' and was returning
    when the launcher's SIGTERM for the remaining ranks landed inside main's restoring of the
    previous handler; Terminated escaped as a 15-line traceback. The handler firing there is
    simulated by a signal.signal that raises on its second call (the restore)."""
    import anchor_flow.cli as cli

    real, calls = signal.signal, []

    def restore_then_fire(signum, handler):
        calls.append(handler)
        previous = real(signum, handler)
        if len(calls) == 2:
            raise cli.Terminated("SIGTERM, from a scheduler or launcher")
        return previous

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(cli, "_main", lambda argv: 2)
    monkeypatch.setattr(cli.signal, "signal", restore_then_fire)
    assert cli.main([]) == 2  # the run's own outcome, already reported
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGTERM) == before  # the caller's handler is back
    assert capsys.readouterr().err == ""
