"""The ``anchor-flow compare`` command (issue 25; not public): several runs on one page.

Reads the results folders (never a model) into :func:`anchor_flow.report.compare.compare_runs`
and writes one self-contained HTML page. Every folder is read before anything is written: a
folder that is not a results folder of ``anchor-flow run`` ends the command with one line and
exit code 2, and ``--out`` is left as it was.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from anchor_flow.errors import AnchorFlowError

_MARK = '<meta name="anchor-flow-figures"'


def add_parsers(commands: Any) -> None:
    """Register ``compare`` on the ``anchor-flow`` sub-command parser."""
    compare = commands.add_parser(
        "compare",
        help="compare results folders of anchor-flow run on one HTML page",
        description="Findings, flows and AUCROC_l over relative depth, isolation, the "
        "applications' headline numbers and anchor heads of several runs on one "
        "self-contained HTML page. Reads the folders only; runs no model.",
    )
    compare.add_argument("directories", type=Path, nargs="+", metavar="DIR",
                         help="results folders written by `anchor-flow run`")  # fmt: skip
    compare.add_argument("--out", type=Path, required=True, metavar="FILE.html",
                         help="the HTML page to write")  # fmt: skip


def check_page_out(out: Path) -> None:
    """Refuse an ``--out`` that is a folder, or a file that anchor-flow did not write."""
    if out.is_dir():
        raise AnchorFlowError(f"--out {str(out)!r} is a folder; expected an HTML file path")
    if out.exists():
        try:
            head = out.read_bytes()[:4096].decode("utf-8", errors="replace")
        except OSError as error:
            raise AnchorFlowError(f"--out {str(out)!r} cannot be read: {error}") from None
        if _MARK not in head:
            raise AnchorFlowError(
                f"--out {str(out)!r} exists and is not a page written by anchor-flow; expected "
                "a new file or a previous comparison page (it is left as it is)"
            )


def run_compare_command(args: argparse.Namespace) -> None:
    from anchor_flow.cli.common import say
    from anchor_flow.report.compare import compare_runs, write_comparison

    check_page_out(args.out)
    comparison = compare_runs(args.directories)
    path = write_comparison(comparison, args.out)
    lacking = comparison.missing
    if len(lacking):
        runs = ", ".join(dict.fromkeys(lacking["run"]))
        say(f"anchor-flow: {len(lacking)} thing(s) missing in {runs} (listed on the page)")
    say(f"anchor-flow: wrote {path}")
