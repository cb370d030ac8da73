"""The six experiments of :func:`anchor_flow.run.pipeline.run_experiments`, one function each.

Each step reads its prompts from the :class:`~anchor_flow.run.context.RunContext` (built once
per run: model, task, data, prompts per seed, the ranks), calls the experiment's public
``run_*`` function once per seed (in a data-parallel run: on this rank's part of the seed's
prompts, joined on rank 0 by :mod:`anchor_flow.run.shards`), pools the seeds, writes its
files (:data:`STEP_FILES`, each atomically) and returns the JSON-safe summary that goes into
``results.json`` (rank 0; the other ranks return ``{}`` and write nothing). Protocols
(PAPER.md §7): saliency draws demonstrations per test example; isolation, deep layers,
compression and diagnosis fix them per seed (scheme "fixed"; the generated demo-*/synthetic-*
tasks still draw demonstrations and label words per prompt); re-weighting uses Table 1's
1-shot + 4-per-class split.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from anchor_flow.results.files import write_atomic
from anchor_flow.run.context import RunContext, Scheme, experiment_prompts
from anchor_flow.run.heads import HEADS_FILES, heads_step
from anchor_flow.run.shards import join_diagnosis, join_saliency

__all__ = [
    "STEPS",
    "STEP_FILES",
    "RunContext",
    "experiment_prompts",
    "model_info",
    "run_step",
    "save_pooled",
]

STEP_FILES: dict[str, tuple[str, ...]] = {
    "saliency": ("saliency.json", "flows.csv", "saliency/"),
    "isolation": ("isolation.json", "isolation.csv", "isolation/"),
    "deep": ("deep.json", "deep.csv", "deep/"),
    "reweighting": ("reweighting.json", "reweighting.csv", "reweighting/"),
    "compression": ("compression.json", "compression.csv", "compression_trials.csv",
                    "compression/", "compression_speed.csv", "compression_speed/"),
    "diagnosis": ("diagnosis.json", "diagnosis.csv", "diagnosis/"),
    "heads": HEADS_FILES,
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


def _parts(
    run: RunContext, scheme: Scheme, compute: Callable[[str, int, list[Any]], Any]
) -> dict[str, list[Any]] | None:
    """``compute(seed name, index of the first prompt, prompts)`` on this rank's part of each
    seed's prompts; on rank 0 every rank's part per seed in prompt order (else None)."""

    def mine() -> dict[str, Any]:
        parts = {}
        for name, prompts in run.prompt_sets(scheme).items():
            first, part = run.ranks.shard(prompts)
            parts[name] = compute(name, first, part) if part else None
        return parts

    gathered = run.ranks.gather(mine)
    if gathered is None:
        return None
    return {name: [p[name] for p in gathered if p[name] is not None] for name in gathered[0]}


def _saliency(run: RunContext) -> dict[str, Any]:
    from anchor_flow.analysis.flows import InformationFlow
    from anchor_flow.analysis.saliency.measure import run_saliency

    parts = _parts(run, "per_example", lambda _, __, prompts: run_saliency(
        run.model, prompts, loss=run.config.saliency_loss,
        gradient=run.config.saliency_gradient, batch_size=run.config.batch_size,
        memory=run.config.saliency_memory, label_token_policy=run.policy, progress=run.progress,
    ))  # fmt: skip
    if parts is None:
        return {}
    results = {name: join_saliency(shards) for name, shards in parts.items()}
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

    parts = _parts(run, "fixed", lambda name, first, prompts: run_isolation(
        run.model, prompts, layer_counts=run.config.isolation_layer_counts,
        mode=run.config.isolation_mode, top_k=run.config.top_k,
        seed=int(name.removeprefix("seed-")), run_name=name, batch_size=run.config.batch_size,
        label_token_policy=run.policy, first_prompt_id=first, progress=run.progress,
    ))  # fmt: skip
    if parts is None:
        return {}
    pooled = IsolationResult.concat([IsolationResult.join(p) for p in parts.values()])
    return save_pooled(run.out, "isolation", pooled, run.settings("fixed"),
                       {"isolation.csv": pooled.summary_frame()})  # fmt: skip


def _deep(run: RunContext) -> dict[str, Any]:
    from anchor_flow.analysis.deep import DeepResult, run_deep

    parts = _parts(run, "fixed", lambda name, _, prompts: run_deep(
        run.model, prompts, batch_size=run.config.batch_size, run_name=name,
        label_token_policy=run.policy, progress=run.progress,
    ))  # fmt: skip
    if parts is None:
        return {}
    pooled = DeepResult.concat([DeepResult.join(p) for p in parts.values()])
    return save_pooled(run.out, "deep", pooled, run.settings("fixed"),
                       {"deep.csv": pooled.summary_frame()})  # fmt: skip


def _reweighting(run: RunContext) -> dict[str, Any]:
    """Shared by seeds: each seed trains its own beta on its own prompts."""
    from anchor_flow.applications.reweighting.protocol import (
        ReweightingResult,
        fit_reweighting_prompts,
        reweighting_prompts,
        run_reweighting,
    )

    def seed_run(seed: int) -> tuple[Any, Any]:
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
        return skipped, run_reweighting(
            run.model, sets, run_name=f"seed-{seed}", epochs=run.config.reweighting_epochs,
            lr=run.config.reweighting_lr, batch_size=run.config.batch_size, seed=seed,
            label_token_policy=run.policy, progress=run.progress,
        )  # fmt: skip

    gathered = run.ranks.gather(lambda: [seed_run(s) for s in run.ranks.shard(run.config.seeds)[1]])
    if gathered is None:
        return {}
    done = [item for part in gathered for item in part]  # the seeds in order
    for seed, (skipped, _) in zip(run.config.seeds, done, strict=True):
        run.resolved.setdefault("skipped_too_long_reweighting", {})[seed] = skipped
    runs = [result for _, result in done]
    pooled = ReweightingResult.concat(runs)
    settings = {**run.settings("reweighting"), "train_per_class": run.config.train_per_class,
                "k_shot_shots_per_run": [r.settings["k_shot_shots"] for r in runs]}  # fmt: skip
    return save_pooled(run.out, "reweighting", pooled, settings,
                       {"reweighting.csv": pooled.summary_frame()})  # fmt: skip


def _compression(run: RunContext) -> dict[str, Any]:
    """Table 2 shared by prompts; Table 3 (a timing) on rank 0 alone, after the others."""
    from anchor_flow.applications.compression.baselines import CompressionResult
    from anchor_flow.applications.compression.outcomes import (
        CompressionOutcomes,
        compression_outcomes,
    )

    parts = _parts(run, "fixed", lambda name, first, prompts: compression_outcomes(
        run.model, prompts, methods=run.config.compression_methods,
        position_policy=run.config.position_policy, seed=int(name.removeprefix("seed-")),
        n_top_trials=run.config.top_trials, top_k=run.config.top_k,
        batch_size=run.config.batch_size, label_token_policy=run.policy,
        engine=run.config.compression_engine, first_prompt_id=first, progress=run.progress,
    ))  # fmt: skip
    if parts is None:
        return {}
    runs = [CompressionResult.from_outcomes(CompressionOutcomes.join(p), name)
            for name, p in parts.items()]  # fmt: skip
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
    from anchor_flow.applications.diagnosis.distances import DiagnosisResult, record_diagnosis

    parts = _parts(run, "fixed", lambda name, _, prompts: record_diagnosis(
        run.model, prompts, layer=run.config.diagnosis_layer,
        n_components=run.config.n_components, class_names=run.task.label_names,
        batch_size=run.config.batch_size, run_name=name, label_token_policy=run.policy,
        progress=run.progress,
    ))  # fmt: skip
    if parts is None:
        return {}
    n = run.config.n_components
    pooled = DiagnosisResult.concat([join_diagnosis(p, n) for p in parts.values()])
    return save_pooled(run.out, "diagnosis", pooled, run.settings("fixed"),
                       {"diagnosis.csv": pooled.to_frame()})  # fmt: skip


def run_step(name: str, run: RunContext) -> dict[str, Any]:
    """``STEPS[name](run)`` with ``RunConfig.prepend_bos`` in force for the run's model.

    In a data-parallel run rank 0 first tells the other ranks to run the step too (they
    compute their parts, send them to rank 0 and return ``{}``)."""
    from anchor_flow.models.bos import forced_prepend_bos, prepend_bos_option

    if run.ranks.leader:
        run.ranks.send(("step", name))
    with forced_prepend_bos(run.model, prepend_bos_option(run.config.prepend_bos)):
        return STEPS[name](run)


STEPS: dict[str, Callable[[RunContext], dict[str, Any]]] = {
    "saliency": _saliency,
    "isolation": _isolation,
    "deep": _deep,
    "reweighting": _reweighting,
    "compression": _compression,
    "diagnosis": _diagnosis,
    "heads": heads_step,
}
