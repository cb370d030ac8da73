"""Blocking attention edges with hooks on ``hook_pattern`` (PAPER.md §2.1–§2.2, paper §2.2).

The paper's isolation sets ``A_l(p, i) = 0`` for ``i < p`` at every label word ``p`` in the
chosen layers, so that the anchors cannot read the demonstrations; the self-edge stays. This
module builds such interventions as *values*: pure functions make boolean edge masks
``[batch, query_pos, key_pos]`` from a :class:`~anchor_flow.icl.roles.PromptBatch` (True = the
edge is blocked), and :func:`blocking_hooks` turns one mask per layer into forward hooks
``(hook_name, fn)`` for ``model.hooks(fwd_hooks=...)``. Masks are batch-specific; pass a
factory to :func:`anchor_flow.icl.evaluation.run_icl`'s ``batch_hooks`` to block per batch.

Two modes (Δ PAPER.md §2.1):

* ``"renormalise"`` (default, the official code): the blocked entries are zeroed and each
  blocked row is divided by its remaining sum. This equals assigning ``finfo.min`` to the
  pre-softmax scores (the official code assigns ``-10000``), up to float rounding; a row whose
  kept probabilities all underflowed to 0 cannot be renormalised: a ``BlockingError`` says so.
* ``"zero"``: the paper's literal "set to 0", without renormalisation (the row sums to < 1).

Rows without a blocked edge are returned bitwise unchanged in both modes. A mask may carry a
head axis, ``[batch, head, query_pos, key_pos]`` (:func:`head_mask` builds one from a mask and
head indices): then only those heads' edges are blocked and every other head stays bitwise
unchanged (the anchor heads' causal check, :mod:`anchor_flow.analysis.heads`).

The random non-label control (§2.2) draws, for every prompt and layer, as many rows as the
prompt has label words, without replacement from the official candidate set (positions
``0..q-2`` minus the label words). Unlike the official code it is seeded: the draw of a prompt
depends only on ``(seed, prompt index, layer)``, so it does not change with the batch size or
order. Deliberately not here: running the model or measuring anything
(:mod:`anchor_flow.analysis.isolation`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Bool
from torch import Tensor

from anchor_flow.errors import AnchorFlowError
from anchor_flow.icl.roles import PromptBatch, Role
from anchor_flow.models.tl_adapter import adapt

__all__ = [
    "BlockMode",
    "BlockingError",
    "block_edges_hooks",
    "blocking_hooks",
    "head_mask",
    "isolation_hooks",
    "isolation_mask",
    "label_rows",
    "layer_set",
    "random_rows",
    "role_pair_mask",
]

BlockMode = Literal["renormalise", "zero"]
HookList = list[tuple[str, Callable[..., Any]]]
_MODES = ("renormalise", "zero")


class BlockingError(AnchorFlowError):
    """A blocking request that cannot be built (bad layers, mode, mask or control)."""


def layer_set(n_layers: int, count: int, where: Literal["first", "last"]) -> tuple[int, ...]:
    """The first or last ``count`` layers, 0-indexed (the official ``mask_layer_pos``).

    Example:
        >>> layer_set(48, 5, "first"), layer_set(48, 2, "last")
        ((0, 1, 2, 3, 4), (46, 47))
    """
    if not 0 <= count <= n_layers:
        raise BlockingError(f"count={count}; expected 0 <= count <= n_layers={n_layers}")
    if where == "first":
        return tuple(range(count))
    if where == "last":
        return tuple(range(n_layers - count, n_layers))
    raise BlockingError(f"where={where!r}; expected 'first' or 'last'")


def _role_set(roles: Role | Iterable[Role]) -> list[int]:
    return [int(roles)] if isinstance(roles, Role) else [int(r) for r in roles]


def label_rows(batch: PromptBatch) -> Bool[Tensor, "batch pos"]:
    """True at every label-word (anchor, ``Role.LABEL``) position: the rows the paper isolates.

    Example:
        >>> from anchor_flow import tokenize_prompts, toy_prompts
        >>> from anchor_flow.testbeds.toy import build_toy_tokenizer
        >>> batch = tokenize_prompts(toy_prompts(2), build_toy_tokenizer())
        >>> label_rows(batch).sum(-1).tolist()
        [2, 2]
    """
    return batch.roles == Role.LABEL


def isolation_mask(
    batch: PromptBatch, rows: Bool[Tensor, "batch pos"]
) -> Bool[Tensor, "batch query_pos key_pos"]:
    """Block every edge from an earlier position into the given rows; the self-edge stays.

    Example:
        >>> from anchor_flow import tokenize_prompts, toy_prompts
        >>> from anchor_flow.testbeds.toy import build_toy_tokenizer
        >>> batch = tokenize_prompts(toy_prompts(1), build_toy_tokenizer())
        >>> p = batch.label_positions(0)[0]
        >>> int(isolation_mask(batch, label_rows(batch))[0, p].sum()) == p  # keys 0..p-1
        True
    """
    if tuple(rows.shape) != tuple(batch.tokens.shape):
        raise BlockingError(
            f"rows has shape {tuple(rows.shape)}; expected the batch's [batch, pos] "
            f"{tuple(batch.tokens.shape)}"
        )
    n = batch.tokens.shape[1]
    earlier = torch.ones(n, n, dtype=torch.bool, device=rows.device).tril(-1)
    return rows.bool()[:, :, None] & earlier[None]


def role_pair_mask(
    batch: PromptBatch, reader: Role | Iterable[Role], source: Role | Iterable[Role]
) -> Bool[Tensor, "batch query_pos key_pos"]:
    """Block the causal edges ``reader <- source`` between roles (e.g. target <- label words).

    Example:
        >>> from anchor_flow import tokenize_prompts, toy_prompts
        >>> from anchor_flow.testbeds.toy import build_toy_tokenizer
        >>> batch = tokenize_prompts(toy_prompts(1), build_toy_tokenizer())
        >>> int(role_pair_mask(batch, Role.TARGET, Role.LABEL).sum())  # target <- 2 labels
        2

    Args:
        batch: the prompts.
        reader: role(s) of the reading position (the attention row).
        source: role(s) of the position read (the column); only keys before the reader.
    """
    device = batch.roles.device
    is_reader = torch.isin(batch.roles, torch.tensor(_role_set(reader), device=device))
    is_source = torch.isin(batch.roles, torch.tensor(_role_set(source), device=device))
    return isolation_mask(batch, is_reader) & is_source[:, None, :]


def random_rows(
    batch: PromptBatch, *, seed: int, layer: int, prompt_ids: Sequence[int] | Tensor | None = None
) -> Bool[Tensor, "batch pos"]:
    """The paper's random non-label rows (§2.2), seeded per ``(seed, prompt id, layer)``.

    Each prompt gets as many rows as it has label words, drawn without replacement from
    positions ``0..q-2`` (``q`` the target) that are not label words, as the official code.

    Example:
        >>> from anchor_flow import tokenize_prompts, toy_prompts
        >>> from anchor_flow.testbeds.toy import build_toy_tokenizer
        >>> batch = tokenize_prompts(toy_prompts(2), build_toy_tokenizer())
        >>> rows = random_rows(batch, seed=0, layer=0)
        >>> rows.sum(-1).tolist(), bool((rows & label_rows(batch)).any())
        ([2, 2], False)

    Args:
        batch: the prompts.
        seed: a non-negative seed of the whole run.
        layer: the layer the rows are for (every layer draws afresh).
        prompt_ids: a stable id of each row (its index in the caller's prompt list, as
            ``run_icl``'s ``batch_hooks`` passes it); default ``0..batch-1``.

    Raises:
        BlockingError: a negative seed or layer, a wrong number of ids, or a prompt with
            fewer candidates than label words.
    """
    if seed < 0 or layer < 0:
        raise BlockingError(f"seed={seed}, layer={layer}; expected non-negative integers")
    ids = list(range(len(batch))) if prompt_ids is None else [int(i) for i in prompt_ids]
    if len(ids) != len(batch):
        raise BlockingError(f"got {len(ids)} prompt_ids for a batch of {len(batch)} prompts")
    out = torch.zeros_like(batch.roles, dtype=torch.bool)
    is_label = label_rows(batch)
    for row, prompt_id in enumerate(ids):
        if prompt_id < 0:
            raise BlockingError(f"prompt_ids[{row}]={prompt_id}; expected a non-negative id")
        target = int(batch.target_position[row])
        labels = is_label[row]
        candidates = [p for p in range(max(target - 1, 0)) if not bool(labels[p])]
        count = int(labels.sum())
        if count > len(candidates):
            raise BlockingError(
                f"prompt {prompt_id} has {count} label words but only {len(candidates)} "
                "non-label positions before q-1 to draw random rows from"
            )
        rng = np.random.default_rng([seed, prompt_id, layer])
        picked = rng.choice(len(candidates), size=count, replace=False)
        out[row, [candidates[int(k)] for k in picked]] = True
    return out


def head_mask(
    mask: Bool[Tensor, "batch query_pos key_pos"],
    heads: Sequence[int] | Bool[Tensor, "batch head"],
    n_heads: int,
) -> Bool[Tensor, "batch head query_pos key_pos"]:
    """``mask`` in the given heads only: the same heads for every prompt, or per prompt.

    Example:
        >>> mask = torch.ones(1, 3, 3, dtype=torch.bool).tril(-1)
        >>> head_mask(mask, [0], n_heads=2).sum((-1, -2)).tolist()  # head 0 blocked, 1 not
        [[3, 0]]

    Args:
        mask: edges to block, ``[batch, query_pos, key_pos]``.
        heads: head indices (every prompt) or a ``[batch, head]`` boolean choice per prompt.
        n_heads: the layer's number of heads.
    """
    if isinstance(heads, Tensor) and heads.dtype == torch.bool:
        if tuple(heads.shape) != (mask.shape[0], n_heads):
            raise BlockingError(
                f"heads has shape {tuple(heads.shape)}; expected [batch, head] = "
                f"{(mask.shape[0], n_heads)}"
            )
        chosen = heads.to(mask.device)
    else:
        index = [int(h) for h in heads]
        if any(not 0 <= h < n_heads for h in index):
            raise BlockingError(f"heads={index}; expected head indices in 0..{n_heads - 1}")
        chosen = torch.zeros(mask.shape[0], n_heads, dtype=torch.bool, device=mask.device)
        chosen[:, index] = True
    return mask.bool()[:, None] & chosen[:, :, None, None]


def _block(mask: Tensor, mode: BlockMode) -> Callable[[Tensor, Any], Tensor]:
    # A head axis of 1 (every head) or n_heads: [batch, head, query_pos, key_pos].
    mask = mask if mask.ndim == 4 else mask[:, None]
    rows = mask.any(-1, keepdim=True)
    cache: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def hook(pattern: Tensor, hook: Any) -> Tensor:
        if (pattern.shape[0] != mask.shape[0] or pattern.shape[-2:] != mask.shape[2:]
                or mask.shape[1] not in (1, pattern.shape[1])):  # fmt: skip
            raise BlockingError(
                f"{hook.name}: pattern {tuple(pattern.shape)} does not fit the blocking mask "
                f"{tuple(mask.shape)}; build the mask from the batch that is run"
            )
        if pattern.device not in cache:
            cache[pattern.device] = (mask.to(pattern.device), rows.to(pattern.device))
        blocked, blocked_rows = cache[pattern.device]
        kept = pattern.masked_fill(blocked, 0.0)
        if mode == "renormalise":
            total = kept.sum(-1, keepdim=True)
            if bool((total == 0).logical_and(blocked_rows).any()):
                raise BlockingError(
                    f"{hook.name}: every kept attention probability of a blocked row underflowed "
                    "to 0, so the row cannot be renormalised (a pre-softmax mask would still "
                    "give it weight); use mode='zero' or a higher-precision dtype"
                )
            kept = kept / total
        # Out of place (a backward hook may sit on the pattern); untouched rows stay bitwise.
        return torch.where(blocked_rows, kept, pattern)

    return hook


def blocking_hooks(
    model: Any,
    masks: Mapping[int, Bool[Tensor, "batch query_pos key_pos"]]
    | Mapping[int, Bool[Tensor, "batch head query_pos key_pos"]],
    *,
    mode: BlockMode = "renormalise",
) -> HookList:
    """Forward hooks that block ``masks[layer]`` (True = blocked) in each given layer.

    Example:
        >>> mask = isolation_mask(batch, label_rows(batch))  # doctest: +SKIP
        >>> hooks = blocking_hooks(model, {0: mask})  # doctest: +SKIP
        >>> with model.hooks(fwd_hooks=hooks):  # doctest: +SKIP
        ...     logits = model(batch.tokens)

    Args:
        model: a TransformerLens model (or :class:`~anchor_flow.models.tl_adapter.ModelAdapter`).
        masks: layer -> edge mask for the batch that will be run, in every head
            (``[batch, query_pos, key_pos]``) or per head (``[batch, head, query_pos,
            key_pos]``, :func:`head_mask`); an empty mapping gives no hooks.
        mode: ``"renormalise"`` (the official pre-softmax mask) or ``"zero"`` (the paper's
            literal "set to 0").

    Raises:
        BlockingError: an unknown mode, a mask that is not ``[batch, pos, pos]``, or a mask
            that blocks every causal key of some row (renormalisation would divide by 0).
    """
    if mode not in _MODES:
        raise BlockingError(f"mode={mode!r}; expected one of {_MODES}")
    adapter = adapt(model)
    hooks: HookList = []
    for layer, mask in sorted(masks.items()):
        if (mask.ndim not in (3, 4) or mask.shape[-1] != mask.shape[-2]
                or mask.dtype != torch.bool
                or (mask.ndim == 4 and mask.shape[1] != adapter.n_heads)):  # fmt: skip
            raise BlockingError(
                f"mask of layer {layer} has shape {tuple(mask.shape)} and dtype {mask.dtype}; "
                "expected a bool tensor [batch, query_pos, key_pos] or [batch, head="
                f"{adapter.n_heads}, query_pos, key_pos]"
            )
        causal = torch.ones(mask.shape[-2:], dtype=torch.bool, device=mask.device).tril()
        if mode == "renormalise" and bool((causal & ~mask).sum(-1).eq(0).any()):
            raise BlockingError(
                f"the mask of layer {layer} blocks every causal key of some row (self-edge "
                "included); keep at least one key per row, or use mode='zero'"
            )
        hooks.append((adapter.pattern_hook_name(layer), _block(mask.detach(), mode)))
    return hooks


def block_edges_hooks(
    model: Any,
    mask: Bool[Tensor, "batch query_pos key_pos"],
    layers: Iterable[int],
    *,
    mode: BlockMode = "renormalise",
) -> HookList:
    """Block the same edges in every layer of ``layers`` (e.g. target <- label words).

    Example:
        >>> mask = role_pair_mask(batch, Role.TARGET, Role.LABEL)  # doctest: +SKIP
        >>> hooks = block_edges_hooks(model, mask, layers=range(12, 24))  # doctest: +SKIP
    """
    return blocking_hooks(model, {int(layer): mask for layer in layers}, mode=mode)


def isolation_hooks(
    model: Any,
    batch: PromptBatch,
    layers: Iterable[int],
    *,
    control: Literal["label", "random"] = "label",
    mode: BlockMode = "renormalise",
    seed: int = 0,
    prompt_ids: Sequence[int] | Tensor | None = None,
) -> HookList:
    """The paper's isolation of label words (or of random non-label rows) in ``layers``.

    Example:
        >>> from anchor_flow import run_icl
        >>> isolate = lambda rows, part: isolation_hooks(model, part, [0], prompt_ids=rows)
        >>> result = run_icl(model, prompts, batch_hooks=isolate)  # doctest: +SKIP

    Args:
        model: a TransformerLens model.
        batch: the prompts that will be run (masks fit this batch only).
        layers: the layers to block in (an empty set gives no hooks).
        control: ``"label"`` isolates the label words; ``"random"`` as many random non-label
            rows per prompt, drawn afresh for every layer (:func:`random_rows`).
        mode: ``"renormalise"`` or ``"zero"`` (see the module docstring).
        seed: seed of the random control.
        prompt_ids: stable ids of the batch's prompts for the random draw.
    """
    if control not in ("label", "random"):
        raise BlockingError(f"control={control!r}; expected 'label' or 'random'")
    masks = {}
    for layer in layers:
        if control == "label":
            rows = label_rows(batch)
        else:
            rows = random_rows(batch, seed=seed, layer=int(layer), prompt_ids=prompt_ids)
        masks[int(layer)] = isolation_mask(batch, rows)
    return blocking_hooks(model, masks, mode=mode)
