"""The ``anchor-flow`` command: a thin layer over the public API.

``anchor-flow saliency`` measures the paper's information flows (§2.1) for a model and a set
of prompts and writes ``saliency.json``, ``flows.csv``, the raw result and ``report.html``.
``anchor-flow report DIR`` re-renders a results folder's report; ``anchor-flow prompts``
writes the built-in toy prompts as JSONL (the format ``--prompts`` reads). Bad input ends
with a one-line error and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]

log = logging.getLogger("anchor_flow")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anchor-flow",
        description="Information-flow analysis of in-context learning (Wang et al., EMNLP 2023).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    saliency = commands.add_parser(
        "saliency",
        help="S_wp / S_pq / S_ww per layer (paper §2.1)",
        description="Saliency flows per layer; writes saliency.json, flows.csv and report.html.",
    )
    saliency.add_argument(
        "--model",
        default="toy-gpt2",
        help="built-in name (toy-gpt2), local Hugging Face folder, or hub name (default: toy-gpt2)",
    )
    saliency.add_argument(
        "--prompts",
        type=Path,
        help="JSONL of prompts (see `anchor-flow prompts`); default: built-in toy prompts",
    )
    saliency.add_argument("--n-prompts", type=int, default=32, help="toy prompts to draw")
    saliency.add_argument("--seed", type=int, default=42, help="seed of the toy prompts")
    saliency.add_argument("--out", type=Path, required=True, help="results folder")
    saliency.add_argument("--batch-size", type=int, default=8)
    saliency.add_argument("--loss", choices=["gold", "predicted"], default="gold")
    saliency.add_argument("--gradient", choices=["pattern", "scores"], default="pattern")
    saliency.add_argument(
        "--head-reduction", choices=["sum_then_abs", "abs_then_sum"], default="sum_then_abs"
    )
    saliency.add_argument(
        "--label-token-policy", choices=["single", "first", "all"], default="single"
    )
    saliency.add_argument(
        "--tl-class", choices=["auto", "hooked", "bridge"], default="auto", help="TL model class"
    )
    saliency.add_argument("--device", default=None, help="e.g. cpu, cuda (default: TL's choice)")
    saliency.add_argument(
        "--keep-maps", action="store_true", help="keep per-layer maps for heatmaps (memory)"
    )
    saliency.add_argument("--quiet", action="store_true", help="no progress bar")

    report = commands.add_parser("report", help="re-render report.html of a results folder")
    report.add_argument("directory", type=Path, help="folder written by `anchor-flow saliency`")

    prompts = commands.add_parser("prompts", help="write the built-in toy prompts as JSONL")
    prompts.add_argument("--out", type=Path, required=True, help="JSONL file to write")
    prompts.add_argument("--n-prompts", type=int, default=32)
    prompts.add_argument("--seed", type=int, default=42)
    return parser


def _positive(name: str, value: int) -> None:
    from anchor_flow.errors import AnchorFlowError

    if value < 1:
        raise AnchorFlowError(f"{name}={value}; expected a positive integer")


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _run_saliency(args: argparse.Namespace) -> None:
    from anchor_flow import __version__
    from anchor_flow.flows import InformationFlow
    from anchor_flow.loading import load_model
    from anchor_flow.prompts import load_prompts, toy_prompts
    from anchor_flow.report import write_saliency_report
    from anchor_flow.saliency import run_saliency
    from anchor_flow.tl_adapter import adapt, tl_version

    _positive("--n-prompts", args.n_prompts)
    _positive("--batch-size", args.batch_size)
    if args.prompts is not None:
        prompts = load_prompts(args.prompts)
        source = str(args.prompts)
    else:
        prompts = toy_prompts(args.n_prompts, seed=args.seed)
        source = f"toy (n={args.n_prompts}, seed={args.seed})"
    model = load_model(args.model, tl_class=args.tl_class, device=args.device)
    result = run_saliency(
        model,
        prompts,
        loss=args.loss,
        gradient=args.gradient,
        head_reduction=args.head_reduction,
        batch_size=args.batch_size,
        keep_maps=args.keep_maps,
        label_token_policy=args.label_token_policy,
        progress=not args.quiet,
    )
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    adapter = adapt(model)
    settings = {
        **result.settings,
        "prompts": source,
        "n_prompts": result.n_prompts,
        "anchor_flow": __version__,
        "transformer_lens": tl_version(),
        "model_source": args.model,
        "device": str(adapter.device),
    }
    flow = InformationFlow(result.flows().values, settings)
    result.save(out / "saliency")
    tmp_csv = out / "flows.csv.tmp"
    flow.to_frame().to_csv(tmp_csv, index=False)
    os.replace(tmp_csv, out / "flows.csv")
    write_saliency_report(out / "report.html", flow, result)
    summary = flow.summary()
    summary["accuracy"] = result.accuracy() if bool((result.gold >= 0).any()) else None
    # Written last: its presence marks a complete run.
    _write_json(out / "saliency.json", summary)
    log.info("wrote %s", out / "saliency.json")
    print(f"anchor-flow: wrote {out / 'saliency.json'} and {out / 'report.html'}")


def _run_prompts(args: argparse.Namespace) -> None:
    from anchor_flow.prompts import save_prompts, toy_prompts

    _positive("--n-prompts", args.n_prompts)
    save_prompts(args.out, toy_prompts(args.n_prompts, seed=args.seed))
    print(f"anchor-flow: wrote {args.n_prompts} prompts to {args.out}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``anchor-flow`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from anchor_flow.errors import AnchorFlowError

    try:
        if args.command == "saliency":
            _run_saliency(args)
        elif args.command == "report":
            from anchor_flow.report import render_results_folder

            print(f"anchor-flow: wrote {render_results_folder(args.directory)}")
        else:
            _run_prompts(args)
    except AnchorFlowError as error:
        message = " ".join(str(error).split())  # one line, whatever the message holds
        print(f"anchor-flow: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("anchor-flow: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
