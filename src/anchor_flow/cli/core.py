"""The core ``anchor-flow`` commands: saliency, evaluate, prompts, data, report (not public)."""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from anchor_flow.cli.common import Policy, load_model_for, prompt_sets, say
from anchor_flow.run.steps import write_frame, write_json

log = logging.getLogger("anchor_flow")


def run_saliency_command(args: argparse.Namespace) -> None:
    from anchor_flow._version import __version__
    from anchor_flow.analysis.flows import InformationFlow
    from anchor_flow.analysis.saliency.measure import run_saliency
    from anchor_flow.icl.prompts import load_prompts
    from anchor_flow.models.tl_adapter import tl_version
    from anchor_flow.report.folder import render_results_folder

    if args.prompts is not None:
        prompt_file = load_prompts(args.prompts)
    # load_model_for honours --dtype and --device-map (these two commands once ignored them).
    model, adapter, _ = load_model_for(args)
    if args.prompts is not None:
        from anchor_flow.icl.context import fit_to_context

        policy: Policy = args.label_token_policy or "single"
        fitting, skipped = fit_to_context(
            prompt_file, adapter.tokenizer, adapter.n_ctx, on_overflow=args.on_overflow,
            label_token_policy=policy,
        )  # fmt: skip
        sets = {"file": fitting}
        run_settings: dict[str, Any] = {"prompts": str(args.prompts), "skipped_too_long": skipped}
    else:
        sets, policy, run_settings = prompt_sets(
            args, "per_example", adapter.tokenizer, adapter.n_ctx
        )
    results = {}
    for name, prompts in sets.items():
        log.info("saliency for %s (%d prompts)", name, len(prompts))
        results[name] = run_saliency(
            model,
            prompts,
            loss=args.loss,
            gradient=args.gradient,
            head_reduction=args.head_reduction,
            batch_size=args.batch_size,
            keep_maps=args.keep_maps,
            memory=args.memory,
            label_token_policy=policy,
            progress=not args.quiet,
        )
    first = next(iter(results.values()))
    settings = {
        **first.settings,
        **run_settings,
        "n_prompts": sum(r.n_prompts for r in results.values()),
        "anchor_flow": __version__,
        "transformer_lens": tl_version(),
        "model_source": args.model,
        "device": str(adapter.device),
        "dtype": str(adapter.dtype),
    }
    flow = InformationFlow.concat([r.flows() for r in results.values()],
                                  aggregation=args.seed_aggregation)  # fmt: skip
    flow = replace(flow, settings={**settings, "seed_aggregation": flow.aggregation})
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for name, result in results.items():
        result.save(out / "saliency" / name)
    write_frame(out / "flows.csv", flow.to_frame())
    summary = flow.summary()
    summary["accuracy"] = {
        name: r.accuracy() if bool((r.gold >= 0).any()) else None for name, r in results.items()
    }
    write_json(out / "saliency.json", summary)
    # After saliency.json: the report shows every result in the folder (isolation, deep too).
    render_results_folder(out)
    say(f"anchor-flow: wrote {out / 'saliency.json'} and {out / 'report.html'}")


def run_evaluate_command(args: argparse.Namespace) -> None:
    import torch

    from anchor_flow._version import __version__
    from anchor_flow.icl.evaluation import run_icl
    from anchor_flow.models.tl_adapter import tl_version
    from anchor_flow.results.stats import bootstrap_interval

    # load_model_for honours --dtype and --device-map (these two commands once ignored them).
    model, adapter, _ = load_model_for(args)
    sets, policy, settings = prompt_sets(args, "fixed", adapter.tokenizer, adapter.n_ctx)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    per_seed = []
    for name, prompts in sets.items():
        result = run_icl(
            model, prompts, batch_size=args.batch_size, top_k=args.top_k,
            label_token_policy=policy, progress=not args.quiet,
        )  # fmt: skip
        result.save(out / "icl" / name)
        per_seed.append(
            {"run": name, "n_examples": result.n_prompts, "accuracy": result.accuracy()}
        )
    accuracies = torch.tensor([row["accuracy"] for row in per_seed], dtype=torch.float64)
    low, high = bootstrap_interval(accuracies[:, None])
    summary = {
        "schema": "anchor_flow.icl_accuracy/1",
        "settings": {
            **settings,
            "model": adapter.name,
            "model_source": args.model,
            "tl_class": adapter.kind,
            "dtype": str(adapter.dtype),
            "label_token_policy": policy,
            "anchor_flow": __version__,
            "transformer_lens": tl_version(),
        },
        "per_seed": per_seed,
        "accuracy_mean": float(accuracies.mean()),
        "accuracy_ci95": [float(low[0]), float(high[0])],
    }
    import pandas as pd

    write_frame(out / "icl.csv", pd.DataFrame(per_seed, columns=["run", "n_examples", "accuracy"]))
    write_json(out / "icl.json", summary)
    say(f"anchor-flow: accuracy {summary['accuracy_mean']:.4f}; wrote {out / 'icl.json'}")


def run_prompts_command(args: argparse.Namespace) -> None:
    from anchor_flow.icl.prompts import save_prompts

    sets, _, _ = prompt_sets(args, args.scheme, None, None)
    prompts = [prompt for prompt_set in sets.values() for prompt in prompt_set]
    save_prompts(args.out, prompts, overwrite=False)  # never a user's own file
    say(f"anchor-flow: wrote {len(prompts)} prompts to {args.out}")


def run_data_command(args: argparse.Namespace) -> None:
    from anchor_flow.icl.data import load_task_data, save_task_data

    data = load_task_data(args.task)
    folder = save_task_data(data, args.out, overwrite=False)  # never a user's own files
    say(f"anchor-flow: wrote {len(data.train)} train and {len(data.test)} test rows to {folder}")


def run_report_command(args: argparse.Namespace) -> None:
    from anchor_flow.report.folder import render_results_folder

    say(f"anchor-flow: wrote {render_results_folder(args.directory)}")
