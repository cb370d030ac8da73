"""Ctrl-C while ``anchor-flow`` is still importing the package: one line and exit code 130.

A ``sitecustomize`` (a test fixture, never shipped) makes ``import torch`` wait until the
test has sent SIGINT, so the interrupt lands inside ``import anchor_flow`` every time.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import anchor_flow

# Same on every TransformerLens line, so not run again under 3.9: the subject is Ctrl-C during the
# package's import, above the model interface that the tl_class-parametrized tests and test_run.py
# check on every installed line (docs/development.md, "Test tiers").
pytestmark = [
    pytest.mark.same_on_tl_lines,
    pytest.mark.skipif(sys.platform == "win32", reason="needs SIGINT to a process"),
]

SLOW_TORCH = """
import importlib.abc, pathlib, sys, time

class _SlowTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            pathlib.Path({marker!r}).write_text("importing torch")
            time.sleep(60)
        return None

sys.meta_path.insert(0, _SlowTorch())
"""


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupted_while_importing(command: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    marker = tmp_path / "importing"
    (tmp_path / "sitecustomize.py").write_text(SLOW_TORCH.format(marker=str(marker)))
    source = str(Path(anchor_flow.__file__).parents[1])  # this checkout's package first
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), source])}
    # A shell's background job (e.g. CI started with &) ignores SIGINT, and so would the child:
    # give it the default disposition, as a terminal's foreground command has.
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=_default_sigint)  # fmt: skip
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the child never reached import torch"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def test_ctrl_c_while_the_command_imports_is_one_line_and_130(tmp_path: Path) -> None:
    script = shutil.which("anchor-flow", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the anchor-flow console script is not installed next to this python")
    done = _interrupted_while_importing([script, "run", "--help"], tmp_path)
    assert (done.returncode, done.stderr) == (130, "anchor-flow: interrupted\n")


def test_ctrl_c_while_a_script_imports_the_library_is_left_to_the_script(tmp_path: Path) -> None:
    done = _interrupted_while_importing([sys.executable, "-c", "import anchor_flow"], tmp_path)
    assert done.returncode != 130
    assert "KeyboardInterrupt" in done.stderr
