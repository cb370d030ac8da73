"""What every experiment of a run reads: :class:`RunContext` (model, task, data, prompts per
seed, the ranks of a data-parallel run) and :func:`experiment_prompts` (the paper's prompts).

Kept apart from :mod:`anchor_flow.run.steps` (the experiments) so that the CLI's single
experiment commands draw the same prompts without the steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from anchor_flow.run.config import RunConfig
from anchor_flow.run.distributed import Ranks

__all__ = ["RunContext", "Scheme", "experiment_prompts"]

Scheme = Literal["fixed", "per_example"]


@dataclass
class RunContext:
    """What every step needs: the model, the task, its data and prompts per seed."""

    model: Any
    adapter: Any
    config: RunConfig
    out: Path
    progress: bool
    task: Any
    data: Any
    policy: Literal["single", "first", "all"]
    resolved: dict[str, Any]
    ranks: Ranks = field(default_factory=Ranks)
    _prompts: dict[Scheme, dict[str, list[Any]]] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        model: Any,
        adapter: Any,
        config: RunConfig,
        out: Path,
        progress: bool,
        ranks: Ranks | None = None,
    ) -> RunContext:
        from anchor_flow.icl.data import load_task_data
        from anchor_flow.icl.tasks import get_task

        task = get_task(config.task)
        policy = config.label_token_policy or task.label_token_policy
        data = load_task_data(task, data_dir=config.data_dir)
        resolved: dict[str, Any] = {"task": task.name, "data": data.source,
                                    "label_token_policy": policy,
                                    "label_token_policy_from": "option"
                                    if config.label_token_policy else "task",
                                    "class_names": list(task.label_names)}  # fmt: skip
        resolved["prepend_bos"] = _resolved_bos(model, config)
        return cls(model, adapter, config, out, progress, task, data, policy, resolved,
                   ranks or Ranks())  # fmt: skip

    def prompt_sets(self, scheme: Scheme) -> dict[str, list[Any]]:
        """Prompts per seed (``"seed-42"``), fitted to the context as ``on_overflow`` says."""
        if scheme not in self._prompts:
            sets, skipped = experiment_prompts(
                self.task, self.data, self.config, scheme, self.adapter.tokenizer,
                self.adapter.n_ctx, self.policy,
            )  # fmt: skip
            self._prompts[scheme] = sets
            self.resolved[f"skipped_too_long_{scheme}"] = skipped
            self._record_tokenization(scheme, sets)
        return self._prompts[scheme]

    def _record_tokenization(self, scheme: Scheme, sets: dict[str, list[Any]]) -> None:
        """Straddling tokens per seed and the label words' token counts (results.json)."""
        from anchor_flow.icl.context import tokenization_summary

        if self.adapter.tokenizer is None:
            return
        straddling = {}
        for name, prompts in sets.items():
            summary = tokenization_summary(prompts, self.adapter.tokenizer,
                                           label_token_policy=self.policy)  # fmt: skip
            straddling[name] = summary["straddling_tokens"]
            words = self.resolved.setdefault("label_word_tokens", {})
            words.update({w: n for w, n in summary["label_word_tokens"].items() if w not in words})
        self.resolved[f"straddling_tokens_{scheme}"] = straddling

    def settings(self, scheme: str) -> dict[str, Any]:
        return {**self.resolved, "seeds": list(self.config.seeds), "demonstrations": scheme,
                "n_examples": self.config.n_examples}  # fmt: skip


def experiment_prompts(
    task: Any,
    data: Any,
    config: Any,
    scheme: Scheme,
    tokenizer: Any,
    max_length: int | None,
    policy: Literal["single", "first", "all"],
) -> tuple[dict[str, list[Any]], dict[int, int]]:
    """The paper's prompts per seed and how many were skipped as too long, per seed.

    ``config`` needs ``seeds``, ``n_examples``, ``shots_per_class``, ``fix_class_order`` and
    ``on_overflow`` (a :class:`RunConfig` or the CLI's parsed arguments).
    """
    from anchor_flow.icl.context import fit_to_context
    from anchor_flow.icl.sampling import task_prompts

    sets, skipped = {}, {}
    for seed in config.seeds:
        prompts = task_prompts(
            task, data.train, data.test, seed=seed, n_examples=config.n_examples,
            shots_per_class=config.shots_per_class, scheme=scheme,
            fix_class_order=config.fix_class_order,
        )  # fmt: skip
        if tokenizer is not None and max_length is not None:
            prompts, skipped[seed] = fit_to_context(
                prompts, tokenizer, max_length, on_overflow=config.on_overflow,
                label_token_policy=policy,
            )  # fmt: skip
        sets[f"seed-{seed}"] = prompts
    return sets, skipped


def _resolved_bos(model: Any, config: RunConfig) -> bool:
    from anchor_flow.models.bos import prepend_bos_option, resolved_prepend_bos

    return resolved_prepend_bos(model, prepend_bos_option(config.prepend_bos))
