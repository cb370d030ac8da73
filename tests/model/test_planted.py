"""Planted circuits (issue 4): the methods find a mechanism that is there, and not one that is not.

Measured (TL 4.3 bridge and TL 3.9 HookedTransformer/bridge agree to 1e-6): ICL accuracy on
200 prompts (seed 1234) for K = 2, 3, 4 is 0.940, 0.925, 0.855 on both planted models, against
chance 0.50, 0.33, 0.25 and the bag-of-words rule's 0.938, 0.931, 0.863 (the task's own
ceiling, which layer 1 computes). Saliency (100 prompts, K = 3): planted-anchor layer 0
S_wp/S_pq/S_ww = 2.5e-2 / 0 / 1.7e-3, layer 1 = 0 / 2.1e-1 / 2e-31; planted-formatting
layer 0 = 3e-26 / 1e-21 / 4.3e-3, layer 1 = 0 / 2e-26 / 7.5e-4 (the separators carry it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from anchor_flow.analysis.edges import FINE_GROUPS
from anchor_flow.analysis.saliency.measure import run_saliency
from anchor_flow.icl.evaluation import run_icl
from anchor_flow.icl.prompts import Role, tokenize_prompts
from anchor_flow.models.loading import load_model
from anchor_flow.models.tl_adapter import adapt
from anchor_flow.testbeds.planted import PlantedSettings, build_planted_model
from anchor_flow.testbeds.synthetic import SyntheticError, bag_of_words_accuracy, synthetic_prompts
from conftest import TL_CLASSES, assert_no_hooks

KINDS = ("anchor", "formatting")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Any]:
    """Every planted model on every TL class, loaded by name offline into a fresh cache."""
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANCHOR_FLOW_CACHE", str(tmp_path_factory.mktemp("cache")))
        patch.setenv("HF_HUB_OFFLINE", "1")
        return {
            (kind, tl_class): load_model(f"planted-{kind}", tl_class=tl_class)  # type: ignore[arg-type]
            for kind in KINDS
            for tl_class in TL_CLASSES
        }


@pytest.fixture(params=[(k, c) for k in KINDS for c in TL_CLASSES], ids="-".join)
def planted(request: pytest.FixtureRequest, models: dict[tuple[str, str], Any]) -> Any:
    model = models[request.param]
    yield request.param[0], model
    assert_no_hooks(model)


def test_loads_offline_by_name_and_equals_hugging_face(planted: Any) -> None:
    kind, model = planted
    adapter = adapt(model)
    assert adapter.name == f"planted-{kind}"
    assert (adapter.n_layers, adapter.n_heads, adapter.d_model, adapter.n_ctx) == (2, 3, 192, 188)
    hf_model, tokenizer = build_planted_model(kind)  # type: ignore[arg-type]
    batch = tokenize_prompts(synthetic_prompts(16, k=4, shots_per_class=2, seed=0), tokenizer)
    with torch.no_grad():
        expected = hf_model(batch.tokens).logits
        actual = adapter.forward_logits(batch.tokens)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)
    assert adapter.tokenizer.convert_ids_to_tokens([0, 5]) == ["<bos>", " L0"]


@pytest.mark.parametrize("kind", KINDS)
def test_layer_norms_are_identities_and_the_residual_has_mean_zero(kind: str) -> None:
    hf_model, tokenizer = build_planted_model(kind)  # type: ignore[arg-type]
    batch = tokenize_prompts(synthetic_prompts(8, k=3, seed=2), tokenizer)
    worst: list[float] = []

    def check(module: Any, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        (residual,) = inputs
        assert float(residual.mean(-1).abs().max()) < 1e-5 * float(residual.abs().max())
        worst.append(float(((output - residual).norm(dim=-1) / residual.norm(dim=-1)).max()))

    norms = [m for m in hf_model.modules() if isinstance(m, torch.nn.LayerNorm)]
    handles = [m.register_forward_hook(check) for m in norms]  # a plain HF model we own
    try:
        with torch.no_grad():
            hf_model(batch.tokens)
    finally:
        for handle in handles:
            handle.remove()
    assert len(worst) == 5
    assert max(worst) < 1e-4, worst


@pytest.mark.parametrize("k", [2, 3, 4])
def test_icl_accuracy_far_above_chance_and_at_the_bag_of_words_rule(planted: Any, k: int) -> None:
    _, model = planted
    prompts = synthetic_prompts(200, k=k, seed=1234)
    accuracy = run_icl(model, prompts, batch_size=50, progress=False).accuracy()
    baseline = bag_of_words_accuracy(prompts)
    # Chance is 1/K (0.5, 0.33, 0.25); the task's own ceiling is the bag-of-words rule, which
    # the planted layer 1 computes (ties aside), so the model must sit at it.
    assert accuracy >= 0.85
    assert abs(accuracy - baseline) <= 0.03, (accuracy, baseline)


def _flows(model: Any, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    result = run_saliency(model, synthetic_prompts(100, k=k, seed=5), batch_size=50, progress=False)
    return result.flows().mean(), result.group_means()


def _group(means: torch.Tensor, layer: int, name: str) -> float:
    return float(means[layer, FINE_GROUPS.index(name)])


def test_saliency_finds_the_anchors_on_planted_anchor(models: dict) -> None:
    for tl_class in TL_CLASSES:
        (s_wp, s_pq, s_ww), means = _flows(models["anchor", tl_class])
        assert s_wp[0] > 10 * s_ww[0], (s_wp, s_ww)  # layer 0: text -> label words
        assert s_wp[0] > 1e6 * s_pq[0], (s_wp, s_pq)
        assert s_pq[1] > 1e6 * s_ww[1], (s_pq, s_ww)  # layer 1: label words -> target
        assert s_pq[1] > 1e6 * s_wp[1], (s_pq, s_wp)
        own_text = _group(means, 0, "label <- text (same demo)")
        assert own_text > 1e6 * _group(means, 0, "label <- text (earlier)")


def test_saliency_points_at_the_separators_on_planted_formatting(models: dict) -> None:
    for tl_class in TL_CLASSES:
        (s_wp, s_pq, s_ww), means = _flows(models["formatting", tl_class])
        assert s_wp[0] < 1e-6 * s_ww[0], (s_wp, s_ww)
        assert s_pq[1] < 1e-6 * s_ww[1], (s_pq, s_ww)
        separators = _group(means, 1, "target <- format (earlier)")
        assert separators > 1e6 * _group(means, 1, "target <- label (earlier)")
        for gathered in ("other <- text (same demo)", "other <- label (same demo)"):
            assert _group(means, 0, gathered) > 1e6 * _group(means, 0, "label <- text (same demo)")


def isolate_label_rows(model: Any, layer: int, label_positions: torch.Tensor) -> list:
    """Label rows of ``layer`` attend only to themselves (earlier edges cut, renormalised)."""

    def hook(pattern: torch.Tensor, hook: Any) -> torch.Tensor:
        pattern = pattern.clone()
        for position in label_positions.tolist():
            pattern[:, :, position, :] = 0.0
            pattern[:, :, position, position] = 1.0
        return pattern

    return [(adapt(model).pattern_hook_name(layer), hook)]


@pytest.mark.parametrize("k", [2, 4])
def test_label_isolation_breaks_only_the_anchor_circuit(planted: Any, k: int) -> None:
    kind, model = planted
    batch = tokenize_prompts(synthetic_prompts(200, k=k, seed=77), adapt(model).tokenizer)
    assert bool((batch.roles == batch.roles[0]).all()), "one layout for the whole batch"
    labels = torch.nonzero(batch.roles[0] == Role.LABEL).flatten()
    vanilla = run_icl(model, batch, batch_size=100, progress=False).accuracy()
    shallow = run_icl(
        model, batch, batch_size=100, progress=False,
        extra_hooks=isolate_label_rows(model, 0, labels),
    ).accuracy()  # fmt: skip
    deep = run_icl(
        model, batch, batch_size=100, progress=False,
        extra_hooks=isolate_label_rows(model, 1, labels),
    ).accuracy()  # fmt: skip
    assert deep == vanilla  # last-layer isolation is harmless on both
    if kind == "anchor":
        # The summaries are gone: every label scores alike and the prediction is class 0.
        assert shallow <= 1.0 / k + 0.1, (shallow, vanilla)
        assert shallow < vanilla - 0.3, (shallow, vanilla)
    else:
        assert shallow == vanilla


def test_bad_kind_and_too_small_heads() -> None:
    with pytest.raises(SyntheticError, match=r"planted model kind 'induction'; expected one of"):
        build_planted_model("induction")  # type: ignore[arg-type]
    with pytest.raises(SyntheticError, match=r"needs d_model >= 168 but n_heads \* d_head = 96"):
        build_planted_model("anchor", settings=PlantedSettings(d_head=32))


def test_checkpoint_folder_records_its_construction(tmp_path: Path) -> None:
    from anchor_flow.testbeds.planted import write_planted_folder

    write_planted_folder(tmp_path, "formatting")
    assert {"config.json", "planted.json", "tokenizer.json"} <= {p.name for p in tmp_path.iterdir()}
