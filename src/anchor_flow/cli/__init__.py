"""The ``anchor-flow`` command: a thin layer over the public API.

``anchor-flow run`` is the main job: every experiment below for one model and task, into one
results folder (``results.json``, one CSV per table, ``report.html``), resumable.

Experiment commands (``saliency``, ``evaluate``, ``isolation``, ``deep``) share the model
options (``--model``, ``--tl-class``, ``--device``) and the task options of the paper's
protocol (``--task``, ``--data-dir``, ``--seeds``, ``--n-examples``, ``--shots-per-class``):

* ``anchor-flow saliency`` — S_wp / S_pq / S_ww per layer (§2.1; per-example demonstrations),
  writes ``saliency.json``, ``flows.csv``, the raw results and ``report.html``;
* ``anchor-flow evaluate`` — vanilla ICL accuracy (fixed demonstrations per seed), writes
  ``icl.json`` and ``icl.csv``;
* ``anchor-flow isolation`` — label-word isolation in the first / last layers (§2.2), writes
  ``isolation.json``, ``isolation.csv``, ``isolation/`` and ``report.html``;
* ``anchor-flow deep`` — AUCROC_l and R_l per layer (§2.3), writes ``deep.json``,
  ``deep.csv``, ``deep/`` and ``report.html``;
* ``anchor-flow heads`` — anchor heads: per-head flows, the top gathering / reading heads and
  their causal check (issue 24), writes ``heads.json``, ``heads/`` and ``report.html``;
* ``anchor-flow reweight`` — anchor re-weighting vs vanilla 1-shot / k-shot ICL (§3.1), writes
  ``reweighting.json``, ``reweighting.csv``, ``reweighting/`` and ``report.html``;
* ``anchor-flow diagnose`` — anchor distances vs real confusion (§3.3), writes
  ``diagnosis.json``, ``diagnosis.csv``, ``diagnosis/`` and ``report.html``;
* ``anchor-flow report DIR`` — re-renders a results folder's report (all parts present);
* ``anchor-flow compare DIR... --out FILE.html`` — several runs on one page (findings, flows
  and AUCROC_l over relative depth, isolation, applications, anchor heads); runs no model;
* ``anchor-flow prompts`` — writes a task's prompts as JSONL (what ``--prompts`` reads);
* ``anchor-flow data`` — saves a task's hub data as a local folder for offline use.

Bad input ends with a one-line error and exit code 2, never a traceback. ``anchor-flow run``
also runs data-parallel under ``torchrun``/``accelerate launch`` (``python -m anchor_flow.cli``);
a bad input on any rank ends every rank that way.

May import: analysis, applications, icl, models, report, results, run, testbeds.
Never imported by: analysis, applications, icl, models, report, results, run, testbeds.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from anchor_flow.cli import (
    applications,
    compare,
    compression,
    core,
    experiments,
    run,
    validate,
)
from anchor_flow.cli.common import check_counts, model_options, task_options

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump): ``anchor-flow run: error: ...``."""

    def error(self, message: str) -> NoReturn:
        line = f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} -h)\n"
        self.exit(2, line if _leader() else None)  # under torchrun: rank 0's line alone


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="anchor-flow",
        description="Information-flow analysis of in-context learning (Wang et al., EMNLP 2023).",
    )
    commands: Any = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    model, task = model_options(), task_options()

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
        "--seed-aggregation", choices=["per_seed", "pooled"], default="per_seed",
        help="normalise each seed's mean flows, then average (the paper's notebook; default), "
        "or pool the prompts of all seeds first",
    )  # fmt: skip
    saliency.add_argument(
        "--keep-maps", action="store_true", help="keep per-layer maps for heatmaps (memory)"
    )
    saliency.add_argument(
        "--memory", choices=["keep", "recompute"], default="keep",
        help="recompute: re-run each block in the backward instead of keeping every layer's "
        "attention patterns (long contexts: less memory, ~1/3 more compute, equal results)",
    )  # fmt: skip
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

    experiments.add_parsers(commands, [model, task])
    experiments.add_heads_parser(commands, [model, task])
    applications.add_parsers(commands, [model, task])
    compression.add_parsers(commands, [model, task])
    run.add_parsers(commands, [model_options(), task_options()])  # own copies: own defaults

    report = commands.add_parser("report", help="re-render report.html of a results folder")
    report.add_argument(
        "directory", type=Path, help="folder written by `anchor-flow saliency/isolation/deep`"
    )

    compare.add_parsers(commands)

    prompts = commands.add_parser(
        "prompts", parents=[task], help="write a task's prompts as JSONL (one seed)"
    )
    prompts.add_argument("--out", type=Path, required=True,
                         help="JSONL file to write (an existing file of other content is "
                         "refused)")  # fmt: skip
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


