"""The ``anchor-flow run`` command: the whole paper for one model × task (not public).

A thin layer over :func:`anchor_flow.run.pipeline.run_experiments`: parse the options into a
:class:`~anchor_flow.run.pipeline.RunConfig`, load the model, run, say where the results are.
With no arguments it runs every experiment on the embedded demo model and its task, offline.
Under ``torchrun``/``accelerate launch`` each process is one rank of a data-parallel run
(:mod:`anchor_flow.run.distributed`): rank 0 prints and writes, the others only compute.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Any

from anchor_flow.cli.common import add_compression_options, choices, load_model_for, say
from anchor_flow.run.config import EXPERIMENTS

# The paper's 1000 test examples per seed; the built-in models are small enough that fewer
# examples give tight intervals, and the default run then takes minutes on a laptop CPU.
_PAPER_EXAMPLES, _BUILTIN_EXAMPLES = 1000, 100


def add_parsers(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``run`` on the ``anchor-flow`` sub-command parser."""
    run = commands.add_parser(
        "run",
        parents=parents,
        help="every experiment of the paper for one model and task (the main job)",
        description="Saliency flows, isolation, deep-layer AUCROC_l / R_l, anchor "
        "re-weighting, anchor-only compression and error diagnosis; writes results.json, one "
        "CSV per table and report.html. Rerunning into the same folder resumes.",
    )
    run.set_defaults(n_examples=None)
    for action in run._actions:  # this command's own copy of the task options
        if action.dest == "n_examples":
            action.help = (f"test examples per seed (default: {_PAPER_EXAMPLES}, the paper's; "
                           f"{_BUILTIN_EXAMPLES} for the built-in models)")  # fmt: skip
        elif action.dest == "seeds":
            action.help = "e.g. 42,43 (default: the paper's 42,43,44,45,46)"
    run.add_argument(
        "--out", type=Path, default=None,
        help="results folder (default: results/<model>-<task>)",
    )  # fmt: skip
    run.add_argument(
        "--experiments", type=choices(EXPERIMENTS), default=EXPERIMENTS,
        help=f"comma-separated subset of {','.join(EXPERIMENTS)} (default: all)",
    )  # fmt: skip
    run.add_argument(
        "--restart", action="store_true", help="delete the folder's previous run and start over"
    )
    run.add_argument("--top-trials", type=int, default=20, help="Hidden_random-top sets (20)")
    add_compression_options(run, "--compression-engine")
    run.add_argument("--epochs", type=int, default=10, help="re-weighting epochs (10)")
    run.add_argument("--n-components", type=int, default=10, help="diagnosis: PCA's M (paper: 10)")
    run.add_argument(
        "--seed-aggregation", choices=["per_seed", "pooled"], default="per_seed",
        help="saliency flows: normalise each seed's mean, then average (the paper's; default) "
        "or pool the prompts of all seeds first",
    )  # fmt: skip
    run.add_argument(
        "--saliency-memory", choices=["keep", "recompute"], default="keep",
        help="saliency backward: keep every layer's attention patterns (default) or recompute "
        "each block (long contexts: less memory, ~1/3 more compute, equal results)",
    )  # fmt: skip
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument(
        "--null-model", choices=("auto", "random-init", "none"), default="auto",
        help="control network for the findings: the same architecture re-initialised "
        "(random-init), or none (default auto: random-init up to 500M parameters)",
    )  # fmt: skip


def _folder_name(text: str) -> str:
    name = Path(text.rstrip("/")).name or text
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "model"


def run_run_command(args: argparse.Namespace) -> None:
    from anchor_flow.cli.common import positive
    from anchor_flow.models.loading import builtin_model_names
    from anchor_flow.run.config import RunConfig
    from anchor_flow.run.distributed import start_ranks, stop_ranks

    for option in ("top_trials", "epochs", "n_components"):
        positive("--" + option.replace("_", "-"), getattr(args, option))
    n_examples = args.n_examples
    if n_examples is None:
        builtin = args.model in builtin_model_names()
        n_examples = _BUILTIN_EXAMPLES if builtin else _PAPER_EXAMPLES
    config = RunConfig(
        task=str(args.task), seeds=tuple(args.seeds), n_examples=n_examples,
        shots_per_class=args.shots_per_class, fix_class_order=args.fix_class_order,
        label_token_policy=args.label_token_policy, prepend_bos=args.prepend_bos,
        seed_aggregation=args.seed_aggregation, on_overflow=args.on_overflow,
        data_dir=None if args.data_dir is None else str(args.data_dir),
        batch_size=args.batch_size, experiments=tuple(args.experiments),
        top_trials=args.top_trials, reweighting_epochs=args.epochs,
        n_components=args.n_components, position_policy=args.position_policy,
        compression_engine=args.compression_engine, device_map=args.device_map,
        saliency_memory=args.saliency_memory, null_model=args.null_model,
    )  # fmt: skip
    out = args.out or Path("results") / f"{_folder_name(args.model)}-{_folder_name(args.task)}"
    ranks = start_ranks()  # one process, or this rank of torchrun / accelerate launch
    try:
        _run_on_ranks(args, config, out, ranks)
    finally:
        if ranks.parallel:
            stop_ranks()


def _run_on_ranks(args: argparse.Namespace, config: Any, out: Path, ranks: Any) -> None:
    from anchor_flow.run.distributed import rank_device
    from anchor_flow.run.folder import check_out
    from anchor_flow.run.pipeline import run_experiments

    tell = say if ranks.leader else (lambda _line: None)  # the other ranks print nothing
    # Before the model loads: a refused folder costs nothing. Only rank 0 looks at the folder;
    # a failure on any rank ends every rank with the same one-line error.
    ranks.agree(lambda: check_out(out) if ranks.leader else None)
    clock = time.perf_counter()

    def load() -> Any:
        args.device = rank_device(args.device, args.device_map, ranks)  # cuda:LOCAL_RANK
        return load_model_for(args)[0]

    model = ranks.agree(load)
    workers = f" on {ranks.world_size} ranks" if ranks.parallel else ""
    tell(f"anchor-flow: model {args.model}, task {args.task}, {len(config.seeds)} seeds x "
         f"{config.n_examples} examples{workers} -> {out}")  # fmt: skip
    run_experiments(
        model, out, config, model_source=str(args.model), restart=args.restart,
        progress=not args.quiet, on_event=lambda line: tell(f"anchor-flow: {line}"), ranks=ranks,
    )  # fmt: skip
    seconds = time.perf_counter() - clock
    tell(f"anchor-flow: finished in {seconds:.0f} s; wrote {out / 'results.json'} and "
         f"{out / 'report.html'}")  # fmt: skip
