"""Checks of the command line that need no model and no data, run before anything else (not
public): the device, the seeds, and ``--out`` of every command that writes a results folder.

Each failure is an :class:`~anchor_flow.errors.AnchorFlowError` (one line, exit code 2) and
leaves the disk as it was.
"""

from __future__ import annotations

import argparse
import os

from anchor_flow.errors import AnchorFlowError

# Commands whose --out is a results folder, and the files that mark one written by anchor-flow.
_FOLDER_COMMANDS = ("saliency", "evaluate", "isolation", "deep", "reweight", "diagnose",
                    "compress", "heads")  # fmt: skip
_OWNED_IF = ("results.json", "report.html", "icl.json")
SEED_RANGE = (0, 2**32 - 1)


def check_device(text: str) -> None:
    """Refuse a device this PyTorch build cannot use, e.g. ``cuda`` on a CPU-only build."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise AnchorFlowError(
            f"--device {text!r} is not a PyTorch device; expected cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            raise AnchorFlowError(
                f"--device {text!r}: this PyTorch build sees {count} CUDA device(s) "
                f"(torch {torch.__version__}); use --device cpu"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise AnchorFlowError(f"--device {text!r}: MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise AnchorFlowError(f"--device {text!r}: expected cpu, cuda, cuda:N or mps")


def check_seeds(seeds: tuple[int, ...]) -> None:
    """Refuse repeated seeds and seeds outside 0..2**32-1 (what numpy and torch accept)."""
    text = ",".join(map(str, seeds))
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise AnchorFlowError(
            f"seeds={text} repeats {', '.join(map(str, repeated))}; expected distinct seeds"
        )
    low, high = SEED_RANGE
    if any(not low <= s <= high for s in seeds):
        raise AnchorFlowError(f"seeds={text}; expected seeds in {low}..{high}")


def check_args(args: argparse.Namespace) -> None:
    """Every check of this module that applies to the parsed command line."""
    from anchor_flow.run.folder import check_out

    if getattr(args, "device", None) is not None:
        check_device(args.device)
    if getattr(args, "seeds", None) is not None:
        check_seeds(tuple(args.seeds))
    if args.command in _FOLDER_COMMANDS:
        check_out(args.out, owned_if=_OWNED_IF)
    elif args.command == "run" and args.out is not None and _one_process():
        check_out(args.out)  # a data-parallel run checks it on rank 0, agreed by every rank
    if args.command == "prompts" and args.on_overflow != "error":
        raise AnchorFlowError(
            f"--on-overflow {args.on_overflow}: anchor-flow prompts loads no model, so it "
            "cannot measure prompt lengths; pass --on-overflow skip to the command that reads "
            "the file (anchor-flow saliency --prompts FILE --on-overflow skip)"
        )


def _one_process() -> bool:
    return os.environ.get("WORLD_SIZE", "1") in ("", "0", "1")
