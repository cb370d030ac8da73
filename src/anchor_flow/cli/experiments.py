"""The ``anchor-flow isolation``, ``deep`` and ``heads`` commands (paper §2.2, §2.3; issue 24;
not public).

Both use the paper's protocol for these experiments: demonstrations fixed per seed
(scheme "fixed"), one run per seed, runs pooled for means over seeds with intervals. The
random control of ``isolation`` is seeded with the run's data seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from anchor_flow.cli.common import choices, load_model_and_prompts, say, write_results


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of layer counts (e.g. 1,3,5,7)"
        ) from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive layer counts (e.g. 1,3)")
    return counts


def add_parsers(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``isolation`` and ``deep`` on the ``anchor-flow`` sub-command parser."""
    isolation = commands.add_parser(
        "isolation",
        parents=parents,
        help="isolate label words in the first / last layers (paper §2.2)",
        description="Label and word loyalty under label-word vs random isolation; writes "
        "isolation.json, isolation.csv, isolation/ and report.html.",
    )
    isolation.add_argument("--out", type=Path, required=True, help="results folder")
    isolation.add_argument(
        "--layer-counts", type=_counts, default=None,
        help="k values, e.g. 1,3,5,7 (default: those, scaled down for small models)",
    )  # fmt: skip
    isolation.add_argument(
        "--positions", type=choices(("first", "last")), default=("first", "last")
    )
    isolation.add_argument(
        "--controls", type=choices(("label", "random")), default=("label", "random")
    )
    isolation.add_argument(
        "--mode", choices=["renormalise", "zero"], default="renormalise",
        help="renormalise the blocked rows (official code) or set to 0 (paper's wording)",
    )  # fmt: skip
    isolation.add_argument(
        "--top-k", type=int, default=5, help="word loyalty's top-k (paper 5, notebook 10)"
    )
    isolation.add_argument("--quiet", action="store_true", help="no progress bar")

    deep = commands.add_parser(
        "deep",
        parents=parents,
        help="target attention to label words as a classifier, per layer (paper §2.3)",
        description="AUCROC_l and R_l per layer; writes deep.json, deep.csv, deep/ and "
        "report.html.",
    )
    deep.add_argument("--out", type=Path, required=True, help="results folder")
    deep.add_argument("--quiet", action="store_true", help="no progress bar")


def run_isolation_command(args: argparse.Namespace) -> None:
    from anchor_flow.analysis.isolation import IsolationResult, run_isolation

    model, sets, policy, settings = load_model_and_prompts(args)
    runs = []
    for name, prompts in sets.items():
        seed = int(name.removeprefix("seed-"))
        runs.append(
            run_isolation(
                model, prompts, layer_counts=args.layer_counts, positions=args.positions,
                controls=args.controls, mode=args.mode, top_k=args.top_k, seed=seed,
                run_name=name, batch_size=args.batch_size, label_token_policy=policy,
                progress=not args.quiet,
            )
        )  # fmt: skip
    pooled = IsolationResult.concat(runs)
    write_results(args.out, "isolation", pooled, settings,
                  {"isolation.csv": pooled.summary_frame()})  # fmt: skip


def run_deep_command(args: argparse.Namespace) -> None:
    from anchor_flow.analysis.deep import DeepResult, run_deep

    model, sets, policy, settings = load_model_and_prompts(args)
    runs = [
        run_deep(model, prompts, batch_size=args.batch_size, run_name=name,
                 label_token_policy=policy, progress=not args.quiet)
        for name, prompts in sets.items()
    ]  # fmt: skip
    pooled = DeepResult.concat(runs)
    write_results(args.out, "deep", pooled, settings, {"deep.csv": pooled.summary_frame()})


def add_heads_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``heads`` on the ``anchor-flow`` sub-command parser."""
    heads = commands.add_parser(
        "heads",
        parents=parents,
        help="anchor heads: which heads gather into the label words and which read them",
        description="Per-head flows, the top gathering / reading heads and their causal check "
        "against random heads; writes heads.json, heads/ and report.html.",
    )
    heads.add_argument("--out", type=Path, required=True, help="results folder")
    heads.add_argument(
        "--heads-per-kind", type=int, default=None,
        help="heads of each kind to block (default: one per shallow / deep layer)",
    )  # fmt: skip
    heads.add_argument(
        "--mode", choices=["renormalise", "zero"], default="renormalise",
        help="renormalise the blocked rows (official code) or set to 0 (paper's wording)",
    )  # fmt: skip
    heads.add_argument("--top-k", type=int, default=5, help="word loyalty's top-k (paper 5)")
    heads.add_argument("--quiet", action="store_true", help="no progress bar")


def run_heads_command(args: argparse.Namespace) -> None:
    from anchor_flow.analysis.heads import (
        HeadBlockingResult,
        HeadFlows,
        run_head_blocking,
        run_head_flows,
    )
    from anchor_flow.errors import AnchorFlowError
    from anchor_flow.report.folder import render_results_folder
    from anchor_flow.run.heads import RULE, choose_heads, write_heads

    if args.heads_per_kind is not None and args.heads_per_kind < 1:
        raise AnchorFlowError(f"--heads-per-kind {args.heads_per_kind}; expected a positive count")
    if args.top_k < 1:
        raise AnchorFlowError(f"--top-k {args.top_k}; expected a positive integer")
    model, sets, policy, settings = load_model_and_prompts(args)
    flows = HeadFlows.concat([
        run_head_flows(model, prompts, run_name=name, batch_size=args.batch_size,
                       label_token_policy=policy, progress=not args.quiet)
        for name, prompts in sets.items()
    ])  # fmt: skip
    heads = choose_heads(flows, k=args.heads_per_kind)
    blocking = HeadBlockingResult.concat([
        run_head_blocking(model, prompts, gathering_heads=heads["gathering"],
                          reading_heads=heads["reading"], mode=args.mode, top_k=args.top_k,
                          seed=int(name.removeprefix("seed-")), run_name=name,
                          batch_size=args.batch_size, label_token_policy=policy,
                          progress=not args.quiet)
        for name, prompts in sets.items()
    ])  # fmt: skip
    rule = RULE if args.heads_per_kind is None else f"{args.heads_per_kind} per kind, by share"
    write_heads(args.out, flows, blocking, {**settings, "heads_rule": rule})
    render_results_folder(args.out)
    say(f"anchor-flow: wrote {args.out / 'heads.json'}, {args.out / 'heads'} and "
        f"{args.out / 'report.html'}")  # fmt: skip
