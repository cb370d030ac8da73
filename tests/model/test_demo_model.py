"""The shipped demo model: offline loading by name, HF parity, an accuracy regression, and the
training script's smoke test (which writes nothing into the package)."""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from anchor_flow import run_icl
from anchor_flow.icl.prompts import tokenize_prompts
from anchor_flow.models import guards, tl_adapter
from anchor_flow.models.loading import builtin_model_names, load_model
from anchor_flow.testbeds.demo import DEMO_FOLDER, DEMO_SHAPES, demo_prompts
from conftest import TL_CLASSES, assert_no_hooks

SCRIPT = Path(__file__).parents[2] / "scripts" / "train_demo.py"

#: Measured on the shipped checkpoint (label-restricted accuracy, 64 prompts per shape,
#: ``demo_prompts(64, k=k, shots_per_class=n, seed=REGRESSION_SEED)``), identical on both TL
#: classes. The tolerance allows float differences between TL versions, not a new checkpoint.
REGRESSION_SEED = 2024
MEASURED_ACCURACY = {
    "2x1": 63 / 64,
    "2x2": 62 / 64,
    "2x3": 64 / 64,
    "3x1": 58 / 64,
    "3x2": 59 / 64,
    "4x1": 52 / 64,
}
MEASURED_MEAN = 0.9323
TOLERANCE = 2 / 64


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network and an empty cache: the model must come from the package alone."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("ANCHOR_FLOW_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module", params=TL_CLASSES)
def demo_model(request: pytest.FixtureRequest) -> Any:
    model = load_model("demo", tl_class=request.param)
    yield model
    assert_no_hooks(model)


def test_demo_is_a_builtin_name() -> None:
    assert "demo" in builtin_model_names()


def test_shipped_checkpoint_is_small() -> None:
    size = sum(p.stat().st_size for p in DEMO_FOLDER.iterdir())
    assert size <= 5 * 2**20
    settings = json.loads((DEMO_FOLDER / "training_settings.json").read_text())
    assert settings["parameters"] <= 2_000_000
    assert settings["held_out_accuracy"]["mean"] >= settings["settings"]["gate"] >= 0.85


@pytest.mark.usefixtures("offline")
@pytest.mark.parametrize("tl_class", TL_CLASSES)
def test_loads_offline_by_name_and_matches_hf(tl_class: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = load_model("demo", tl_class=tl_class)  # type: ignore[arg-type]
    adapter = tl_adapter.adapt(model)
    assert adapter.kind == tl_class
    guards.check_attention_hooks_live(model)
    assert not (tmp_path / "cache").exists(), "the shipped folder is read in place"
    batch = tokenize_prompts(demo_prompts(8, k=3, shots_per_class=2, seed=1), adapter.tokenizer)
    hf = AutoModelForCausalLM.from_pretrained(DEMO_FOLDER, attn_implementation="eager").eval()
    with torch.no_grad():
        reference = hf(batch.tokens).logits
        logits = adapter.forward_logits(batch.tokens)
    torch.testing.assert_close(logits, reference, atol=1e-4, rtol=0)
    assert_no_hooks(model)


def test_accuracy_regression(demo_model: Any) -> None:
    measured = {}
    for k, n in DEMO_SHAPES:
        prompts = demo_prompts(64, k=k, shots_per_class=n, seed=REGRESSION_SEED)
        measured[f"{k}x{n}"] = run_icl(
            demo_model, prompts, batch_size=64, progress=False
        ).accuracy()
    for shape, value in MEASURED_ACCURACY.items():
        assert measured[shape] == pytest.approx(value, abs=TOLERANCE), (shape, measured)
    mean = sum(measured.values()) / len(measured)
    assert mean == pytest.approx(MEASURED_MEAN, abs=TOLERANCE / 2)
    chance = sum(1 / k for k, _ in DEMO_SHAPES) / len(DEMO_SHAPES)
    assert mean > chance + 0.4


@pytest.fixture
def train_script(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``scripts/train_demo.py`` as a module (registered while the test runs: dataclasses
    look their module up in ``sys.modules``)."""
    spec = importlib.util.spec_from_file_location("train_demo", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "train_demo", module)
    spec.loader.exec_module(module)
    return module


TINY = ["--steps", "4", "--layers", "1", "--eval-every", "2", "--eval-per-shape", "4"]


def test_training_script_smoke(train_script: Any, tmp_path: Path) -> None:
    shipped = {p.name: p.stat().st_mtime_ns for p in DEMO_FOLDER.iterdir()}
    out = tmp_path / "demo"
    assert train_script.main([*TINY, "--out", str(out), "--seeds", "3", "--no-gate"]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json", "training_settings.json"} <= {
        p.name for p in out.iterdir()
    }
    record = json.loads((out / "training_settings.json").read_text())
    assert record["settings"]["seed"] == 3
    assert record["settings"]["steps"] == 4
    assert len(record["history"]) == 2
    model = load_model(out, tl_class=TL_CLASSES[-1])  # type: ignore[arg-type]
    tokenizer = tl_adapter.adapt(model).tokenizer
    assert tokenizer is not None
    assert tokenizer.bos_token == "<bos>"
    assert {p.name: p.stat().st_mtime_ns for p in DEMO_FOLDER.iterdir()} == shipped


def test_training_script_gate_refuses_to_write(train_script: Any, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert train_script.main([*TINY, "--out", str(out), "--seeds", "0", "--gate", "0.99"]) == 1
    assert not out.exists()
