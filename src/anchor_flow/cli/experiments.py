"""The ``anchor-flow isolation`` and ``anchor-flow deep`` commands (paper §2.2, §2.3; not public).

Both use the paper's protocol for these experiments: demonstrations fixed per seed
(scheme "fixed"), one run per seed, runs pooled for means over seeds with intervals. The
random control of ``isolation`` is seeded with the run's data seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from anchor_flow.cli.common import prompt_sets, say, write_frame, write_json


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


def _choices(allowed: tuple[str, ...]) -> Any:
    def parse(text: str) -> tuple[str, ...]:
        picked = tuple(part.strip() for part in text.split(",") if part.strip())
        bad = [p for p in picked if p not in allowed]
        if bad or not picked:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected a comma-separated subset of {', '.join(allowed)}"
            )
        return picked

    return parse


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
        "--positions", type=_choices(("first", "last")), default=("first", "last")
    )
    isolation.add_argument(
        "--controls", type=_choices(("label", "random")), default=("label", "random")
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


def _load(args: argparse.Namespace) -> tuple[Any, Any, dict[str, list[Any]], Any, dict[str, Any]]:
    from anchor_flow import __version__
    from anchor_flow.loading import load_model
    from anchor_flow.tl_adapter import adapt, tl_version

    model = load_model(args.model, tl_class=args.tl_class, device=args.device)
    adapter = adapt(model)
    sets, policy, settings = prompt_sets(args, "fixed", adapter.tokenizer, adapter.n_ctx)
    settings = {
        **settings, "model_source": args.model, "tl_class": adapter.kind,
        "label_token_policy": policy, "anchor_flow": __version__,
        "transformer_lens": tl_version(), "device": str(adapter.device),
    }  # fmt: skip
    return model, adapter, sets, policy, settings


def run_isolation_command(args: argparse.Namespace) -> None:
    from anchor_flow.isolation import IsolationResult, run_isolation
    from anchor_flow.report import render_results_folder

    model, _, sets, policy, settings = _load(args)
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
    pooled = IsolationResult(**{**vars(pooled), "settings": {**pooled.settings, **settings}})
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    pooled.save(out / "isolation")
    write_frame(out / "isolation.csv", pooled.summary_frame())
    write_json(out / "isolation.json", pooled.summary())
    render_results_folder(out)
    say(f"anchor-flow: wrote {out / 'isolation.json'} and {out / 'report.html'}")


def run_deep_command(args: argparse.Namespace) -> None:
    from anchor_flow.deep import DeepResult, run_deep
    from anchor_flow.report import render_results_folder

    model, _, sets, policy, settings = _load(args)
    runs = [
        run_deep(model, prompts, batch_size=args.batch_size, run_name=name,
                 label_token_policy=policy, progress=not args.quiet)
        for name, prompts in sets.items()
    ]  # fmt: skip
    pooled = DeepResult.concat(runs)
    pooled = DeepResult(**{**vars(pooled), "settings": {**pooled.settings, **settings}})
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    pooled.save(out / "deep")
    write_frame(out / "deep.csv", pooled.summary_frame())
    write_json(out / "deep.json", pooled.summary())
    render_results_folder(out)
    say(f"anchor-flow: wrote {out / 'deep.json'} and {out / 'report.html'}")
