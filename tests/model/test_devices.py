"""Models placed over devices (``device_map``) and in half precision (issue 17, items 1-2).

On CPU these tests check the plumbing (``load_model(device_map=...)``, ``--device-map``, the
refusals) and bfloat16; the tests marked ``gpu`` split a model between ``cuda:0`` and the CPU
with an explicit map (a real two-device run on a one-GPU machine) and compare every
experiment with the single-device run. They are skipped where no CUDA device exists.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from anchor_flow import (
    ModelLoadError,
    fit_reweighting,
    load_model,
    run_compression,
    run_deep,
    run_diagnosis,
    run_icl,
    run_isolation,
    run_saliency,
    synthetic_prompts,
)
from anchor_flow.cli import main
from anchor_flow.models.tl_adapter import adapt, hooked_transformer_class

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _planted_map(first: Any, rest: Any) -> dict[str, Any]:
    """planted-anchor (2 GPT-2 blocks): embeddings and block 0 on ``first``, the rest on
    ``rest``, so the residual stream crosses devices between the blocks."""
    return {
        "transformer.wte": first,
        "transformer.wpe": first,
        "transformer.drop": first,
        "transformer.h.0": first,
        "transformer.h.1": rest,
        "transformer.ln_f": rest,
        "lm_head": rest,
    }


@pytest.fixture(scope="module")
def prompts() -> list[Any]:
    return synthetic_prompts(12, k=3, seed=0)


def test_a_device_map_on_one_device_equals_the_plain_load(prompts: list[Any]) -> None:
    plain = load_model("planted-anchor", tl_class="bridge")
    mapped = load_model("planted-anchor", tl_class="bridge", device_map=_planted_map("cpu", "cpu"))
    a = run_saliency(plain, prompts, progress=False).flows().normalised()
    b = run_saliency(mapped, prompts, progress=False).flows().normalised()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tl_class": "bridge", "device_map": "auto", "device": "cpu"}, "expected one of them"),
        ({"tl_class": "bridge", "device_map": {}}, "expected 'auto' or a non-empty dict"),
        ({"tl_class": "bridge", "device_map": "balanced!"}, "expected 'auto' or a non-empty"),
    ],
)
def test_bad_device_maps_are_refused_before_loading(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        load_model("planted-anchor", **kwargs)


@pytest.mark.skipif(
    hooked_transformer_class() is None, reason="HookedTransformer needs transformer-lens 3.x"
)
def test_device_map_is_refused_for_hooked_transformer() -> None:
    with pytest.raises(ModelLoadError, match="needs tl_class='bridge'"):
        load_model("planted-anchor", tl_class="hooked", device_map="auto")


def test_auto_takes_the_bridge_for_a_device_map() -> None:
    """tl_class="auto" with a device map is the bridge on every line (on TL 3.9, where auto
    means HookedTransformer, it was refused)."""
    mapped = load_model("planted-anchor", device_map=_planted_map("cpu", "cpu"))
    assert adapt(mapped).kind == "bridge"


def test_cli_device_map_file_is_read_and_recorded(tmp_path: Path) -> None:
    device_map = tmp_path / "map.json"
    device_map.write_text(json.dumps(_planted_map("cpu", "cpu")))
    out = tmp_path / "out"
    main(["saliency", "--model", "planted-anchor", "--tl-class", "bridge", "--task",
          "synthetic-k3", "--n-examples", "4", "--seeds", "42", "--device-map", str(device_map),
          "--quiet", "--out", str(out)])  # fmt: skip
    assert (out / "saliency.json").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "not 'auto' nor a readable JSON file"), ("[1, 2]", "holds list; expected a non-empty")],
)
def test_cli_bad_device_map_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    path = tmp_path / "map.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        main(["saliency", "--model", "planted-anchor", "--device-map", str(path),
              "--out", str(tmp_path / "out")])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert message in err
    assert "--device-map" in err
    assert not (tmp_path / "out").exists()


def test_cli_saliency_and_evaluate_honour_dtype(tmp_path: Path) -> None:
    # Both commands once loaded the model without --dtype, silently in float32.
    for command, summary in (("saliency", "saliency.json"), ("evaluate", "icl.json")):
        out = tmp_path / command
        main([command, "--model", "planted-anchor", "--task", "synthetic-k3",
              "--n-examples", "4", "--seeds", "42", "--dtype", "bfloat16", "--quiet",
              "--out", str(out)])  # fmt: skip
        assert json.loads((out / summary).read_text())["settings"]["dtype"] == "torch.bfloat16"


def test_bfloat16_saliency_accumulates_in_float32_and_stays_close(prompts: list[Any]) -> None:
    full = run_saliency(load_model("planted-anchor"), prompts, progress=False)
    half_model = load_model("planted-anchor", dtype=torch.bfloat16)
    assert next(half_model.parameters()).dtype == torch.bfloat16
    half = run_saliency(half_model, prompts, progress=False)
    assert half.group_sums.dtype == torch.float32
    # bfloat16 keeps 8 bits of mantissa (relative step 2**-8 = 0.004 per operation); the
    # normalised flows of the planted model's two layers agree far better than one such step
    # per layer (measured: 2e-4), and a float32-vs-bfloat16 mix-up in the reduction would not.
    gap = (full.flows().normalised() - half.flows().normalised()).abs().max()
    assert float(gap) < 2.0**-8


# --- every experiment on a mapped model equals the single-device run ---------------------------


def _frames_close(a: Any, b: Any) -> None:
    numeric = a.select_dtypes("number").columns
    pd.testing.assert_frame_equal(a[numeric], b[numeric], rtol=1e-5, atol=1e-7)


def _assert_every_experiment_equal(single: Any, split: Any, prompts: list[Any]) -> None:
    def close(a: torch.Tensor, b: torch.Tensor) -> None:
        torch.testing.assert_close(a.cpu().double(), b.cpu().double(), rtol=1e-5, atol=1e-7)

    sal = [run_saliency(m, prompts, progress=False) for m in (single, split)]
    close(sal[0].group_sums, sal[1].group_sums)
    icl = [run_icl(m, prompts, progress=False) for m in (single, split)]
    close(icl[0].label_probs, icl[1].label_probs)
    iso = [run_isolation(m, prompts, layer_counts=(1,), progress=False) for m in (single, split)]
    _frames_close(iso[0].to_frame(), iso[1].to_frame())
    deep = [run_deep(m, prompts, progress=False) for m in (single, split)]
    close(deep[0].auc(), deep[1].auc())
    comp = [
        run_compression(m, prompts, engine="cache", n_top_trials=2, progress=False)
        for m in (single, split)
    ]
    _frames_close(comp[0].to_frame(), comp[1].to_frame())
    diag = [
        run_diagnosis(m, prompts, layer=1, n_components=2, progress=False) for m in (single, split)
    ]
    close(diag[0].predicted_confusion(), diag[1].predicted_confusion())
    fits = [fit_reweighting(m, prompts, epochs=1, progress=False) for m in (single, split)]
    close(fits[0].reweighting.beta.detach(), fits[1].reweighting.beta.detach())


def test_every_experiment_runs_on_a_mapped_model(prompts: list[Any]) -> None:
    # On CPU the map cannot span two devices; this runs every experiment through the
    # device_map path (and keeps the two-device test below honest about the API it calls).
    single = load_model("planted-anchor", tl_class="bridge")
    mapped = load_model("planted-anchor", tl_class="bridge", device_map=_planted_map("cpu", "cpu"))
    _assert_every_experiment_equal(single, mapped, prompts)


@pytest.mark.gpu
@needs_cuda
def test_split_model_equals_single_device_in_every_experiment(prompts: list[Any]) -> None:
    single = load_model("planted-anchor", tl_class="bridge", device="cuda:0")
    split = load_model("planted-anchor", tl_class="bridge", device_map=_planted_map(0, "cpu"))
    devices = {p.device.type for p in split.original_model.parameters()}
    assert devices == {"cuda", "cpu"}, devices
    _assert_every_experiment_equal(single, split, prompts)


# -- issue 28: device maps checked against this machine and the model before any weight -----

_NO_CUDA = not torch.cuda.is_available()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({"transformer.h.1": 0}, r"on 0, but this PyTorch build sees 0 CUDA device",
                     marks=pytest.mark.skipif(not _NO_CUDA, reason="needs a CPU-only build")),
        ({"transformer.h.1": "tpu"}, r"on 'tpu', which is not a device; expected a GPU index"),
        ({"transformer.h.1": "cuda:99"}, r"on 'cuda:99', but this PyTorch build sees \d+ CUDA"),
        ({"transformer.h.7": "cpu"}, r"names 'transformer.h.7', which this model does not have; "
                                     r"expected module names such as 'transformer.h.0'"),
        ({"transformer.h.1": None}, r"leaves out 'transformer.h.1' \(12 parameter"),
    ],
)  # fmt: skip
def test_device_map_mistakes_are_named_before_any_weight_is_read(
    monkeypatch: pytest.MonkeyPatch, changes: dict[str, Any], message: str
) -> None:
    import anchor_flow.models.loading as loading

    def never(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the weights were read before the map was checked")

    monkeypatch.setattr(loading, "_load_hf", never)
    device_map = {**_planted_map("cpu", "cpu"), **changes}
    device_map = {k: v for k, v in device_map.items() if v is not None}
    with pytest.raises(ModelLoadError, match=message):
        load_model("planted-anchor", tl_class="bridge", device_map=device_map)


def test_disk_offload_runs_every_experiment_and_the_fingerprint_reads_its_weights(
    prompts: list[Any], tmp_path: Path
) -> None:
    from anchor_flow.models.null import random_init_copy
    from anchor_flow.run.folder import _digest, _parameter_bytes

    single = load_model("planted-anchor", tl_class="bridge")
    if hooked_transformer_class() is not None:
        # TransformerLens 3.9's bridge splits GPT-2's fused QKV at boot and cannot do that
        # from the meta device: disk offload is refused there in one line (issue 28).
        with pytest.raises(ModelLoadError, match=r"^TransformerBridge cannot wrap .*meta device"):
            load_model("planted-anchor", tl_class="bridge", device_map=_planted_map("cpu", "disk"))
        return
    offloaded = load_model(
        "planted-anchor", tl_class="bridge", device_map=_planted_map("cpu", "disk")
    )
    assert any(p.is_meta for p in offloaded.original_model.parameters())  # really offloaded
    # The weights fingerprint once crashed here ("Cannot copy out of meta tensor").
    assert _digest(_parameter_bytes(offloaded)) == _digest(_parameter_bytes(single))
    nulls = [random_init_copy(m, seed=0) for m in (single, offloaded)]  # the findings' null
    assert _digest(_parameter_bytes(nulls[0])) == _digest(_parameter_bytes(nulls[1]))
    _assert_every_experiment_equal(single, offloaded, prompts[:6])
