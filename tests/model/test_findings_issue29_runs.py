"""Issue 29 on the demo model: Python equals the CLI, and the null model reads the run's inputs.

* A Python loop over seeds with ``run_reweighting``'s defaults gives the numbers that
  ``anchor-flow run`` (``run_experiments``) gives: the training order is seeded with the
  prompts' own seed, as the run passes it (it used to be seed 0 for every seed).
* The null model's prompts follow the run's BOS choice: with ``prepend_bos="no"`` on the
  demo model (whose checkpoint adds BOS) the null model's saliency and deep runs have no BOS
  either, and the same roles as the model's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anchor_flow import RunConfig, load_model, run_experiments
from anchor_flow.analysis.deep import DeepResult
from anchor_flow.analysis.saliency.result import SaliencyResult
from anchor_flow.applications.reweighting.protocol import (
    ReweightingResult,
    reweighting_prompts,
    run_reweighting,
)
from anchor_flow.icl.data import load_task_data
from anchor_flow.icl.roles import Role
from anchor_flow.icl.tasks import get_task
from anchor_flow.models.tl_adapter import adapt

# Same on every TransformerLens line, so not run again under 3.9: the subject is Python against the
# CLI on the same model, above the model interface that the tl_class-parametrized tests and
# test_run.py check on every installed line (docs/development.md, "Test tiers").
pytestmark = [
    pytest.mark.same_on_tl_lines,
    pytest.mark.filterwarnings("ignore"),
]


@pytest.fixture(scope="module")
def demo():
    torch.set_num_threads(1)
    return load_model("demo")


def test_a_python_loop_over_seeds_equals_the_run(demo, tmp_path: Path) -> None:
    config = RunConfig(n_examples=6, seeds=(42, 43), experiments=("reweighting",),
                       reweighting_epochs=1, null_model="none")  # fmt: skip
    run_experiments(demo, tmp_path, config, progress=False)
    cli = ReweightingResult.load(tmp_path / "reweighting")
    task, adapter = get_task("demo-k3"), adapt(demo)
    data = load_task_data(task)
    runs = []
    for seed in config.seeds:
        sets = reweighting_prompts(task, data.train, data.test, seed=seed, n_examples=6,
                                   tokenizer=adapter.tokenizer, max_length=adapter.n_ctx,
                                   label_token_policy="single")  # fmt: skip
        runs.append(run_reweighting(demo, sets, epochs=1, progress=False))
        if seed == 42:  # the old default (seed 0) trains in another order: other betas
            old = run_reweighting(demo, sets, epochs=1, seed=0, progress=False)
            assert not torch.allclose(old.betas, cli.betas[:1])
    python = ReweightingResult.concat(runs)
    assert python.run_names == cli.run_names == ("seed-42", "seed-43")
    torch.testing.assert_close(python.betas, cli.betas)
    assert torch.equal(python.predictions, cli.predictions)


def test_the_null_model_follows_the_runs_bos_choice(demo, tmp_path: Path) -> None:
    config = RunConfig(n_examples=10, seeds=(42,), experiments=("saliency", "deep"),
                       prepend_bos="no", null_model="random-init")  # fmt: skip
    record = run_experiments(demo, tmp_path, config, progress=False)
    assert record["settings_resolved"]["prepend_bos"] is False
    model = SaliencyResult.load(tmp_path / "saliency" / "seed-42")
    null = SaliencyResult.load(tmp_path / "null_model" / "saliency" / "seed-42")
    assert not bool((model.roles == Role.BOS).any())
    assert torch.equal(null.roles, model.roles)  # the null read exactly the model's inputs
    null_deep = DeepResult.load(tmp_path / "null_model" / "deep")
    assert null_deep.settings["prepend_bos"] is False
    assert null.settings["prepend_bos"] is False
