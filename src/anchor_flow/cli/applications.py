"""The ``anchor-flow reweight`` and ``anchor-flow diagnose`` commands (paper §3.1, §3.3; not
public).

``reweight`` follows Table 1's protocol per seed
(:func:`anchor_flow.applications.reweighting.protocol. reweighting_prompts`: 1 demonstration per
class, 4 extra training examples per class wrapped with the same demonstrations, the k-shot
baseline with fewer shots when the context is too short); ``diagnose`` uses demonstrations fixed
per seed (scheme "fixed"). Both pool the seeds, write ``reweighting.json`` / ``diagnosis.json``
atomically and re-render ``report.html``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from anchor_flow.cli.common import load_model_and_prompts, load_model_for, write_results


def add_parsers(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``reweight`` and ``diagnose`` on the ``anchor-flow`` sub-command parser."""
    reweight = commands.add_parser(
        "reweight",
        parents=parents,
        help="anchor re-weighting vs vanilla 1-shot / k-shot ICL (paper §3.1, Table 1)",
        description="Fit beta per layer, head and class with the model frozen; writes "
        "reweighting.json, reweighting.csv, reweighting/ and report.html.",
    )
    reweight.add_argument("--out", type=Path, required=True, help="results folder")
    reweight.add_argument("--epochs", type=int, default=10)
    reweight.add_argument("--lr", type=float, default=0.01)
    reweight.add_argument("--train-per-class", type=int, default=4, help="extra examples")
    reweight.add_argument("--train-batch-size", type=int, default=1)
    reweight.add_argument(
        "--renormalise", action="store_true", help="renormalise the target row (not the paper)"
    )
    reweight.add_argument("--quiet", action="store_true", help="no progress bar")

    diagnose = commands.add_parser(
        "diagnose",
        parents=parents,
        help="anchor distances vs real confusion (paper §3.3, Fig. 6)",
        description="Predicted (Eq. 11) and real (App. K) confusion and their rank "
        "correlation; writes diagnosis.json, diagnosis.csv, diagnosis/ and report.html.",
    )
    diagnose.add_argument("--out", type=Path, required=True, help="results folder")
    diagnose.add_argument("--layer", type=int, default=None, help="default: 2/3 of the depth")
    diagnose.add_argument("--n-components", type=int, default=10, help="PCA's M (paper: 10)")
    diagnose.add_argument("--quiet", action="store_true", help="no progress bar")


def run_reweight_command(args: argparse.Namespace) -> None:
    from anchor_flow.applications.reweighting.protocol import (
        ReweightingResult,
        reweighting_prompts,
        run_reweighting,
    )
    from anchor_flow.cli.common import positive
    from anchor_flow.icl.data import load_task_data
    from anchor_flow.icl.tasks import get_task

    for option in ("epochs", "train_per_class", "train_batch_size"):
        positive("--" + option.replace("_", "-"), getattr(args, option))
    model, adapter, settings = load_model_for(args)
    task = get_task(args.task)
    policy = args.label_token_policy or task.label_token_policy
    data = load_task_data(task, data_dir=args.data_dir)
    runs = []
    for seed in args.seeds:
        sets = reweighting_prompts(
            task, data.train, data.test, seed=seed, n_examples=args.n_examples,
            train_per_class=args.train_per_class, tokenizer=adapter.tokenizer,
            max_length=adapter.n_ctx, label_token_policy=policy,
        )  # fmt: skip
        runs.append(
            run_reweighting(
                model, sets, run_name=f"seed-{seed}", epochs=args.epochs, lr=args.lr,
                train_batch_size=args.train_batch_size, batch_size=args.batch_size, seed=seed,
                renormalise=args.renormalise, label_token_policy=policy, progress=not args.quiet,
            )
        )  # fmt: skip
    pooled = ReweightingResult.concat(runs)
    extra = {**settings, "task": task.name, "data": data.source, "seeds": list(args.seeds),
             "n_examples": args.n_examples, "train_per_class": args.train_per_class,
             "class_names": list(task.label_names),
             "k_shot_shots_per_run": [r.settings["k_shot_shots"] for r in runs]}  # fmt: skip
    write_results(args.out, "reweighting", pooled, extra,
                  {"reweighting.csv": pooled.summary_frame()})  # fmt: skip


def run_diagnose_command(args: argparse.Namespace) -> None:
    from anchor_flow.applications.diagnosis.distances import DiagnosisResult, run_diagnosis
    from anchor_flow.icl.tasks import get_task

    model, sets, policy, settings = load_model_and_prompts(args)
    names = get_task(args.task).label_names
    runs = [
        run_diagnosis(model, prompts, layer=args.layer, n_components=args.n_components,
                      class_names=names, batch_size=args.batch_size, run_name=name,
                      label_token_policy=policy, progress=not args.quiet)
        for name, prompts in sets.items()
    ]  # fmt: skip
    pooled = DiagnosisResult.concat(runs)
    write_results(args.out, "diagnosis", pooled, settings, {"diagnosis.csv": pooled.to_frame()})