_COMMANDS = {
    "saliency": core.run_saliency_command,
    "evaluate": core.run_evaluate_command,
    "isolation": experiments.run_isolation_command,
    "deep": experiments.run_deep_command,
    "heads": experiments.run_heads_command,
    "reweight": applications.run_reweight_command,
    "diagnose": applications.run_diagnose_command,
    "compress": compression.run_compress_command,
    "run": run.run_run_command,
    "report": core.run_report_command,
    "compare": compare.run_compare_command,
    "prompts": core.run_prompts_command,
    "data": core.run_data_command,
}


class Terminated(KeyboardInterrupt):
    """SIGTERM (what schedulers and torchrun send): unwinds like Ctrl-C, so the running step
    is recorded as interrupted and its partial files removed; exit code 143."""


def _terminate(signum: int, _frame: object) -> None:
    raise Terminated(f"{signal.Signals(signum).name}, from a scheduler or launcher")


_WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``anchor-flow`` console script; returns the exit code."""
    if threading.current_thread() is not threading.main_thread():
        return _main(argv)
    previous = signal.signal(signal.SIGTERM, _terminate)
    code: int | None = None
    try:
        try:
            code = _main(argv)
            return code
        finally:
            signal.signal(signal.SIGTERM, previous)
    except Terminated:
        # A SIGTERM that lands while main is already returning (a launcher stopping the other
        # ranks after one died): the outcome was reported; no traceback, the handler restored.
        signal.signal(signal.SIGTERM, previous)
        return code if code is not None else 143


def _default_task_hint(
    error: Exception, args: argparse.Namespace, argv: Sequence[str] | None
) -> str:
    """A label-word refusal on the default task, which is the demo model's: name the fix."""
    from anchor_flow.errors import LabelWordError

    words = list(sys.argv[1:] if argv is None else argv)
    given = any(
        w in ("--task", "--prompts") or w.startswith(("--task=", "--prompts=")) for w in words
    )
    if not isinstance(error, LabelWordError) or given or not hasattr(args, "task"):
        return ""
    return (
        f" (no --task was given, and the default {args.task!r} is the demo model's task: the "
        "planted models take --task synthetic-k3, toy-gpt2 --task toy-sentiment, a checkpoint "
        "a paper task such as --task sst2)"
    )


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from anchor_flow.errors import AnchorFlowError
    from anchor_flow.run.distributed import DistributedRunError

    try:
        if getattr(args, "quiet", False):  # (inside: Ctrl-C during start-up is one line too)
            import transformers

            transformers.utils.logging.disable_progress_bar()
        check_counts(args)
        validate.check_args(args)
        _COMMANDS[args.command](args)
    except AnchorFlowError as error:  # every rank of a torchrun run has it: rank 0 says it
        message = " ".join(str(error).split())  # one line, whatever the message holds
        message = message.replace("restart=True (--restart)", "--restart")  # the CLI's word
        _say(f"anchor-flow: error: {message}{_default_task_hint(error, args, argv)}\n")
        return 2
    except DistributedRunError as error:  # another rank failed; rank 0 shows its traceback
        _say(f"anchor-flow: error: {error}\n{error.trace}")
        return 1
    except OSError as error:  # a full disk, a read-only folder: what write_atomic did not see
        if error.errno not in _WRITE_ERRORS:
            raise
        where = f" {error.filename!r}" if error.filename else ""
        sys.stderr.write(f"anchor-flow: error: cannot change{where} ({error.strerror}); free "
                         "space or make the folder writable, then rerun the command\n")  # fmt: skip
        return 2
    except RuntimeError:  # a collective failed: a rank died (else a bug: the traceback)
        if not _lost_rank():
            raise
        return 1
    except Terminated:
        if not _lost_rank():  # the launcher stops the others when one rank died
            _say("anchor-flow: terminated (SIGTERM); rerun the command to resume\n")
        return 143
    except KeyboardInterrupt:
        sys.stderr.write("anchor-flow: interrupted\n")
        return 130
    return 0


def _leader() -> bool:
    return os.environ.get("RANK", "0") in ("", "0")


def _say(text: str) -> None:
    if _leader():
        sys.stderr.write(text)


def _lost_rank() -> bool:
    """Under torchrun: say which rank died (rank 0 only), if one did."""
    from anchor_flow.run.distributed import lost_ranks

    lost = lost_ranks()
    if lost:
        _say(f"anchor-flow: error: {', '.join(lost)} died (killed, or out of memory); the "
             "others stopped, the folder is consistent: rerun the command to resume\n")  # fmt: skip
    return bool(lost)


if __name__ == "__main__":
    raise SystemExit(main())
