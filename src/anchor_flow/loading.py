"""Loading a TransformerLens model for the analysis, offline where possible.

``load_model(source)`` accepts a TL model object, a built-in name (``"toy-gpt2"``), a local
Hugging Face checkpoint folder, or a hub name (only when the weights are reachable or cached).
Weights are never processed in a way that changes saliency: ``fold_value_biases`` shifts
A * dL/dA (TL_NOTES), so models are built from unprocessed weights.

Deliberately not here: TransformerLens internals (see :mod:`anchor_flow.tl_adapter` and
:mod:`anchor_flow.tl_build`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch

from anchor_flow import tl_adapter, tl_build
from anchor_flow.errors import ModelLoadError, UnsupportedModelError

__all__ = [
    "builtin_model_names",
    "from_hf_model",
    "load_model",
    "register_builtin_model",
]

TLClass = Literal["auto", "hooked", "bridge"]

_BUILTIN_MODELS: dict[str, Callable[[Path], None]] = {}


def register_builtin_model(name: str, write_folder: Callable[[Path], None]) -> None:
    """Register a built-in model: ``write_folder(path)`` saves a Hugging Face checkpoint
    folder (config, weights, tokenizer) into the empty folder ``path``, deterministically.

    Raises:
        ModelLoadError: ``name`` is already registered.
    """
    if name in _BUILTIN_MODELS:
        raise ModelLoadError(
            f"built-in model {name!r} is already registered; choose another name "
            f"(registered: {', '.join(builtin_model_names())})"
        )
    _BUILTIN_MODELS[name] = write_folder


def builtin_model_names() -> tuple[str, ...]:
    """Names :func:`load_model` builds offline, e.g. ``("toy-gpt2",)``."""
    return tuple(sorted(_BUILTIN_MODELS))


def _write_toy_gpt2(folder: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from anchor_flow.toy import build_toy_tokenizer

    tokenizer = build_toy_tokenizer()
    config = GPT2Config(
        n_layer=4,
        n_head=4,
        n_embd=64,
        n_positions=256,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="eager",
    )  # type: ignore[call-arg]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


register_builtin_model("toy-gpt2", _write_toy_gpt2)


def _write_demo(folder: Path) -> None:
    from anchor_flow.demo import write_demo_folder

    write_demo_folder(folder)


register_builtin_model("demo", _write_demo)

#: Built-ins shipped as a checkpoint folder inside the package (trained by
#: scripts/train_demo.py): read in place, so a retrained checkpoint is never shadowed by an
#: older copy in the cache.
_SHIPPED_FOLDERS: dict[str, Path] = {"demo": Path(__file__).parent / "data" / "demo"}


def _write_planted(kind: str) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        from anchor_flow.planted import write_planted_folder

        write_planted_folder(folder, kind)

    return write


register_builtin_model("planted-anchor", _write_planted("anchor"))
register_builtin_model("planted-formatting", _write_planted("formatting"))


def _planted_tag() -> str:
    from anchor_flow.planted import construction_tag

    return construction_tag()


#: Built-ins whose cache folder is keyed by a fingerprint of the code that writes them, so an
#: edited construction is never shadowed by an older copy in the cache.
_CACHE_TAGS: dict[str, Callable[[], str]] = {
    "planted-anchor": _planted_tag,
    "planted-formatting": _planted_tag,
}


def _cache_root() -> Path:
    env = os.environ.get("ANCHOR_FLOW_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "anchor_flow"


def _builtin_folder(name: str) -> Path:
    """The built-in model's checkpoint folder, written once (atomically) into the cache."""
    shipped = _SHIPPED_FOLDERS.get(name)
    if shipped is not None and (shipped / "config.json").exists():
        return shipped
    target = _cache_root() / (f"{name}-{_CACHE_TAGS[name]()}" if name in _CACHE_TAGS else name)
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        _BUILTIN_MODELS[name](tmp)
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
    if kind == "hooked":
        return tl_build.build_hooked_transformer(hf_model.eval(), tokenizer, name=name)
    return tl_build.build_bridge(hf_model.eval(), tokenizer, name=name)


_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


def _load_hf(source: str, *, is_folder: bool, device: Any, dtype: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if is_folder:
        folder = Path(source)
        if not (folder / "config.json").exists():
            raise ModelLoadError(
                f"{source!r} is a folder without config.json; expected a Hugging Face "
                "checkpoint folder (config.json, weights, tokenizer files)"
            )
        if not any(next(folder.glob(p), None) for p in _WEIGHT_PATTERNS):
            raise ModelLoadError(
                f"{source!r} has no weights (no *.safetensors or *.bin); expected a Hugging "
                "Face checkpoint folder saved with model.save_pretrained(folder)"
            )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise ModelLoadError(_unreachable(source, is_folder, "tokenizer files", error)) from error
    if len(tokenizer) <= 1:
        raise ModelLoadError(
            f"{source!r} has no usable tokenizer files (vocabulary of {len(tokenizer)}); save "
            "the tokenizer next to the weights with tokenizer.save_pretrained(folder)"
        )
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype or torch.float32, attn_implementation="eager"
        )
    except (OSError, ValueError) as error:
        raise ModelLoadError(_unreachable(source, is_folder, "weights", error)) from error
    if device is not None:
        hf_model = hf_model.to(device)
    return hf_model.eval(), tokenizer


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
    check_hooks: bool = True,
) -> Any:
    """A TransformerLens model with unprocessed weights and live attention hooks.

    Args:
        source: a TL model (returned as-is), a built-in name (:func:`builtin_model_names`),
            a local Hugging Face checkpoint folder, or a hub name.
        tl_class: ``"hooked"`` (HookedTransformer, transformer-lens 3.x), ``"bridge"``
            (TransformerBridge) or ``"auto"`` (HookedTransformer where installed).
        device, dtype: where and in which precision to load (default: CPU, float32).
        check_hooks: run :func:`anchor_flow.tl_adapter.check_attention_hooks_live`.

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
        if source in _BUILTIN_MODELS:
            folder, is_folder = str(_builtin_folder(source)), True
        else:
            folder, is_folder = source, Path(source).is_dir()
            if not is_folder and (source.startswith((".", "/", "~")) or os.sep in source[:1]):
                raise ModelLoadError(
                    f"{source!r} does not exist; expected a built-in name "
                    f"({', '.join(builtin_model_names())}), a checkpoint folder or a hub name"
                )
        hf_model, tokenizer = _load_hf(folder, is_folder=is_folder, device=device, dtype=dtype)
        name = source if not is_folder or source in _BUILTIN_MODELS else Path(folder).name
        hf_model.config.name_or_path = name
        model = from_hf_model(hf_model, tokenizer, tl_class=kind)
    tl_build.warn_if_value_biases_folded(model)
    if check_hooks:
        tl_adapter.check_attention_hooks_live(model)
    return model
