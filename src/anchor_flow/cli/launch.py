"""``python -m anchor_flow.cli.launch``: torchrun for ``anchor-flow``, with its exit codes.

torchrun's agent turns any rank's non-zero exit into its own ``ChildFailedError``: a Python
traceback and a summary of 30+ lines on stderr, and exit code 1, whatever the ranks said. A
child cannot change what its launcher prints, so this module is the launcher: it takes
torchrun's own options, then the ``anchor-flow`` command line, runs torchrun's launch
function in this process with its log quiet, and exits with the code of the rank that failed
first (2 for a bad input: rank 0 has printed the one-line error; 143 for SIGTERM; 1 when a
rank died, which rank 0 names). Example::

    python -m anchor_flow.cli.launch --nproc-per-node 2 run --model gpt2-xl --task sst2

is ``torchrun --nproc-per-node 2 -m anchor_flow.cli run --model gpt2-xl --task sst2``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence


def _split(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """torchrun's options, and the anchor-flow command line (from its command on)."""
    from anchor_flow.cli import _COMMANDS

    for index, word in enumerate(argv):
        if word in _COMMANDS:
            return list(argv[:index]), list(argv[index:])
    return list(argv), []


def main(argv: Sequence[str] | None = None) -> int:
    """Launch the ranks; the exit code of the first rank that failed (0 when none did)."""
    torchrun, command = _split(sys.argv[1:] if argv is None else argv)
    if not command:
        sys.stderr.write("anchor-flow launch: error: expected torchrun options, then an "
                         "anchor-flow command, e.g. --nproc-per-node 2 run\n")  # fmt: skip
        return 2
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    for name in ("torch.distributed.elastic", "torch.distributed.run"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # the ranks say what went wrong
    args = get_args_parser().parse_args([*torchrun, "-m", "anchor_flow.cli", *command])
    try:
        run(args)
    except ChildFailedError as error:
        _, failure = error.get_first_failure()
        code = failure.exitcode
        return code if code > 0 else 128 - code  # a signal -N: 128 + N, as a shell says
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
