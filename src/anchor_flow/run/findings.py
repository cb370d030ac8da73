"""The run's findings (issue 16): which of the paper's claims this run shows, against controls.

:func:`update_findings` runs after the experiments of
:func:`anchor_flow.run.pipeline.run_experiments`. It builds the null model (the same
architecture, re-initialised: :func:`anchor_flow.models.null.random_init_copy`) when the
settings ask for one, runs saliency and the deep-layer experiment on it with the first seed's
prompts (files in ``null_model/``), and computes one verdict per claim
(:mod:`anchor_flow.analysis.findings`) for the model and for its null model from the complete
experiments' files, then one per application (A1-A3, :mod:`anchor_flow.applications.findings`).
A model's "holds" that its null model also meets becomes "not distinguished from the null"
(:func:`~anchor_flow.analysis.findings.against_null`). Claims whose experiment did not run are
left out. Returns what ``results.json`` records under ``claim_layers``, ``null_model`` and
``findings``.
"""

from __future__ import annotations

import logging
import shutil
from typing import Any

from anchor_flow.results.runs import run_folders
from anchor_flow.run.heads import load_head_finding
from anchor_flow.run.steps import RunContext

__all__ = ["NULL_FILES", "update_findings"]

NULL_FILES = ("null_model/",)
log = logging.getLogger(__name__)


def _null_plan(run: RunContext) -> dict[str, Any]:
    from anchor_flow.models.null import NULL_MODEL_MAX_PARAMETERS, n_parameters

    wanted = [e for e in ("saliency", "deep") if e in run.config.experiments]
    n = n_parameters(run.model)
    plan = {"kind": run.config.null_model, "seed": run.config.seeds[0], "parameters": n,
            "experiments": wanted}  # fmt: skip
    if run.config.null_model == "none":
        return {**plan, "kind": "none", "reason": "switched off (null_model='none')"}
    if not wanted:
        return {**plan, "kind": "none", "reason": "neither saliency nor deep was run"}
    if run.config.null_model == "auto" and n > NULL_MODEL_MAX_PARAMETERS:
        reason = (f"{n:,} parameters > {NULL_MODEL_MAX_PARAMETERS:,} (the default limit; "
                  "--null-model random-init forces it)")  # fmt: skip
        return {**plan, "kind": "none", "reason": reason}
    return {**plan, "kind": "random-init"}


def _run_null(run: RunContext, plan: dict[str, Any]) -> dict[str, Any]:
    """Saliency and deep layers on the re-initialised model, first seed's prompts."""
    from anchor_flow.analysis.deep import run_deep
    from anchor_flow.analysis.saliency.measure import run_saliency
    from anchor_flow.models.null import random_init_copy

    folder = run.out / "null_model"
    shutil.rmtree(folder, ignore_errors=True)
    null = random_init_copy(run.model, seed=plan["seed"])
    name = f"seed-{run.config.seeds[0]}"
    # The null reads the model's exact inputs: the BOS choice of the run, not its own default.
    bos = run.resolved.get("prepend_bos")
    if "saliency" in plan["experiments"]:
        prompts = run.prompt_sets("per_example")[name]
        result = run_saliency(null, prompts, loss=run.config.saliency_loss,
                              gradient=run.config.saliency_gradient,
                              memory=run.config.saliency_memory,
                              batch_size=run.config.batch_size, label_token_policy=run.policy,
                              prepend_bos=bos, progress=False)  # fmt: skip
        result.save(folder / "saliency" / name)
    if "deep" in plan["experiments"]:
        deep = run_deep(null, run.prompt_sets("fixed")[name], batch_size=run.config.batch_size,
                        run_name=name, label_token_policy=run.policy, prepend_bos=bos,
                        progress=False)  # fmt: skip
        deep.save(folder / "deep")
    return {**plan, "status": "complete", "prompts": name, "files": list(NULL_FILES)}


def _complete(record: dict[str, Any], name: str) -> bool:
    return record.get("experiments", {}).get(name, {}).get("status") == "complete"


def _application_findings(run: RunContext, record: dict[str, Any]) -> list[Any]:
    """A1-A3 from the complete application experiments' folders."""
    from anchor_flow.applications import findings as apps

    out, found = run.out, []
    if _complete(record, "reweighting"):
        from anchor_flow.applications.reweighting.protocol import ReweightingResult

        found.append(apps.reweighting_finding(ReweightingResult.load(out / "reweighting")))
    if _complete(record, "compression"):
        from anchor_flow.applications.compression.baselines import CompressionResult

        result = CompressionResult.load(out / "compression")
        if "hidden_anchor" in result.methods:
            found.append(apps.compression_finding(result, len(run.task.label_names)))
    if _complete(record, "diagnosis"):
        from anchor_flow.applications.diagnosis.result import DiagnosisResult

        found.append(apps.diagnosis_finding(DiagnosisResult.load(out / "diagnosis")))
    return found


def update_findings(run: RunContext, record: dict[str, Any]) -> dict[str, Any]:
    """``claim_layers``, ``null_model`` and ``findings`` for ``results.json`` (see module doc)."""
    import anchor_flow.analysis.findings as claims
    from anchor_flow.analysis.deep import DeepResult
    from anchor_flow.analysis.isolation import IsolationResult
    from anchor_flow.analysis.saliency.result import SaliencyResult
    from anchor_flow.report.findings import load_null_results

    out = run.out
    layers = claims.claim_layers(run.adapter.n_layers, run.config.claim_layer_fraction)
    null = record.get("null_model", {})
    if not (null.get("status") == "complete" and (out / "null_model").is_dir()):
        null = _null_plan(run)
        if null["kind"] == "random-init":
            log.info("null model: %s, seed %s", null["kind"], null["seed"])
            null = _run_null(run, null)
    found: list[Any] = []
    if _complete(record, "saliency"):
        results = [SaliencyResult.load(run)
                   for run in run_folders(out / "saliency", "saliency_meta.json")]  # fmt: skip
        found += [claims.shallow_aggregation(results, layers.shallow),
                  claims.deep_reading(results, layers.deep)]  # fmt: skip
    if _complete(record, "isolation"):
        isolation = IsolationResult.load(out / "isolation")
        found.append(claims.causal_anchors(isolation, len(layers.shallow)))
    if _complete(record, "deep"):
        found.append(claims.deep_prediction(DeepResult.load(out / "deep"), layers.deep))
    if _complete(record, "heads"):  # H1, issue 24 (its null model runs in the heads step)
        found += [f for f in (load_head_finding(out), load_head_finding(out, "null model"))
                  if f is not None]  # fmt: skip
    if null.get("status") == "complete":
        saliency, deep = load_null_results(out)
        subject = "null model"
        if saliency and _complete(record, "saliency"):
            found += [claims.shallow_aggregation(saliency, layers.shallow, subject=subject),
                      claims.deep_reading(saliency, layers.deep, subject=subject)]  # fmt: skip
        if deep is not None and _complete(record, "deep"):
            found.append(claims.deep_prediction(deep, layers.deep, subject=subject))
    found = claims.against_null(found)
    found += _application_findings(run, record)
    found.sort(key=lambda f: (not f.claim.startswith("C"), f.claim, f.subject != "model"))
    return {"claim_layers": layers.to_dict(), "null_model": null,
            "findings": [f.to_dict() for f in found]}  # fmt: skip
