"""The six experiments of :func:`anchor_flow.run.pipeline.run_experiments`, one function each.

Each step reads its prompts from the :class:`RunContext` (built once per run: model, task,
data, prompts per seed), calls the experiment's public ``run_*`` function once per seed,
pools the seeds, writes its files (:data:`STEP_FILES`, each atomically) and returns the
JSON-safe summary that goes into ``results.json``. Protocols (PAPER.md §7): saliency draws
demonstrations per test example; isolation, deep layers, compression and diagnosis fix them
per seed (scheme "fixed"; the generated demo-*/synthetic-* tasks still draw demonstrations
and label words per prompt); re-weighting uses Table 1's 1-shot + 4-per-class split.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from anchor_flow.results.files import write_atomic
from anchor_flow.run.config import RunConfig

__all__ = ["STEPS", "STEP_FILES", "RunContext", "model_info", "run_step", "save_pooled"]

Scheme = Literal["fixed", "per_example"]

STEP_FILES: dict[str, tuple[str, ...]] = {
    "saliency": ("saliency.json", "flows.csv", "saliency/"),
    "isolation": ("isolation.json", "isolation.csv", "isolation/"),
    "deep": ("deep.json", "deep.csv", "deep/"),
    "reweighting": ("reweighting.json", "reweighting.csv", "reweighting/"),
    "compression": ("compression.json", "compression.csv", "compression_trials.csv",
                    "compression/", "compression_speed.csv", "compression_speed/"),
    "diagnosis": ("diagnosis.json", "diagnosis.csv", "diagnosis/"),
}  # fmt: skip


def model_info(adapter: Any) -> dict[str, Any]:
    """What ``results.json`` records about the model."""
    return {
        "name": adapter.name, "tl_class": adapter.kind, "n_layers": adapter.n_layers,
        "n_heads": adapter.n_heads, "d_model": adapter.d_model, "n_ctx": adapter.n_ctx,
        "d_vocab": adapter.d_vocab, "device": str(adapter.device), "dtype": str(adapter.dtype),
    }  # fmt: skip


def write_frame(path: Path, frame: Any) -> None:
    """A pandas frame as CSV, atomically."""
    text = frame.to_csv(index=False).encode()
    write_atomic(path, lambda handle: handle.write(text))


def write_json(path: Path, data: object) -> None:
    """JSON, atomically."""
    text = json.dumps(data, indent=1, default=str).encode()
    write_atomic(path, lambda handle: handle.write(text))


def save_pooled(
    out: Path, stem: str, pooled: Any, settings: Mapping[str, Any], frames: Mapping[str, Any]
) -> dict[str, Any]:
    """Save a pooled result (raw folder ``<stem>/``), its CSVs and ``<stem>.json``.

    Returns the summary written to ``<stem>.json``.
    """
    pooled = replace(pooled, settings={**pooled.settings, **settings})
    out.mkdir(parents=True, exist_ok=True)
    pooled.save(out / stem)
    for name, frame in frames.items():
        write_frame(out / name, frame)
    summary: dict[str, Any] = pooled.summary()
    write_json(out / f"{stem}.json", summary)
    return summary


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
    _prompts: dict[Scheme, dict[str, list[Any]]] = field(default_factory=dict)

    @classmethod
    def create(
        cls, model: Any, adapter: Any, config: RunConfig, out: Path, progress: bool
    ) -> RunContext:
        from anchor_flow.icl.data import load_task_data
        from anchor_flow.icl.tasks import get_task

        task = get_task(config.task)
        policy = config.label_token_policy or task.label_token_policy
        data = load_task_data(task, data_dir=config.data_dir)
        resolved: dict[str, Any] = {"task": task.name, "data": data.source,
                                    "label_token_policy": policy,
                                    "class_names": list(task.label_names)}  # fmt: skip
        resolved["prepend_bos"] = _resolved_bos(model, config)
        return cls(model, adapter, config, out, progress, task, data, policy, resolved)

    def prompt_sets(self, scheme: Scheme) -> dict[str, list[Any]]:
        """Prompts per seed (``"seed-42"``), fitted to the context as ``on_overflow`` says."""
        if scheme not in self._prompts:
            sets, skipped = experiment_prompts(
                self.task, self.data, self.config, scheme, self.adapter.tokenizer,
                self.adapter.n_ctx, self.policy,
            )  # fmt: skip
            self._prompts[scheme] = sets
            self.resolved[f"skipped_too_long_{scheme}"] = skipped
        return self._prompts[scheme]

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


def _saliency(run: RunContext) -> dict[str, Any]:
    from anchor_flow.analysis.flows import InformationFlow
    from anchor_flow.analysis.saliency.measure import run_saliency

    results = {
        name: run_saliency(
            run.model, prompts, loss=run.config.saliency_loss,
            gradient=run.config.saliency_gradient, batch_size=run.config.batch_size,
            memory=run.config.saliency_memory, label_token_policy=run.policy,
            progress=run.progress,
        )
        for name, prompts in run.prompt_sets("per_example").items()
    }  # fmt: skip
    first = next(iter(results.values()))
    settings = {**first.settings, **run.settings("per_example"),
                "n_prompts": sum(r.n_prompts for r in results.values())}  # fmt: skip
    flow = InformationFlow.concat([r.flows() for r in results.values()],
                                  aggregation=run.config.seed_aggregation)  # fmt: skip
    flow = replace(flow, settings={**settings, "seed_aggregation": flow.aggregation})
    for name, result in results.items():
        result.save(run.out / "saliency" / name)
    write_frame(run.out / "flows.csv", flow.to_frame())
    summary = flow.summary()
    summary["accuracy"] = {name: r.accuracy() for name, r in results.items()}
    write_json(run.out / "saliency.json", summary)
    return summary


def _isolation(run: RunContext) -> dict[str, Any]:
    from anchor_flow.analysis.isolation import IsolationResult, run_isolation

    runs = [
        run_isolation(
            run.model, prompts, layer_counts=run.config.isolation_layer_counts,
            mode=run.config.isolation_mode, top_k=run.config.top_k,
            seed=int(name.removeprefix("seed-")), run_name=name,
            batch_size=run.config.batch_size, label_token_policy=run.policy,
            progress=run.progress,
        )
        for name, prompts in run.prompt_sets("fixed").items()
    ]  # fmt: skip
    pooled = IsolationResult.concat(runs)
    return save_pooled(run.out, "isolation", pooled, run.settings("fixed"),
                       {"isolation.csv": pooled.summary_frame()})  # fmt: skip


def _deep(run: RunContext) -> dict[str, Any]:
    from anchor_flow.analysis.deep import DeepResult, run_deep

    runs = [
        run_deep(run.model, prompts, batch_size=run.config.batch_size, run_name=name,
                 label_token_policy=run.policy, progress=run.progress)
        for name, prompts in run.prompt_sets("fixed").items()
    ]  # fmt: skip
    pooled = DeepResult.concat(runs)
    return save_pooled(run.out, "deep", pooled, run.settings("fixed"),
                       {"deep.csv": pooled.summary_frame()})  # fmt: skip


def _reweighting(run: RunContext) -> dict[str, Any]:
    from anchor_flow.applications.reweighting.protocol import (
        ReweightingResult,
        fit_reweighting_prompts,
        reweighting_prompts,
        run_reweighting,
    )

    runs = []
    for seed in run.config.seeds:
        sets = reweighting_prompts(
            run.task, run.data.train, run.data.test, seed=seed,
            n_examples=run.config.n_examples, train_per_class=run.config.train_per_class,
            tokenizer=run.adapter.tokenizer, max_length=run.adapter.n_ctx,
            label_token_policy=run.policy,
        )  # fmt: skip
        sets, skipped = fit_reweighting_prompts(
            sets, run.adapter.tokenizer, run.adapter.n_ctx, on_overflow=run.config.on_overflow,
            label_token_policy=run.policy,
        )  # fmt: skip
        run.resolved.setdefault("skipped_too_long_reweighting", {})[seed] = skipped
        runs.append(
            run_reweighting(
                run.model, sets, run_name=f"seed-{seed}", epochs=run.config.reweighting_epochs,
                lr=run.config.reweighting_lr, batch_size=run.config.batch_size, seed=seed,
                label_token_policy=run.policy, progress=run.progress,
            )
        )  # fmt: skip
    pooled = ReweightingResult.concat(runs)
    settings = {**run.settings("reweighting"), "train_per_class": run.config.train_per_class,
                "k_shot_shots_per_run": [r.settings["k_shot_shots"] for r in runs]}  # fmt: skip
    return save_pooled(run.out, "reweighting", pooled, settings,
                       {"reweighting.csv": pooled.summary_frame()})  # fmt: skip


def _compression(run: RunContext) -> dict[str, Any]:
    from anchor_flow.applications.compression.baselines import CompressionResult, run_compression

    runs = [
        run_compression(
            run.model, prompts, methods=run.config.compression_methods,
            position_policy=run.config.position_policy, seed=int(name.removeprefix("seed-")),
            n_top_trials=run.config.top_trials, top_k=run.config.top_k,
            batch_size=run.config.batch_size, run_name=name, label_token_policy=run.policy,
            engine=run.config.compression_engine, progress=run.progress,
        )
        for name, prompts in run.prompt_sets("fixed").items()
    ]  # fmt: skip
    pooled = CompressionResult.concat(runs)
    frames = {"compression.csv": pooled.summary_frame(),
              "compression_trials.csv": pooled.trials_frame()}  # fmt: skip
    summary = save_pooled(run.out, "compression", pooled, run.settings("fixed"), frames)
    speed = _speed(run)
    speed.save(run.out / "compression_speed")
    write_frame(run.out / "compression_speed.csv", speed.to_frame())
    return {**summary, "speed": speed.summary()}


def _speed(run: RunContext) -> Any:
    """Table 3 on this model: per-query time, full vs compressed, for 1/2/4 shots per class.

    The first seed's first ``speed_queries`` test examples (scheme "fixed"), batch 1 as the
    paper; demonstration counts that do not fit the context are left out.
    """
    from anchor_flow.applications.compression.speed import measure_speedup
    from anchor_flow.icl.context import fit_to_context
    from anchor_flow.icl.sampling import SamplingError, task_prompts

    prompts: list[Any] = []
    skipped = run.resolved["skipped_too_long_speed"] = {}
    for shots in (1, 2, 4):
        drawn = task_prompts(
            run.task, run.data.train, run.data.test, seed=run.config.seeds[0],
            n_examples=run.config.speed_queries, shots_per_class=shots, scheme="fixed",
        )  # fmt: skip
        try:
            fitting, skipped[shots] = fit_to_context(
                drawn, run.adapter.tokenizer, run.adapter.n_ctx, on_overflow="skip",
                label_token_policy=run.policy,
            )  # fmt: skip
        except SamplingError:  # none fits: this demonstration count is left out
            fitting, skipped[shots] = [], len(drawn)
        prompts += fitting
    if not prompts:
        raise SamplingError(
            f"Table 3: no prompt with 1, 2 or 4 demonstrations per class fits the context of "
            f"{run.adapter.n_ctx} tokens; leave compression out of --experiments"
        )
    from anchor_flow.errors import UnsupportedModelError

    try:
        return measure_speedup(run.model, prompts, position_policy=run.config.position_policy,
                               label_token_policy=run.policy)  # fmt: skip
    except UnsupportedModelError:
        # TL 3.x HookedTransformer cannot continue rotary positions after a pruned cache;
        # "compact" numbers them differently at the same cost, so the timing is the same.
        result = measure_speedup(run.model, prompts, position_policy="compact",
                                 label_token_policy=run.policy)  # fmt: skip
        note = "compact (the model class cannot continue positions after a pruned cache)"
        return replace(result, settings={**result.settings, "position_policy": note})


def _diagnosis(run: RunContext) -> dict[str, Any]:
    from anchor_flow.applications.diagnosis.distances import DiagnosisResult, run_diagnosis

    runs = [
        run_diagnosis(
            run.model, prompts, layer=run.config.diagnosis_layer,
            n_components=run.config.n_components, class_names=run.task.label_names,
            batch_size=run.config.batch_size, run_name=name, label_token_policy=run.policy,
            progress=run.progress,
        )
        for name, prompts in run.prompt_sets("fixed").items()
    ]  # fmt: skip
    pooled = DiagnosisResult.concat(runs)
    return save_pooled(run.out, "diagnosis", pooled, run.settings("fixed"),
                       {"diagnosis.csv": pooled.to_frame()})  # fmt: skip


def _resolved_bos(model: Any, config: RunConfig) -> bool:
    from anchor_flow.models.bos import prepend_bos_option, resolved_prepend_bos

    return resolved_prepend_bos(model, prepend_bos_option(config.prepend_bos))


def run_step(name: str, run: RunContext) -> dict[str, Any]:
    """``STEPS[name](run)`` with ``RunConfig.prepend_bos`` in force for the run's model."""
    from anchor_flow.models.bos import forced_prepend_bos, prepend_bos_option

    with forced_prepend_bos(run.model, prepend_bos_option(run.config.prepend_bos)):
        return STEPS[name](run)


STEPS: dict[str, Callable[[RunContext], dict[str, Any]]] = {
    "saliency": _saliency,
    "isolation": _isolation,
    "deep": _deep,
    "reweighting": _reweighting,
    "compression": _compression,
    "diagnosis": _diagnosis,
}
