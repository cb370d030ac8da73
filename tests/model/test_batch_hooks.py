"""Per-batch interventions compose with run_isolation, run_deep and run_diagnosis.

Identity: a factory that returns no hooks leaves every result unchanged. Effect: isolating
the label words in layer 0 (a per-batch mask) changes what each experiment measures.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from anchor_flow import (
    get_task,
    isolation_hooks,
    load_model,
    load_task_data,
    run_deep,
    run_diagnosis,
    run_isolation,
    task_prompts,
)


@pytest.fixture(scope="module")
def setup() -> tuple[Any, list[Any]]:
    model = load_model("demo")
    task = get_task("demo-k3")
    data = load_task_data(task)
    prompts = task_prompts(task, data.train, data.test, seed=42, n_examples=24)
    return model, prompts


def _none(rows: Any, batch: Any) -> list[Any]:
    return []


def _isolate_layer0(model: Any) -> Any:
    return lambda rows, batch: isolation_hooks(model, batch, [0], control="label")


def test_run_deep_batch_hooks(setup: tuple[Any, list[Any]]) -> None:
    model, prompts = setup
    plain = run_deep(model, prompts, progress=False)
    same = run_deep(model, prompts, batch_hooks=_none, progress=False)
    torch.testing.assert_close(same.scores, plain.scores, rtol=0, atol=0)
    blocked = run_deep(model, prompts, batch_hooks=_isolate_layer0(model), progress=False)
    assert not torch.allclose(blocked.scores[:, -1], plain.scores[:, -1], atol=1e-3)
    assert not torch.equal(blocked.label_probs, plain.label_probs)


def test_run_diagnosis_batch_hooks(setup: tuple[Any, list[Any]]) -> None:
    model, prompts = setup
    plain = run_diagnosis(model, prompts, n_components=3, progress=False)
    same = run_diagnosis(model, prompts, n_components=3, batch_hooks=_none, progress=False)
    torch.testing.assert_close(same.queries, plain.queries, rtol=0, atol=0)
    blocked = run_diagnosis(
        model, prompts, n_components=3, batch_hooks=_isolate_layer0(model), progress=False
    )
    assert not torch.allclose(blocked.queries, plain.queries, atol=1e-3)


def test_run_isolation_batch_hooks(setup: tuple[Any, list[Any]]) -> None:
    model, prompts = setup
    kwargs: dict[str, Any] = {"layer_counts": [1], "positions": ["last"], "progress": False}
    plain = run_isolation(model, prompts, **kwargs)
    same = run_isolation(model, prompts, batch_hooks=_none, **kwargs)
    assert torch.equal(same.baseline_predictions, plain.baseline_predictions)
    assert torch.equal(same.predictions, plain.predictions)
    blocked = run_isolation(model, prompts, batch_hooks=_isolate_layer0(model), **kwargs)
    # The layer-0 isolation now applies to the reference too: the baseline itself changes.
    assert not torch.equal(blocked.baseline_predictions, plain.baseline_predictions)
