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
* ``heads/flows/`` and ``heads/blocking/``: the raw results; ``heads.json``: the summary.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from anchor_flow.results.files import write_atomic
from anchor_flow.run.context import RunContext

__all__ = ["HEADS_FILES", "heads_step", "load_head_finding"]

HEADS_FILES = ("heads.json", "heads/")


def _choose(flows: Any, shallow: tuple[int, ...], deep: tuple[int, ...]) -> dict[str, Any]:
    return {"gathering": flows.top_heads("gathering", len(shallow), shallow),
            "reading": flows.top_heads("reading", len(deep), deep)}  # fmt: skip


def heads_step(run: RunContext) -> dict[str, Any]:
    """Per-head flows, the top heads and their causal check (see the module docstring)."""
    from anchor_flow.analysis.findings import anchor_heads_frame, claim_layers
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
    heads = _choose(flows, layers.shallow, layers.deep)

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
    settings = {**run.settings("fixed"), "claim_layers": layers.to_dict(),
                "heads_rule": "one gathering head per shallow layer, one reading head per "
                "deep layer, by mean share"}  # fmt: skip
    out = run.out / "heads"
    flows = replace(flows, settings={**flows.settings, **settings})
    blocking = replace(blocking, settings={**blocking.settings, **settings})
    flows.save(out / "flows")
    blocking.save(out / "blocking")
    all_heads = pd.concat([anchor_heads_frame(flows, kind) for kind in ("gathering", "reading")])
    write_frame(out / "head_flows.csv", all_heads)
    top = pd.concat([flows.ranking("gathering", layers.shallow),
                     flows.ranking("reading", layers.deep)])  # fmt: skip
    columns = ["kind", "rank", "layer", "head", "share", "ci_low", "ci_high"]
    write_frame(out / "top_heads.csv", top[columns])
    write_frame(out / "causal.csv", blocking.summary_frame())
    finding = load_head_finding(run.out)
    summary = {**blocking.summary(), "settings": settings,
               "top_heads": top[columns].head(10).to_dict(orient="records"),
               "finding": None if finding is None else finding.to_dict()}  # fmt: skip
    write_json(run.out / "heads.json", summary)
    return summary


def write_frame(path: Path, frame: pd.DataFrame) -> None:
    text = frame.to_csv(index=False).encode()
    write_atomic(path, lambda handle: handle.write(text))


def write_json(path: Path, data: object) -> None:
    text = json.dumps(data, indent=1, default=str).encode()
    write_atomic(path, lambda handle: handle.write(text))


def load_head_finding(folder: Path, subject: str = "model") -> Any:
    """Claim H1 from a folder's ``heads/`` (None when it holds no causal check)."""
    from anchor_flow.analysis.findings import anchor_heads_frame, causal_heads
    from anchor_flow.analysis.heads import HeadBlockingResult, HeadFlows

    if not (folder / "heads" / "blocking" / "head_blocking_meta.json").is_file():
        return None
    blocking = HeadBlockingResult.load(folder / "heads" / "blocking")
    flows = HeadFlows.load(folder / "heads" / "flows")
    margins = {}
    for kind, heads in (("gathering", blocking.gathering_heads),
                        ("reading", blocking.reading_heads)):  # fmt: skip
        frame = anchor_heads_frame(flows, kind)
        cleared = {(int(a), int(b)) for a, b, ok in
                   zip(frame["layer"], frame["head"], frame["clears_margin"], strict=True) if ok}  # fmt: skip
        margins[kind] = bool(cleared & set(heads))
    return causal_heads(blocking, subject=subject, margins=margins)
