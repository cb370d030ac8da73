"""Weights that accelerate offloaded (a device map's ``"disk"``, or ``"cpu"`` beside a GPU).

Such a module's parameters are meta tensors between forwards; accelerate keeps the values in
the ``weights_map`` of the hook on that module (or on one above it) and loads them onto the
execution device for each forward. :func:`stored_tensor` reads one value from there, so code
that needs a parameter's data outside a forward (the run's weights fingerprint, the null
model's copied normalisation weights) works on offloaded models without materialising them.

Deliberately not here: placing models (``from_pretrained(device_map=...)`` does it) and the
map's validation (:mod:`anchor_flow.models.device_maps`).
"""

from __future__ import annotations

import contextlib
from typing import Any

from anchor_flow.errors import ModelLoadError

__all__ = ["stored_tensor"]


def stored_tensor(model: Any, name: str) -> Any:
    """The data of ``model``'s tensor ``name`` (a ``state_dict`` key); for an offloaded one,
    its stored value (CPU memory, or memory-mapped from the offload folder), one tensor at a
    time.

    Raises:
        ModelLoadError: the tensor is a meta tensor that no accelerate hook holds.
    """
    tensor = _direct(model, name)
    if tensor is not None and not tensor.is_meta:
        return tensor
    parts = name.split(".")
    for cut in range(len(parts) - 1, -1, -1):
        try:
            module = model.get_submodule(".".join(parts[:cut]))
        except AttributeError:
            continue
        hook = getattr(module, "_hf_hook", None)
        for each in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
            weights = getattr(each, "weights_map", None)
            if weights is not None:
                with contextlib.suppress(KeyError):  # (``in`` would read the tensor twice)
                    return weights[".".join(parts[cut:])]
    raise ModelLoadError(
        f"the model's tensor {name!r} has no data (a meta tensor that no accelerate offload "
        "hook holds); expected a model whose weights are loaded, or offloaded by a device map"
    )


def _direct(model: Any, name: str) -> Any:
    module_name, _, leaf = name.rpartition(".")
    try:
        module = model.get_submodule(module_name)
    except AttributeError:
        return None
    return getattr(module, leaf, None)
