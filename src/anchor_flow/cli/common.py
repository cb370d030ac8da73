"""Options and helpers shared by the ``anchor-flow`` commands (not public)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Literal

Scheme = Literal["fixed", "per_example"]
Policy = Literal["single", "first", "all"]


def say(message: str) -> None:
    """One line for the user on stdout (the CLI's only output besides errors)."""
    sys.stdout.write(message + "\n")


def seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers (e.g. 42,43,44)"
        ) from None
    if not seeds:
        raise argparse.ArgumentTypeError("expected at least one seed (e.g. 42)")
    return seeds


def model_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("model")
    group.add_argument(
        "--model",
        default="demo",
        help="built-in name (demo, planted-anchor, planted-formatting, toy-gpt2), local Hugging "
        "Face folder, or hub name (default: demo, the embedded trained model)",
    )
    group.add_argument("--tl-class", choices=["auto", "hooked", "bridge"], default="auto")
    group.add_argument("--device", default=None, help="e.g. cpu, cuda (default: TL's choice)")
    group.add_argument(
        "--device-map", type=device_map, default=None, metavar="auto|FILE.json",
        help="split a bridge model over devices: 'auto' (accelerate) or a JSON file "
        "{module name: device}, e.g. {\"transformer.h.0\": 0, \"lm_head\": \"cpu\"}",
    )  # fmt: skip
    group.add_argument(
        "--dtype", choices=["float32", "float16", "bfloat16"], default=None,
        help="model precision (default: float32)",
    )  # fmt: skip
    group.add_argument("--batch-size", type=int, default=8)
    group.add_argument(
        "--prepend-bos", choices=["auto", "yes", "no"], default="auto",
        help="start prompts with BOS: auto = as the checkpoint's own tokenizer does (GPT-2: "
        "no, as the paper; Llama-style: yes), or force it (default: auto)",
    )  # fmt: skip
    return options


def task_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("task and sampling protocol (paper §0, §7)")
    group.add_argument(
        "--task",
        default="demo-k3",
        help="sst2, agnews, trec, emoc, demo-k2/k3/k4 (the demo model's), synthetic-k2/k3/k4 "
        "(the planted models'), toy-sentiment, or a task description file (.json/.yaml) "
        "(default: demo-k3)",
    )
    group.add_argument(
        "--data-dir", type=Path, help="folder with train/test files instead of the hub"
    )
    group.add_argument("--seeds", type=seeds, default=(42, 43, 44, 45, 46), help="e.g. 42,43")
    group.add_argument("--n-examples", type=int, default=1000, help="test examples per seed")
    group.add_argument("--shots-per-class", type=int, default=1)
    group.add_argument(
        "--fix-class-order", action="store_true", help="demonstrations in class order"
    )
    group.add_argument(
        "--label-token-policy",
        choices=["single", "first", "all"],
        default=None,
        help="multi-token label words (default: the task's; the paper's four tasks use 'first', "
        "the official code's first-token rule)",
    )
    group.add_argument(
        "--on-overflow",
        choices=["error", "skip"],
        default="error",
        help="prompts longer than the context: fail (default) or skip and count them, as the "
        "paper dropped prompts over 1024 tokens",
    )
    return options


def add_compression_options(parser: argparse.ArgumentParser, engine_flag: str) -> None:
    """``--position-policy`` and the engine option (``engine_flag``) of compressed prompts."""
    parser.add_argument(
        "--position-policy", choices=["original", "compact", "restart"], default="original",
        help="compressed queries' positions: continue from the full context (default), from "
        "the kept positions, or from 0 (official GPT2-XL code)",
    )  # fmt: skip
    parser.add_argument(
        engine_flag, choices=["auto", "cache", "mask", "fast"], default="auto",
        help="how compressed prompts run: a key/value cache per context, one masked "
        "batched forward ('original' positions only), or the cache without hooks (fast: "
        "the underlying Hugging Face / TL forward); the results are the same (default: auto)",
    )  # fmt: skip


def positive(name: str, value: int) -> None:
    from anchor_flow.errors import AnchorFlowError

    if value < 1:
        raise AnchorFlowError(f"{name}={value}; expected a positive integer")


