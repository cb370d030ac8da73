"""The built wheel, installed (not editable) in a fresh virtual environment, carries every
package-data file and runs ``anchor-flow run`` on the embedded demo model from outside the
source tree: a file missing from ``[tool.setuptools.package-data]`` fails here.

The wheel is ``$ANCHOR_FLOW_WHEEL`` when set (``.ci/run`` sets it to the one ``python -m build``
made), else built here without build isolation. The fresh environment gets the wheel alone
(``--no-deps``); its dependencies (torch, TransformerLens, ...) are read from this
interpreter's site-packages through a ``.pth`` file, so nothing is downloaded. Only plain path
lines are added: the ``.pth`` files inside those folders (an editable install of this
repository among them) are not processed, and the fresh environment's own site-packages
comes first on ``sys.path``.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "src" / "anchor_flow" / "data"


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if given := os.environ.get("ANCHOR_FLOW_WHEEL"):
        return Path(given)
    out = tmp_path_factory.mktemp("wheel")
    # A copy-free build of this checkout: setuptools writes build/ and *.egg-info in the tree
    # (both git-ignored), as `pip install .` does.
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "-q", "-w", str(out), str(ROOT)])  # fmt: skip
    (built,) = out.glob("anchor_flow-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("venv") / "env"
    env = _clean_env()  # without PYTHONPATH: pip would take a src/ on it for an installed copy
    _run([sys.executable, "-m", "venv", "--without-pip", str(root)], env=env)
    python = root / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
          "--no-deps", "--no-index", str(wheel)], env=env)  # fmt: skip
    purelib = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=env
    )
    ours = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib.stdout.strip()) / "_anchor_flow_test_deps.pth").write_text("\n".join(ours))
    return root


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return env | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def test_the_wheel_holds_every_package_data_file_and_the_license(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        "anchor_flow/" + path.relative_to(ROOT / "src" / "anchor_flow").as_posix()
        for path in DATA.rglob("*")
        if path.is_file()
    }
    assert expected, f"no package data under {DATA}"
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
    assert "anchor_flow/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE")
               for n in names), "LICENSE is not in the wheel's metadata"  # fmt: skip


def test_anchor_flow_run_from_the_installed_wheel(venv: Path, tmp_path: Path) -> None:
    env = _clean_env()
    where = _run(
        [str(venv / "bin" / "python"), "-c", "import anchor_flow; print(anchor_flow.__file__)"],
        cwd=tmp_path,
        env=env,
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout  # not src/, not -e
    out = tmp_path / "out"
    _run(
        [str(venv / "bin" / "anchor-flow"), "run", "--experiments", "saliency",
         "--n-examples", "8", "--seeds", "42", "--out", str(out), "--quiet"],
        cwd=tmp_path, env=env, timeout=600,
    )  # fmt: skip
    record = json.loads((out / "results.json").read_text())
    assert record["experiments"]["saliency"]["status"] == "complete"
    assert record["model"]["name"] == "demo"
    assert (out / "report.html").stat().st_size > 0
    assert (out / "flows.csv").read_text().count("\n") > 1
