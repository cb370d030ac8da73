"""Checking a device map against this machine and the model, before any weight is read.

A device map (``from_pretrained(device_map=...)``, ``--device-map FILE.json``) names modules
and the device each goes to. :func:`check_device_map_entries` refuses, in one line each:

* a device that is not one (``"tpu"``), or that this PyTorch build cannot use (a GPU index or
  ``"cuda:1"`` where fewer CUDA devices are visible, ``"mps"`` off Apple silicon);
* a module name the model does not have (``"transformer.h.7"`` in a 2-layer model);
* parameters that no entry places (a module left out).

The model's module names come from its ``config.json`` alone: the architecture is built on the
meta device (``accelerate.init_empty_weights``), which reads no weights and allocates nothing.
``"disk"`` (and ``"cpu"`` beside a GPU) are accelerate's offload: supported, see
:mod:`anchor_flow.models.offload`.

Deliberately not here: ``"auto"`` maps (accelerate plans them itself) and placing the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from anchor_flow.errors import ModelLoadError

__all__ = ["check_device_map_entries"]

_EXPECTED = "expected a GPU index (0, 1, ...), 'cuda:N', 'cpu', 'mps' or 'disk'"


def check_device(module: str, device: Any) -> None:
    """Refuse one entry's device when it is none, or this build cannot use it."""
    import torch

    where = f"device_map puts {module or '(the whole model)'!r} on {device!r}"
    if isinstance(device, bool) or not isinstance(device, (int, str, torch.device)):
        raise ModelLoadError(f"{where}; {_EXPECTED}")
    if device in ("cpu", "disk"):
        return
    try:
        chosen = torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    except (RuntimeError, ValueError):
        raise ModelLoadError(f"{where}, which is not a device; {_EXPECTED}") from None
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (chosen.index or 0) >= count:
            raise ModelLoadError(
                f"{where}, but this PyTorch build sees {count} CUDA device(s) "
                f"(torch {torch.__version__}); use 'cpu' (or 'disk') there, or run where the "
                "GPU is"
            )
    elif chosen.type == "mps":
        if not torch.backends.mps.is_available():
            raise ModelLoadError(f"{where}, but MPS is not available here; use 'cpu'")
    elif chosen.type != "cpu":
        raise ModelLoadError(f"{where}: this library runs on CPU, CUDA or MPS; {_EXPECTED}")


def check_device_map_entries(device_map: Mapping[str, Any], config: Any) -> None:
    """Refuse unknown or unusable devices, unknown module names and modules left out.

    ``config`` is the model's Hugging Face config (``AutoConfig``), or ``None`` to check the
    devices only.

    Raises:
        ModelLoadError: the first problem found, naming the entry and the way out.
    """
    for module, device in device_map.items():
        check_device(str(module), device)
    if config is None:
        return
    modules, parameters = _skeleton_names(config)
    names = modules | set(parameters)
    unknown = [m for m in device_map if m and m not in names]
    if unknown:
        parent = unknown[0].rpartition(".")[0]
        while parent and parent not in names:
            parent = parent.rpartition(".")[0]
        near = sorted(n for n in modules if n and n.rpartition(".")[0] == parent)[:6]
        raise ModelLoadError(
            f"device_map names {unknown[0]!r}, which this model does not have; expected module "
            f"names such as {', '.join(map(repr, near))} (print(model) shows them all)"
        )
    placed = [m for m in device_map]
    left = [p for p in parameters if not any(m == "" or p == m or p.startswith(m + ".")
                                             for m in placed)]  # fmt: skip
    if left:
        parts, unplaced = left[0].split("."), set(left)
        module = next(
            (".".join(parts[:n]) for n in range(1, len(parts))
             if all(p in unplaced for p in parameters if p.startswith(".".join(parts[:n]) + "."))),
            "",
        )  # fmt: skip
        raise ModelLoadError(
            f"device_map leaves out {module or left[0]!r} ({len(left)} parameter(s) placed "
            'nowhere); give it a device too, e.g. "' + (module or left[0]) + '": "cpu"'
        )


def _skeleton_names(config: Any) -> tuple[set[str], list[str]]:
    """Module names and (untied) parameter names of the architecture, on the meta device."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config)
    return {n for n, _ in skeleton.named_modules()}, [n for n, _ in skeleton.named_parameters()]
