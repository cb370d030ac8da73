"""The ``anchor-flow`` command: a thin layer over the public API.

Experiment commands (``saliency``, ``evaluate``) share the model options (``--model``,
``--tl-class``, ``--device``) and the task options of the paper's protocol (``--task``,
``--data-dir``, ``--seeds``, ``--n-examples``, ``--shots-per-class``):

* ``anchor-flow saliency`` — S_wp / S_pq / S_ww per layer (§2.1; per-example demonstrations),
  writes ``saliency.json``, ``flows.csv``, the raw results and ``report.html``;
* ``anchor-flow evaluate`` — vanilla ICL accuracy (fixed demonstrations per seed), writes
  ``icl.json`` and ``icl.csv``;
* ``anchor-flow report DIR`` — re-renders a saliency results folder's report;
* ``anchor-flow prompts`` — writes a task's prompts as JSONL (what ``--prompts`` reads);
* ``anchor-flow data`` — saves a task's hub data as a local folder for offline use.

Bad input ends with a one-line error and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

Scheme = Literal["fixed", "per_example"]
Policy = Literal["single", "first", "all"]

__all__ = ["main"]

log = logging.getLogger("anchor_flow")


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers (e.g. 42,43,44)"
        ) from None
    if not seeds:
        raise argparse.ArgumentTypeError("expected at least one seed (e.g. 42)")
    return seeds


def _model_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("model")
    group.add_argument(
        "--model",
        default="toy-gpt2",
        help="built-in name (toy-gpt2), local Hugging Face folder, or hub name (default: toy-gpt2)",
    )
    group.add_argument("--tl-class", choices=["auto", "hooked", "bridge"], default="auto")
    group.add_argument("--device", default=None, help="e.g. cpu, cuda (default: TL's choice)")
    group.add_argument("--batch-size", type=int, default=8)
    return options


def _task_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("task and sampling protocol (paper §0, §7)")
    group.add_argument(
        "--task",
        default="toy-sentiment",
        help="sst2, agnews, trec, emoc, toy-sentiment, or a task description file "
        "(.json/.yaml) (default: toy-sentiment, built in)",
    )
    group.add_argument(
        "--data-dir", type=Path, help="folder with train/test files instead of the hub"
    )
    group.add_argument("--seeds", type=_seeds, default=(42, 43, 44, 45, 46), help="e.g. 42,43")
    group.add_argument("--n-examples", type=int, default=1000, help="test examples per seed")
    group.add_argument("--shots-per-class", type=int, default=1)
    group.add_argument(
        "--fix-class-order", action="store_true", help="demonstrations in class order"
    )
    group.add_argument(
        "--label-token-policy",
        choices=["single", "first", "all"],
        default=None,
        help="multi-token label words (default: the task's; TREC uses 'first' as the paper)",
    )
    group.add_argument(
        "--on-overflow",
        choices=["error", "skip"],
        default="error",
        help="prompts longer than the context: fail (default) or skip and count them, as the "
        "paper dropped prompts over 1024 tokens",
    )
    return options


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anchor-flow",
        description="Information-flow analysis of in-context learning (Wang et al., EMNLP 2023).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    model, task = _model_options(), _task_options()

    saliency = commands.add_parser(
        "saliency",
        parents=[model, task],
        help="S_wp / S_pq / S_ww per layer (paper §2.1)",
        description="Saliency flows per layer; writes saliency.json, flows.csv and report.html.",
    )
    saliency.add_argument("--out", type=Path, required=True, help="results folder")
    saliency.add_argument(
        "--prompts",
        type=Path,
        help="JSONL of prompts (see `anchor-flow prompts`) instead of --task",
    )
    saliency.add_argument("--loss", choices=["gold", "predicted"], default="gold")
    saliency.add_argument("--gradient", choices=["pattern", "scores"], default="pattern")
    saliency.add_argument(
        "--head-reduction", choices=["sum_then_abs", "abs_then_sum"], default="sum_then_abs"
    )
    saliency.add_argument(
        "--keep-maps", action="store_true", help="keep per-layer maps for heatmaps (memory)"
    )
    saliency.add_argument("--quiet", action="store_true", help="no progress bar")

    evaluate = commands.add_parser(
        "evaluate",
        parents=[model, task],
        help="vanilla ICL accuracy over seeds",
        description="Accuracy of the label-restricted prediction, fixed demonstrations per seed.",
    )
    evaluate.add_argument("--out", type=Path, required=True, help="results folder")
    evaluate.add_argument("--top-k", type=int, default=10, help="full-vocabulary tokens kept")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")

    report = commands.add_parser("report", help="re-render report.html of a results folder")
    report.add_argument("directory", type=Path, help="folder written by `anchor-flow saliency`")

    prompts = commands.add_parser(
        "prompts", parents=[task], help="write a task's prompts as JSONL (one seed)"
    )
    prompts.add_argument("--out", type=Path, required=True, help="JSONL file to write")
    prompts.add_argument(
        "--scheme",
        choices=["per_example", "fixed"],
        default="per_example",
        help="demonstrations drawn per example (§2.1) or fixed per seed (§2.2-§3.2)",
    )

    data = commands.add_parser("data", help="save a task's hub data as a local folder")
    data.add_argument("--task", required=True)
    data.add_argument("--out", type=Path, required=True, help="folder to write train/test into")
    return parser


def _positive(name: str, value: int) -> None:
    from anchor_flow.errors import AnchorFlowError

    if value < 1:
        raise AnchorFlowError(f"{name}={value}; expected a positive integer")


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _prompt_sets(
    args: argparse.Namespace, scheme: Scheme, tokenizer: Any, max_length: int | None
) -> tuple[dict[str, list[Any]], Policy, dict[str, Any]]:
    """Prompts per seed (key ``"seed-42"``), the label-token policy and the run's settings."""
    from anchor_flow.data import load_task_data
    from anchor_flow.sampling import fit_to_context, task_prompts
    from anchor_flow.tasks import get_task

    task = get_task(args.task)
    policy = args.label_token_policy or task.label_token_policy
    data = load_task_data(task, data_dir=args.data_dir)
    sets, skipped = {}, {}
    for seed in args.seeds:
        prompts = task_prompts(
            task,
            data.train,
            data.test,
            seed=seed,
            n_examples=args.n_examples,
            shots_per_class=args.shots_per_class,
            scheme=scheme,
            fix_class_order=args.fix_class_order,
        )
        if tokenizer is not None and max_length is not None:
            prompts, skipped[seed] = fit_to_context(
                prompts, tokenizer, max_length, on_overflow=args.on_overflow,
                label_token_policy=policy,
            )  # fmt: skip
        sets[f"seed-{seed}"] = prompts
    settings = {
        "task": task.name,
        "data": data.source,
        "seeds": list(args.seeds),
        "n_examples": args.n_examples,
        "shots_per_class": args.shots_per_class,
        "demonstrations": scheme,
        "fix_class_order": args.fix_class_order,
        "skipped_too_long": skipped,
    }
    return sets, policy, settings


