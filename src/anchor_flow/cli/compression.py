"""The ``anchor-flow compress`` command (paper §3.2, Table 2; not public).

Demonstrations fixed per seed (scheme "fixed", so the queries of a seed share one compressed
context), one run per seed, runs pooled for means over seeds with intervals. Writes
``compression.json`` (atomically), ``compression.csv``, ``compression_trials.csv``,
``compression/`` (the raw result) and ``report.html``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from anchor_flow.cli.common import (
    add_compression_options,
    choices,
    load_model_and_prompts,
    write_results,
)

_METHODS = ("text_anchor", "hidden_random", "hidden_random_top", "hidden_anchor")


def add_parsers(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``compress`` on the ``anchor-flow`` sub-command parser."""
    compress = commands.add_parser(
        "compress",
        parents=parents,
        help="anchor-only context compression vs baselines (paper §3.2, Table 2)",
        description="Label loyalty, word loyalty and accuracy of Hidden_anchor, Text_anchor, "
        "Hidden_random and Hidden_random-top against full-prompt ICL; writes "
        "compression.json, compression.csv, compression/ and report.html.",
    )
    compress.add_argument("--out", type=Path, required=True, help="results folder")
    compress.add_argument(
        "--methods", type=choices(_METHODS), default=_METHODS,
        help=f"comma-separated subset of {', '.join(_METHODS)}",
    )  # fmt: skip
    compress.add_argument(
        "--no-bos", action="store_true", help="drop a BOS token's keys/values too (official)"
    )
    add_compression_options(compress, "--engine")
    compress.add_argument("--top-trials", type=int, default=20, help="Hidden_random-top sets")
    compress.add_argument("--top-k", type=int, default=5, help="word loyalty's top-k (paper 5)")
    compress.add_argument("--quiet", action="store_true", help="no progress bar")


def run_compress_command(args: argparse.Namespace) -> None:
    from anchor_flow.applications.compression.baselines import CompressionResult, run_compression
    from anchor_flow.errors import AnchorFlowError

    if args.top_trials < 1:
        raise AnchorFlowError(f"--top-trials={args.top_trials}; expected a positive integer")
    model, sets, policy, settings = load_model_and_prompts(args)
    runs = [
        run_compression(
            model, prompts, methods=args.methods, position_policy=args.position_policy,
            keep_bos=not args.no_bos, seed=int(name.removeprefix("seed-")),
            n_top_trials=args.top_trials, top_k=args.top_k, batch_size=args.batch_size,
            run_name=name, label_token_policy=policy, engine=args.engine,
            progress=not args.quiet,
        )
        for name, prompts in sets.items()
    ]  # fmt: skip
    pooled = CompressionResult.concat(runs)
    frames = {
        "compression.csv": pooled.summary_frame(),
        "compression_trials.csv": pooled.trials_frame(),
    }
    write_results(args.out, "compression", pooled, {**settings, "engine": args.engine}, frames)
