"""One of the two modules that know TransformerLens internals: building and checking models.

:func:`build_hooked_transformer` and :func:`build_bridge` turn an in-memory Hugging Face
causal LM into a ``HookedTransformer`` (TL 3.x) or a ``TransformerBridge`` (TL 3.9 and 4.x)
offline and with unprocessed weights; :func:`warn_if_value_biases_folded` checks a user's
model for the one weight processing that changes the paper's saliency. Running a model (hook
names, forward variants, key/value caches, the liveness probe) lives in its sibling
:mod:`anchor_flow.models.tl_adapter`. A TransformerLens upgrade touches these two files,
:mod:`anchor_flow.models.pattern_routing` (GPT-J / GPT-Neo / OPT bridges) and the tests' model
builders, and nothing else; TL is imported lazily.

>>> model = build_bridge(hf_model, tokenizer, name="gpt2")  # doctest: +SKIP

Deliberately not here: finding or downloading checkpoints (:mod:`anchor_flow.models.loading`), any
weight processing.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

from torch import Tensor

from anchor_flow.errors import ModelLoadError
from anchor_flow.models.pattern_routing import route_patterns
from anchor_flow.models.tl_adapter import adapt, hooked_transformer_class, tl_version

__all__ = ["build_bridge", "build_hooked_transformer", "warn_if_value_biases_folded"]


class HookedConversionError(ModelLoadError):
    """TransformerLens 3.x's HookedTransformer cannot convert this architecture (``"auto"``
    then takes the bridge)."""


HOOKED_ARCHITECTURES = (
    "GPT2LMHeadModel",
    "GPTNeoXForCausalLM",
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "GPTJForCausalLM",
    "GPTNeoForCausalLM",
    "OPTForCausalLM",
    "BloomForCausalLM",
    "Qwen3ForCausalLM",
    "Phi3ForCausalLM",
)  # tested against Hugging Face eager on TL 3.9 (tests/model/test_architecture_matrix.py)


def _reloadable_tokenizer(tokenizer: Any, folder: Path) -> Any:
    """TL re-creates the tokenizer from ``init_kwargs['name_or_path']`` (KeyError for one built
    in memory): give it a folder to reload from."""
    if tokenizer is None or tokenizer.init_kwargs.get("name_or_path"):
        return tokenizer
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(folder)
    reloaded = AutoTokenizer.from_pretrained(folder)
    reloaded.padding_side = tokenizer.padding_side
    return reloaded


def _architecture(hf_model: Any) -> str:
    return str((getattr(hf_model.config, "architectures", None) or [type(hf_model).__name__])[0])


def build_hooked_transformer(
    hf_model: Any, tokenizer: Any, *, name: str, device: Any = None, dtype: Any = None
) -> Any:
    """A ``HookedTransformer`` with the Hugging Face model's weights, unprocessed, offline."""
    hooked = hooked_transformer_class()
    if hooked is None:
        raise ModelLoadError(
            f"tl_class='hooked' for {name!r}: HookedTransformer was removed in transformer-lens "
            f"4.0 (installed: {tl_version()}); use tl_class='bridge', or install "
            "transformer-lens 3.9"
        )
    import transformer_lens.loading_from_pretrained as tl_loading

    dtype = dtype or next(hf_model.parameters()).dtype
    device = device or next(hf_model.parameters()).device
    with tempfile.TemporaryDirectory() as tmp:
        # from_pretrained fetches the config from the hub; TL's converter reads a local
        # config.json offline. TL 3.9 reads GPT-2's removed n_ctx: restore it.
        config = hf_model.config.to_dict()
        config["architectures"] = [_architecture(hf_model)]
        config.setdefault("n_ctx", config.get("n_positions"))
        (Path(tmp) / "config.json").write_text(json.dumps(config))
        try:
            cfg = tl_loading.get_pretrained_model_config(tmp, device=device, dtype=dtype)
            state_dict = tl_loading.get_pretrained_state_dict(tmp, cfg, hf_model=hf_model)
        except (KeyError, ValueError, NotImplementedError, AttributeError) as error:
            raise HookedConversionError(
                f"HookedTransformer cannot convert {name!r} ({_architecture(hf_model)}): "
                f"{error}; anchor_flow converts {', '.join(HOOKED_ARCHITECTURES)}, or use "
                "tl_class='bridge'"
            ) from error
        cfg.model_name = name
        tokenizer = _reloadable_tokenizer(tokenizer, Path(tmp) / "tokenizer")
        with warnings.catch_warnings():
            # TL 3.9 deprecates the class; the user chose it (or TL 3.x's default) knowingly.
            warnings.filterwarnings("ignore", message="HookedTransformer is deprecated")
            model = hooked(cfg, tokenizer=tokenizer, move_to_device=True)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    return model.eval()


def build_bridge(hf_model: Any, tokenizer: Any, *, name: str) -> Any:
    """A ``TransformerBridge`` around the Hugging Face model (wrapped in place, unprocessed).

    GPT-J, GPT-Neo and OPT get their attention probabilities routed through the bridge's
    ``hook_pattern`` (:func:`anchor_flow.models.pattern_routing.route_patterns`).
    """
    from transformer_lens.model_bridge.sources import build_bridge_from_module

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = _reloadable_tokenizer(tokenizer, Path(tmp))
        try:
            model = build_bridge_from_module(
                hf_model,
                _architecture(hf_model),
                hf_config=hf_model.config,
                tokenizer=tokenizer,
                model_name=name,
            )
        except (KeyError, ValueError, NotImplementedError) as error:
            raise ModelLoadError(
                f"TransformerBridge cannot wrap {name!r} ({_architecture(hf_model)}): {error}"
            ) from error
    route_patterns(model)
    return model.eval()


def warn_if_value_biases_folded(model: Any) -> bool:
    """Warn (``UserWarning``) if the value biases look folded into the output biases.

    Folding (``fold_value_biases``, on by default in TL 3.x ``from_pretrained`` and 4.x
    ``enable_compatibility_mode``) leaves the model's outputs unchanged but changes the
    saliency A * dL/dA. Heuristic: every attention ``b_V`` is exactly 0 while some ``b_O`` is
    not. Returns whether it warned.
    """
    adapter = adapt(model)
    # Neither TL 3.9 nor 4.3 records fold_value_biases on cfg or the bridge, so read weights.
    try:
        b_v, b_o = adapter.model.b_V, adapter.model.b_O
    except (AttributeError, KeyError, RuntimeError, NotImplementedError, TypeError):
        return False  # TypeError: TL 3.9's bridge stacks None for a model without biases
    if not isinstance(b_v, Tensor) or not isinstance(b_o, Tensor):
        return False
    folded = bool((b_v == 0).all()) and bool((b_o != 0).any())
    if folded:
        warnings.warn(
            f"{adapter.name!r}: the attention value biases appear folded into the output biases "
            "(fold_value_biases). The model's outputs are unchanged, but the saliency "
            "A * dL/dA gains a term dL/dz * b_V constant over keys, which changes the "
            "information-flow scores. Load unprocessed weights: anchor_flow.load_model(...), "
            "HookedTransformer.from_pretrained_no_processing(...), or a TransformerBridge "
            "without enable_compatibility_mode().",
            UserWarning,
            stacklevel=2,
        )
    return folded
