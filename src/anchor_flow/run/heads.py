"""The ``heads`` experiment of :func:`anchor_flow.run.pipeline.run_experiments` (issue 24).

Per seed (scheme "fixed", the prompts of isolation), every rank computes the per-head flows of
its part of the prompts (:func:`anchor_flow.analysis.heads.run_head_flows`), and every rank
receives every part (:meth:`~anchor_flow.run.distributed.Ranks.everyone`, after
:meth:`~anchor_flow.run.distributed.Ranks.agree` so that a failure anywhere raises
everywhere): each then chooses the same heads from the pooled flows, one gathering head per
shallow layer among the shallow layers' heads and one reading head per deep layer among the
deep layers' heads (:func:`~anchor_flow.analysis.findings.claim_layers`), by mean share.
The causal check (:func:`~anchor_flow.analysis.heads.run_head_blocking`) then runs on each
rank's part and :meth:`~anchor_flow.run.distributed.Ranks.gather` brings the parts to rank 0,
which joins them (random heads are drawn by the prompt's index in the whole list) and writes:

* ``heads/top_heads.csv``: ``kind, rank, layer, head, share, ci_low, ci_high`` (gathering:
  the shallow layers' heads; reading: the deep layers');
* ``heads/causal.csv``: ``arm, metric, mean, ci_low, ci_high, n_prompts``;
* ``heads/head_flows.csv``: every head of every layer, both kinds, with its enrichment and
  whether it clears the margin (:func:`~anchor_flow.analysis.findings.anchor_heads_frame`);
* ``heads/flows/`` and ``heads/blocking/``: the raw results; ``heads.json``: the summary;
* ``heads/null_model/``: the same files for the run's null model (when the run has one:
  ``RunConfig.null_model``), on rank 0 with the first seed's prompts, for claim H1's verdict on
  the null model.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from anchor_flow.results.files import write_atomic
from anchor_flow.run.context import RunContext

__all__ = ["HEADS_FILES", "choose_heads", "heads_step", "load_head_finding", "write_heads"]

HEADS_FILES = ("heads.json", "heads/")


def heads_step(run: RunContext) -> dict[str, Any]:
    """Per-head flows, the top heads and their causal check (see the module docstring)."""
    from anchor_flow.analysis.findings import claim_layers
    from anchor_flow.analysis.heads import (
        HeadBlockingResult,
        HeadFlows,
        run_head_blocking,
        run_head_flows,
    )

    sets = run.prompt_sets("fixed")

    def my_flows() -> dict[str, Any]:
        parts = {}
        for name, prompts in sets.items():
            _, part = run.ranks.shard(prompts)
            parts[name] = run_head_flows(
                run.model, part, run_name=name, loss=run.config.saliency_loss,
                gradient=run.config.saliency_gradient, batch_size=run.config.batch_size,
                memory=run.config.saliency_memory, label_token_policy=run.policy,
                progress=run.progress,
            ) if part else None  # fmt: skip
        return parts

    everyone = run.ranks.everyone(run.ranks.agree(my_flows))
    flows = HeadFlows.concat([
        HeadFlows.join([p[name] for p in everyone if p[name] is not None]) for name in sets
    ])  # fmt: skip
    layers = claim_layers(flows.n_layers, run.config.claim_layer_fraction)
    heads = choose_heads(flows, run.config.claim_layer_fraction)

    def my_blocking() -> dict[str, Any]:
        parts = {}
        for name, prompts in sets.items():
            first, part = run.ranks.shard(prompts)
            parts[name] = run_head_blocking(
                run.model, part, gathering_heads=heads["gathering"],
                reading_heads=heads["reading"], mode=run.config.isolation_mode,
                top_k=run.config.top_k, seed=int(name.removeprefix("seed-")), run_name=name,
                batch_size=run.config.batch_size, label_token_policy=run.policy,
                first_prompt_id=first, progress=run.progress,
            ) if part else None  # fmt: skip
        return parts

    gathered = run.ranks.gather(my_blocking)
    if gathered is None:
        return {}
    blocking = HeadBlockingResult.concat([
        HeadBlockingResult.join([p[name] for p in gathered if p[name] is not None])
        for name in sets
    ])  # fmt: skip
    settings = {**run.settings("fixed"), "claim_layers": layers.to_dict(), "heads_rule": RULE}
    summary = write_heads(run.out, flows, blocking, settings)
    null = _null_heads(run, settings)
    if null is not None:
        summary["null_model"] = null
        write_json(run.out / "heads.json", summary)
    return summary


def _null_heads(run: RunContext, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The same on the run's null model (rank 0, the first seed's prompts): its own heads,
    chosen by the same rule, against its own random heads (``heads/null_model/``)."""
    from anchor_flow.models.null import NULL_MODEL_MAX_PARAMETERS, n_parameters, random_init_copy

    kind = run.config.null_model
    if kind == "none" or (kind == "auto" and n_parameters(run.model) > NULL_MODEL_MAX_PARAMETERS):
        return None
    from anchor_flow.analysis.heads import run_head_blocking, run_head_flows

    seed = run.config.seeds[0]
    name, bos = f"seed-{seed}", run.resolved.get("prepend_bos")
    null = random_init_copy(run.model, seed=seed)
    prompts = run.prompt_sets("fixed")[name]
    options: dict[str, Any] = {"batch_size": run.config.batch_size, "prepend_bos": bos,
                               "label_token_policy": run.policy, "progress": False}  # fmt: skip
    flows = run_head_flows(null, prompts, run_name=name, loss=run.config.saliency_loss,
                           gradient=run.config.saliency_gradient,
                           memory=run.config.saliency_memory, **options)  # fmt: skip
    heads = choose_heads(flows, run.config.claim_layer_fraction)
    blocking = run_head_blocking(
        null, prompts, gathering_heads=heads["gathering"], reading_heads=heads["reading"],
        mode=run.config.isolation_mode, top_k=run.config.top_k, seed=seed, run_name=name,
        **options,
    )  # fmt: skip
    summary = write_heads(run.out / "heads", flows, blocking,
                          {**settings, "null_model": {"kind": "random-init", "seed": seed}},
                          json_name=None, folder_name="null_model")  # fmt: skip
    return {"kind": "random-init", "seed": seed, "prompts": name,
            "finding": summary["finding"]}  # fmt: skip


