"""Loading a TransformerLens model for the analysis, offline where possible.

``load_model(source)`` accepts a TL model object, a built-in name (``"toy-gpt2"``), a local
Hugging Face checkpoint folder, or a hub name (only when the weights are reachable or cached).
Weights are never processed in a way that changes saliency: ``fold_value_biases`` shifts
A * dL/dA (TL_NOTES), so models are built from unprocessed weights.

Deliberately not here: TransformerLens internals (see :mod:`anchor_flow.models.tl_adapter` and
:mod:`anchor_flow.models.tl_build`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from anchor_flow.errors import ModelLoadError, UnsupportedModelError
from anchor_flow.models import bos, guards, hub, tl_adapter, tl_build
from anchor_flow.models.device_maps import check_device_map_entries

__all__ = [
    "builtin_model_names",
    "from_hf_model",
    "load_model",
    "register_builtin_model",
]

TLClass = Literal["auto", "hooked", "bridge"]
#: ``"auto"`` or ``{module name: device}``, as Hugging Face's ``from_pretrained(device_map=...)``.
DeviceMap = str | dict[str, Any]


@dataclass(frozen=True)
class _Builtin:
    write_folder: Callable[[Path], None]
    shipped_folder: Path | None
    cache_tag: Callable[[], str] | None


_BUILTIN_MODELS: dict[str, _Builtin] = {}


def register_builtin_model(
    name: str,
    write_folder: Callable[[Path], None],
    *,
    shipped_folder: Path | None = None,
    cache_tag: Callable[[], str] | None = None,
) -> None:
    """Register a built-in model: ``write_folder(path)`` saves a Hugging Face checkpoint
    folder (config, weights, tokenizer) into the empty folder ``path``, deterministically.

    Args:
        name: the name :func:`load_model` accepts.
        write_folder: writes the checkpoint into an empty folder.
        shipped_folder: a checkpoint folder inside the package, read in place when it holds a
            ``config.json`` (so a retrained checkpoint is never shadowed by an older copy in
            the cache).
        cache_tag: a fingerprint of the code that writes the folder; the cache folder is keyed
            by it, so an edited construction is never shadowed by an older copy.

    Raises:
        ModelLoadError: ``name`` is already registered.
    """
    if name in _BUILTIN_MODELS:
        raise ModelLoadError(
            f"built-in model {name!r} is already registered; choose another name "
            f"(registered: {', '.join(builtin_model_names())})"
        )
    _BUILTIN_MODELS[name] = _Builtin(write_folder, shipped_folder, cache_tag)


def builtin_model_names() -> tuple[str, ...]:
    """Names :func:`load_model` builds offline, e.g. ``("toy-gpt2",)``."""
    return tuple(sorted(_BUILTIN_MODELS))


def _cache_root() -> Path:
    env = os.environ.get("ANCHOR_FLOW_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "anchor_flow"


def _builtin_folder(name: str) -> Path:
    """The built-in model's checkpoint folder, written once (atomically) into the cache."""
    builtin = _BUILTIN_MODELS[name]
    shipped = builtin.shipped_folder
    if shipped is not None and (shipped / "config.json").exists():
        return shipped
    tag = builtin.cache_tag
    target = _cache_root() / (f"{name}-{tag()}" if tag is not None else name)
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        builtin.write_folder(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").exists():  # not a concurrent writer's folder
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _resolve_tl_class(tl_class: str) -> Literal["hooked", "bridge"]:
    if tl_class not in ("auto", "hooked", "bridge"):
        raise ModelLoadError(f"tl_class={tl_class!r}; expected 'auto', 'hooked' or 'bridge'")
    has_hooked = tl_adapter.hooked_transformer_class() is not None
    if tl_class == "hooked" and not has_hooked:
        raise ModelLoadError(
            "tl_class='hooked': HookedTransformer was removed in transformer-lens 4.0 "
            f"(installed: {tl_adapter.tl_version()}); use tl_class='bridge' or 'auto', or "
            "install transformer-lens 3.9"
        )
    if tl_class == "auto":
        return "hooked" if has_hooked else "bridge"
    return tl_class  # type: ignore[return-value]


def from_hf_model(hf_model: Any, tokenizer: Any, *, tl_class: TLClass = "auto") -> Any:
    """A TL model (``HookedTransformer`` or ``TransformerBridge``) from an in-memory Hugging
    Face causal LM and its tokenizer, offline and without weight processing.

    A bridge wraps ``hf_model`` in place (its submodules are replaced); a HookedTransformer
    copies the weights.

    Example:
        >>> model = from_hf_model(GPT2LMHeadModel(config), tokenizer)  # doctest: +SKIP
    """
    kind = _resolve_tl_class(tl_class)
    if not isinstance(hf_model, torch.nn.Module) or not hasattr(hf_model, "config"):
        raise ModelLoadError(
            f"from_hf_model got a {type(hf_model).__qualname__}; expected a Hugging Face "
            "PreTrainedModel (e.g. GPT2LMHeadModel)"
        )
    name = str(getattr(hf_model.config, "name_or_path", "") or type(hf_model).__name__)
    model = None
    if kind == "hooked":
        try:
            model = tl_build.build_hooked_transformer(hf_model.eval(), tokenizer, name=name)
        except tl_build.HookedConversionError:
            if tl_class != "auto":  # the user asked for HookedTransformer: say it cannot
                raise
    if model is None:  # "auto" takes the bridge where HookedTransformer cannot convert
        model = tl_build.build_bridge(hf_model.eval(), tokenizer, name=name)
    if tokenizer is not None:  # TL's tokenizer copy always adds BOS; the checkpoint's may not
        bos.record_checkpoint_bos(model, tokenizer)
    return model


_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


def _load_hf(
    source: str, *, is_folder: bool, device: Any, dtype: Any, device_map: DeviceMap | None = None
) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if is_folder:
        folder = Path(source)
        if not (folder / "config.json").exists():
            raise ModelLoadError(
                f"{source!r} is a folder without config.json; expected a Hugging Face "
                "checkpoint folder (config.json, weights, tokenizer files)"
            )
        try:  # else AutoTokenizer, which reads it first, blames the tokenizer files
            json.loads((folder / "config.json").read_text())
        except (OSError, ValueError) as error:
            raise ModelLoadError(
                f"{str(folder / 'config.json')!r} is not readable JSON ({error}); expected the "
                "config.json that model.save_pretrained(folder) writes"
            ) from None
        if not any(next(folder.glob(p), None) for p in _WEIGHT_PATTERNS):
            raise ModelLoadError(
                f"{source!r} has no weights (no *.safetensors or *.bin); expected a Hugging "
                "Face checkpoint folder saved with model.save_pretrained(folder)"
            )
    # Without the hub, read the local cache only: no minute of retries (models/hub.py).
    unreachable = None if is_folder else hub.hub_unreachable()
    local = {"local_files_only": True} if unreachable else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **local)
    except (OSError, ValueError, TypeError, KeyError) as error:
        message = _unreachable(source, is_folder, "tokenizer files", error)
        raise ModelLoadError(message + (f" ({unreachable})" if unreachable else "")) from error
    if len(tokenizer) <= 1:
        raise ModelLoadError(
            f"{source!r} has no usable tokenizer files (vocabulary of {len(tokenizer)}); save "
            "the tokenizer next to the weights with tokenizer.save_pretrained(folder)"
        )
    try:
        placement = {} if device_map is None else {"device_map": device_map}
        hf_model = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=dtype or torch.float32,
            attn_implementation="eager",
            **placement,
            **local,
        )
    except (OSError, ValueError) as error:
        raise ModelLoadError(_unreachable(source, is_folder, "weights", error)) from error
    except Exception as error:  # a corrupt file (SafetensorError) or one refused as unsafe
        raise ModelLoadError(_unreadable_weights(source, error)) from error
    if device is not None:
        hf_model = hf_model.to(device)
    return hf_model.eval(), tokenizer