def _check_counts(args: argparse.Namespace) -> None:
    """Validate the integer options before any model or data is loaded."""
    for option in ("batch_size", "n_examples", "shots_per_class", "top_k"):
        if getattr(args, option, None) is not None:
            _positive("--" + option.replace("_", "-"), getattr(args, option))


def _run_saliency(args: argparse.Namespace) -> None:
    from anchor_flow import __version__
    from anchor_flow.flows import InformationFlow
    from anchor_flow.loading import load_model
    from anchor_flow.prompts import load_prompts
    from anchor_flow.report import write_saliency_report
    from anchor_flow.saliency import run_saliency
    from anchor_flow.tl_adapter import adapt, tl_version

    if args.prompts is not None:
        prompt_file = load_prompts(args.prompts)
    model = load_model(args.model, tl_class=args.tl_class, device=args.device)
    adapter = adapt(model)
    if args.prompts is not None:
        sets = {"file": prompt_file}
        policy: Policy = args.label_token_policy or "single"
        run_settings: dict[str, Any] = {"prompts": str(args.prompts)}
    else:
        sets, policy, run_settings = _prompt_sets(
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
    }
    flow = InformationFlow.concat([r.flows() for r in results.values()])
    flow = InformationFlow(flow.values, settings)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for name, result in results.items():
        result.save(out / "saliency" / name)
    tmp_csv = out / "flows.csv.tmp"
    flow.to_frame().to_csv(tmp_csv, index=False)
    os.replace(tmp_csv, out / "flows.csv")
    write_saliency_report(out / "report.html", flow, first)
    summary = flow.summary()
    summary["accuracy"] = {
        name: r.accuracy() if bool((r.gold >= 0).any()) else None for name, r in results.items()
    }
    # Written last: its presence marks a complete run.
    _write_json(out / "saliency.json", summary)
    print(f"anchor-flow: wrote {out / 'saliency.json'} and {out / 'report.html'}")