RULE = "one gathering head per shallow layer, one reading head per deep layer, by mean share"


def choose_heads(flows: Any, fraction: float = 1 / 3, k: int | None = None) -> dict[str, Any]:
    """The gathering heads (among the shallow layers' heads) and the reading heads (among the
    deep layers'), by mean share: ``k`` of each, default one per shallow / deep layer."""
    from anchor_flow.analysis.findings import claim_layers

    layers = claim_layers(flows.n_layers, fraction)
    return {"gathering": flows.top_heads("gathering", k or len(layers.shallow), layers.shallow),
            "reading": flows.top_heads("reading", k or len(layers.deep), layers.deep)}  # fmt: skip


def write_heads(
    out: Path,
    flows: Any,
    blocking: Any,
    settings: dict[str, Any],
    json_name: str | None = "heads.json",
    folder_name: str = "heads",
) -> dict[str, Any]:
    """Write ``heads/`` and ``heads.json`` into ``out`` (see the module docstring); returns the
    summary. ``settings["claim_layers"]["fraction"]`` picks the shallow and deep layers; the
    null model's folder is written without a JSON summary (``json_name=None``)."""
    from anchor_flow.analysis.findings import anchor_heads_frame, claim_layers

    layers = claim_layers(flows.n_layers, settings.get("claim_layers", {}).get("fraction", 1 / 3))
    settings = {**settings, "claim_layers": layers.to_dict()}
    folder = out / folder_name
    flows = replace(flows, settings={**flows.settings, **settings})
    blocking = replace(blocking, settings={**blocking.settings, **settings})
    flows.save(folder / "flows")
    blocking.save(folder / "blocking")
    frames = {kind: anchor_heads_frame(flows, kind) for kind in ("gathering", "reading")}
    write_frame(folder / "head_flows.csv", pd.concat(frames.values()))
    # A head's share and interval do not depend on which layers are ranked (the bootstrap
    # resamples the prompts alike for every column): the claim layers' rows, re-ranked.
    where = {"gathering": layers.shallow, "reading": layers.deep}
    top = pd.concat([_rerank(frames[kind], where[kind]) for kind in frames])
    columns = ["kind", "rank", "layer", "head", "share", "ci_low", "ci_high"]
    write_frame(folder / "top_heads.csv", top[columns])
    write_frame(folder / "causal.csv", blocking.summary_frame())
    finding = _finding(blocking, frames, "null model" if json_name is None else "model")
    summary = {**blocking.summary(), "settings": settings,
               "top_heads": top[columns].to_dict(orient="records"),
               "finding": None if finding is None else finding.to_dict()}  # fmt: skip
    if json_name is not None:
        write_json(out / json_name, summary)
    return summary


def write_frame(path: Path, frame: pd.DataFrame) -> None:
    text = frame.to_csv(index=False).encode()
    write_atomic(path, lambda handle: handle.write(text))


def write_json(path: Path, data: object) -> None:
    text = json.dumps(data, indent=1, default=str).encode()
    write_atomic(path, lambda handle: handle.write(text))


def load_head_finding(folder: Path, subject: str = "model") -> Any:
    """Claim H1 from a folder's ``heads/`` (``subject="null model"``: ``heads/null_model/``;
    None when it holds no causal check)."""
    from anchor_flow.analysis.findings import anchor_heads_frame
    from anchor_flow.analysis.heads import HeadBlockingResult, HeadFlows

    where = folder / "heads" / ("null_model" if subject != "model" else "")
    if not (where / "blocking" / "head_blocking_meta.json").is_file():
        return None
    blocking = HeadBlockingResult.load(where / "blocking")
    flows = HeadFlows.load(where / "flows")
    frames = {kind: anchor_heads_frame(flows, kind) for kind in ("gathering", "reading")}
    return _finding(blocking, frames, subject)


def _rerank(frame: pd.DataFrame, layers: tuple[int, ...]) -> pd.DataFrame:
    kept = frame[frame["layer"].isin(layers)].reset_index(drop=True)
    kept["rank"] = range(1, len(kept) + 1)
    return kept


def _finding(blocking: Any, frames: dict[str, pd.DataFrame], subject: str = "model") -> Any:
    """H1, with whether some chosen head of each kind clears its margin."""
    from anchor_flow.analysis.findings import causal_heads

    margins = {}
    for kind, heads in (("gathering", blocking.gathering_heads),
                        ("reading", blocking.reading_heads)):  # fmt: skip
        rows = frames[kind][frames[kind]["clears_margin"]]
        cleared = {(int(a), int(b)) for a, b in zip(rows["layer"], rows["head"], strict=True)}
        margins[kind] = bool(cleared & set(heads))
    return causal_heads(blocking, subject=subject, margins=margins)