def _check_device_map(device_map: DeviceMap | None, kind: str, device: Any) -> None:
    if device_map is None:
        return
    if device is not None:
        raise ModelLoadError(
            f"device={device!r} and device_map={device_map!r}; expected one of them (the map "
            "places every module)"
        )
    if kind != "bridge":
        raise ModelLoadError(
            f"device_map={device_map!r} needs tl_class='bridge' (got {kind!r}); a "
            "HookedTransformer splits itself over GPUs with n_devices (build it yourself and "
            "pass the object to load_model)"
        )
    if not (device_map == "auto" or (isinstance(device_map, dict) and device_map)):
        raise ModelLoadError(
            f"device_map={device_map!r}; expected 'auto' or a non-empty dict of module name -> "
            "device, as transformers' from_pretrained(device_map=...)"
        )
    try:
        import accelerate  # noqa: F401  (transformers needs it for any device_map)
    except ImportError as error:
        raise ModelLoadError(
            "device_map needs the accelerate package; pip install accelerate"
        ) from error


def _config_of(source: str) -> Any:
    """The checkpoint's config from local files, or None (then only the devices are checked
    here; the loader reports an unreadable checkpoint in its own words)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, local_files_only=True)
    except Exception:
        return None


def _unreadable_weights(source: str, error: Exception) -> str:
    import pickle

    if isinstance(error, pickle.UnpicklingError):
        return (
            f"the weights in {source!r} were refused as unsafe: torch.load(weights_only=True) "
            "found objects other than tensors in the pickled .bin checkpoint; convert a "
            "checkpoint you trust to safetensors (model.save_pretrained(folder))"
        )
    first = " ".join(str(error).split())[:200]
    return (
        f"the weights in {source!r} are corrupt or truncated ({type(error).__name__}: {first}); "
        "save the checkpoint again with model.save_pretrained(folder)"
    )


def _unreachable(source: str, is_folder: bool, what: str, error: Exception) -> str:
    if is_folder:
        return (
            f"cannot load the {what} from folder {source!r}: {error}; expected a Hugging Face "
            "checkpoint folder with config.json, weights and tokenizer files"
        )
    return (
        f"{source!r} is not a built-in model ({', '.join(builtin_model_names())}), not a "
        f"folder, and its {what} are not reachable (offline, or not in the local Hugging Face "
        f"cache): {type(error).__name__}. Download it once where the hub is reachable, or pass "
        "a local checkpoint folder (model.save_pretrained + tokenizer.save_pretrained)"
    )


def load_model(
    source: Any,
    *,
    tl_class: TLClass = "auto",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    device_map: DeviceMap | None = None,
    check_hooks: bool = True,
) -> Any:
    """A TransformerLens model with unprocessed weights and live attention hooks.

    Args:
        source: a TL model (returned as-is), a built-in name (:func:`builtin_model_names`),
            a local Hugging Face checkpoint folder, or a hub name.
        tl_class: ``"hooked"`` (HookedTransformer, transformer-lens 3.x), ``"bridge"``
            (TransformerBridge) or ``"auto"`` (HookedTransformer where installed, able to
            convert the architecture and no ``device_map`` is given, else TransformerBridge).
        device, dtype: where and in which precision to load (default: CPU, float32).
        device_map: split the model over devices with Hugging Face / accelerate's device map
            (``"auto"``, or ``{module name: device}`` such as ``{"transformer.h.0": 0, ...,
            "lm_head": "cpu"}``); TransformerBridge only (a HookedTransformer splits itself
            with ``n_devices``). Every experiment gathers what it records on one device, so
            results equal the single-device run. Excludes ``device``.
        check_hooks: run :func:`anchor_flow.models.guards.check_attention_hooks_live`.

    Example:
        >>> model = load_model("toy-gpt2")  # doctest: +SKIP
    """
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        try:
            tl_adapter.adapt(source)
        except UnsupportedModelError as error:
            raise ModelLoadError(
                f"load_model got a {type(source).__qualname__}; expected a TransformerLens "
                "model, a built-in name, a checkpoint folder or a Hugging Face hub name "
                "(for an in-memory Hugging Face model use from_hf_model)"
            ) from error
        model = source
    else:
        kind = _resolve_tl_class(tl_class)
        if tl_class == "auto" and device_map is not None:
            kind = "bridge"  # only the bridge takes a device map
        _check_device_map(device_map, kind, device)
        if source in _BUILTIN_MODELS:
            folder, is_folder = str(_builtin_folder(source)), True
        else:
            folder, is_folder = source, Path(source).is_dir()
            if not is_folder and (source.startswith((".", "/", "~")) or os.sep in source[:1]):
                raise ModelLoadError(
                    f"{source!r} does not exist; expected a built-in name "
                    f"({', '.join(builtin_model_names())}), a checkpoint folder or a hub name"
                )
        if isinstance(device_map, dict):  # devices and module names, before any weight
            check_device_map_entries(device_map, _config_of(folder))
        hf_model, tokenizer = _load_hf(
            folder, is_folder=is_folder, device=device, dtype=dtype, device_map=device_map
        )
        name = source if not is_folder or source in _BUILTIN_MODELS else Path(folder).name
        hf_model.config.name_or_path = name
        # "auto" again: a HookedTransformer that cannot convert the architecture is a bridge
        model = from_hf_model(hf_model, tokenizer, tl_class=tl_class if kind == "hooked" else kind)
    tl_build.warn_if_value_biases_folded(model)
    if check_hooks:
        guards.check_attention_hooks_live(model)
    return model
