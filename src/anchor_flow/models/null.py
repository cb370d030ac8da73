"""The null model of issue 16: the same architecture with re-initialised weights.

:func:`random_init_copy` returns a new model of the user's model's class and architecture
whose weights are drawn afresh (seeded) by the architecture's own initialisation: a
``TransformerBridge`` wraps a re-initialised copy of its Hugging Face model
(``_init_weights`` of each module, i.e. the config's ``initializer_range``); a
``HookedTransformer`` is rebuilt from its config (TransformerLens' ``init_weights``).
Normalisation gains and biases are copied from the model: they set the scale its
configuration expects (the planted models' LayerNorm, epsilon 1e6, is an identity only with
their gain of 1000; with a gain of 1 every activation shrinks 1000-fold per LayerNorm and the
attention edits no longer reach the logits). Every other weight is new. The user's model is
never touched. Running the paper's statistics on it shows what a network
that learned nothing gives: e.g. the 3-way normalised S_pq is 0.8-0.9 of every layer at
random initialisation, so that number alone says nothing about anchors.

Deliberately not here: deciding when to build one (the run's settings), the statistics.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from anchor_flow.errors import UnsupportedModelError
from anchor_flow.models.offload import stored_tensor
from anchor_flow.models.tl_adapter import adapt, model_parameters

__all__ = ["NULL_MODEL_MAX_PARAMETERS", "n_parameters", "random_init_copy"]

NULL_MODEL_MAX_PARAMETERS = 500_000_000
"""Up to this many parameters a run builds a null model by default (it holds a second copy
of the weights and repeats saliency and the deep-layer experiment on one seed)."""


def n_parameters(model: Any) -> int:
    """Number of parameters (a bridge's wrapped Hugging Face model included)."""
    return sum(p.numel() for p in model_parameters(model))


def _copy_normalisation(source: Any, target: Any) -> None:
    """Copy the parameters of every normalisation module (class name with "Norm") by name.

    A bridge wraps its Hugging Face modules in place (``._original_component``): names are
    compared without that part.
    """
    parameters = {
        name.replace("._original_component", "").replace("_original_component.", ""): (name, p)
        for name, p in source.named_parameters()
    }
    with torch.no_grad():
        for name, module in target.named_modules():
            if "Norm" not in type(module).__name__:
                continue
            for key, parameter in module.named_parameters(recurse=False):
                source_name, found = parameters.get(f"{name}.{key}" if name else key, ("", None))
                if found is not None and found.shape == parameter.shape:
                    # an offloaded parameter (a device map's "disk") is read from its store
                    parameter.copy_(stored_tensor(source, source_name) if found.is_meta else found)


def random_init_copy(model: Any, seed: int = 0) -> Any:
    """A copy of ``model``'s architecture with freshly initialised weights (seeded).

    Example:
        >>> null = random_init_copy(load_model("demo"), seed=0)  # doctest: +SKIP

    Raises:
        UnsupportedModelError: neither a bridge around a Hugging Face model nor a
            ``HookedTransformer``.
    """
    adapter = adapt(model)
    name = f"{adapter.name} (random init, seed {seed})"
    device, dtype = adapter.device, adapter.dtype
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        if adapter.kind == "bridge":
            from anchor_flow.models.tl_build import build_bridge

            original = model.__dict__.get("original_model") or model.original_model
            config = getattr(original, "config", None)
            if config is None or not hasattr(type(original), "_from_config"):
                raise UnsupportedModelError(
                    f"{adapter.name!r}: the bridge does not wrap a Hugging Face PreTrainedModel; "
                    "expected one to re-initialise (or pass --null-model none)"
                )
            # A fresh module from the config runs the architecture's own initialisation
            # (post_init -> _init_weights); the wrapped modules carry the bridge's hooks.
            hf_model = type(original)._from_config(copy.deepcopy(config))
            _copy_normalisation(original, hf_model)
            null = build_bridge(hf_model, adapter.tokenizer, name=name)
        else:
            cfg = copy.deepcopy(model.cfg)
            cfg.model_name = name
            cfg.init_weights = False  # the converted config may say so; init explicitly
            null = type(model)(cfg, tokenizer=adapter.tokenizer, move_to_device=False)
            null.init_weights()
            _copy_normalisation(model, null)
    finally:
        torch.random.set_rng_state(state)
    if adapt(null).device != device:
        null = null.to(device)
    if adapt(null).dtype != dtype:
        null = null.to(dtype)
    return null.eval()