def _run_evaluate(args: argparse.Namespace) -> None:
    import torch

    from anchor_flow import __version__
    from anchor_flow.evaluation import run_icl
    from anchor_flow.loading import load_model
    from anchor_flow.stats import bootstrap_interval
    from anchor_flow.tl_adapter import adapt, tl_version

    model = load_model(args.model, tl_class=args.tl_class, device=args.device)
    adapter = adapt(model)
    sets, policy, settings = _prompt_sets(args, "fixed", adapter.tokenizer, adapter.n_ctx)
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
            "label_token_policy": policy,
            "anchor_flow": __version__,
            "transformer_lens": tl_version(),
        },
        "per_seed": per_seed,
        "accuracy_mean": float(accuracies.mean()),
        "accuracy_ci95": [float(low[0]), float(high[0])],
    }
    lines = ["run,n_examples,accuracy"] + [
        f"{row['run']},{row['n_examples']},{row['accuracy']}" for row in per_seed
    ]
    tmp_csv = out / "icl.csv.tmp"
    tmp_csv.write_text("\n".join(lines) + "\n")
    os.replace(tmp_csv, out / "icl.csv")
    _write_json(out / "icl.json", summary)
    print(f"anchor-flow: accuracy {summary['accuracy_mean']:.4f}; wrote {out / 'icl.json'}")


def _run_prompts(args: argparse.Namespace) -> None:
    from anchor_flow.prompts import save_prompts

    sets, _, _ = _prompt_sets(args, args.scheme, None, None)
    prompts = [prompt for prompt_set in sets.values() for prompt in prompt_set]
    save_prompts(args.out, prompts)
    print(f"anchor-flow: wrote {len(prompts)} prompts to {args.out}")


def _run_data(args: argparse.Namespace) -> None:
    from anchor_flow.data import load_task_data, save_task_data

    data = load_task_data(args.task)
    folder = save_task_data(data, args.out)
    print(f"anchor-flow: wrote {len(data.train)} train and {len(data.test)} test rows to {folder}")


def _run_report(args: argparse.Namespace) -> None:
    from anchor_flow.report import render_results_folder

    print(f"anchor-flow: wrote {render_results_folder(args.directory)}")


_COMMANDS = {
    "saliency": _run_saliency,
    "evaluate": _run_evaluate,
    "report": _run_report,
    "prompts": _run_prompts,
    "data": _run_data,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``anchor-flow`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from anchor_flow.errors import AnchorFlowError

    if getattr(args, "quiet", False):
        import transformers

        transformers.utils.logging.disable_progress_bar()
    try:
        _check_counts(args)
        _COMMANDS[args.command](args)
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