def prompt_sets(
    args: argparse.Namespace, scheme: Scheme, tokenizer: Any, max_length: int | None
) -> tuple[dict[str, list[Any]], Policy, dict[str, Any]]:
    """Prompts per seed (key ``"seed-42"``), the label-token policy and the run's settings."""
    from anchor_flow.icl.data import load_task_data
    from anchor_flow.icl.tasks import get_task
    from anchor_flow.run.steps import experiment_prompts

    task = get_task(args.task)
    policy = args.label_token_policy or task.label_token_policy
    data = load_task_data(task, data_dir=args.data_dir)
    sets, skipped = experiment_prompts(task, data, args, scheme, tokenizer, max_length, policy)
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


def check_counts(args: argparse.Namespace) -> None:
    """Validate the integer options before any model or data is loaded."""
    for option in ("batch_size", "n_examples", "shots_per_class", "top_k"):
        if getattr(args, option, None) is not None:
            positive("--" + option.replace("_", "-"), getattr(args, option))


def choices(allowed: tuple[str, ...]) -> Any:
    """An argparse type: a comma-separated, non-empty subset of ``allowed``."""

    def parse(text: str) -> tuple[str, ...]:
        picked = tuple(part.strip() for part in text.split(",") if part.strip())
        bad = [p for p in picked if p not in allowed]
        if bad or not picked:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected a comma-separated subset of {', '.join(allowed)}"
            )
        return picked

    return parse


def device_map(text: str) -> str | dict[str, Any]:
    """``--device-map``: ``auto`` or a JSON file holding ``{module name: device}``."""
    if text == "auto":
        return text
    try:
        value = json.loads(Path(text).read_text())
    except (OSError, ValueError) as error:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not 'auto' nor a readable JSON file ({type(error).__name__}); "
            'expected e.g. {"transformer.h.0": 0, "lm_head": "cpu"}'
        ) from error
    if not isinstance(value, dict) or not value:
        raise argparse.ArgumentTypeError(
            f"{text!r} holds {type(value).__name__}; expected a non-empty JSON object "
            "{module name: device}"
        )
    return value


def load_model_for(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    """The model of ``--model/--tl-class/--device``, its adapter and the version settings."""
    import torch

    from anchor_flow._version import __version__
    from anchor_flow.models.loading import load_model
    from anchor_flow.models.tl_adapter import adapt, tl_version

    dtype = None if args.dtype is None else getattr(torch, args.dtype)
    model = load_model(
        args.model, tl_class=args.tl_class, device=args.device, dtype=dtype,
        device_map=args.device_map,
    )  # fmt: skip
    adapter = adapt(model)
    settings = {
        "prepend_bos": apply_prepend_bos(model, args),
        "model_source": args.model,
        "tl_class": adapter.kind,
        "anchor_flow": __version__,
        "transformer_lens": tl_version(),
        "device": str(adapter.device),
        **({"device_map": args.device_map} if args.device_map is not None else {}),
    }
    return model, adapter, settings


def apply_prepend_bos(model: Any, args: argparse.Namespace) -> bool:
    """``--prepend-bos`` for the model this command loaded; returns the resolved choice."""
    from anchor_flow.models.bos import (
        prepend_bos_option,
        remember_prepend_bos,
        resolved_prepend_bos,
    )

    forced = prepend_bos_option(getattr(args, "prepend_bos", "auto"))
    if forced is not None:
        remember_prepend_bos(model, forced)
    return resolved_prepend_bos(model, forced)


def load_model_and_prompts(
    args: argparse.Namespace,
) -> tuple[Any, dict[str, list[Any]], Policy, dict[str, Any]]:
    """The model, prompts per seed (demonstrations fixed per seed), policy and settings."""
    model, adapter, settings = load_model_for(args)
    sets, policy, prompt_settings = prompt_sets(args, "fixed", adapter.tokenizer, adapter.n_ctx)
    return model, sets, policy, {**prompt_settings, **settings, "label_token_policy": policy}


def write_results(
    out: Path, stem: str, pooled: Any, settings: dict[str, Any], frames: dict[str, Any]
) -> None:
    """Save a pooled result with the run's settings, its CSVs and ``<stem>.json``, then
    re-render ``report.html`` from everything in ``out``."""
    from anchor_flow.report.folder import render_results_folder
    from anchor_flow.run.steps import save_pooled

    save_pooled(out, stem, pooled, settings, frames)
    render_results_folder(out)
    say(f"anchor-flow: wrote {out / (stem + '.json')} and {out / 'report.html'}")
