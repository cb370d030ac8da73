"""Anchor re-weighting (paper §3.1, Eq. 6-10 and 12, App. G/H, Table 1; PAPER.md §4).

:class:`AnchorReweighting` holds one learnable ``beta[layer, head, class]`` (Eq. 12),
initialised to 0. Its hooks multiply the post-softmax attention of the target position
``q`` to every anchor (label-word) position of class ``i`` by ``exp(beta[l, h, i])``, with no
renormalisation (the paper and the official code); ``renormalise=True`` rescales the target's
row to sum 1 instead. With ``beta = 0`` the hooks multiply by exactly 1.0: vanilla ICL, bitwise.

:func:`fit_reweighting` fits the betas on labelled prompts with Adam (lr 0.01, 10 epochs,
batch 1 by default, seeded shuffling) on the label-restricted cross-entropy at the target.
:func:`evaluate_reweighting` runs vanilla ICL with the hooks on. The paper's protocol
(Table 1: prompt sets per seed, the two baselines, pooled results) is in
:mod:`anchor_flow.applications.reweighting.protocol`.

Deltas from the official code (PAPER.md §4.1-§4.2):

* the model is frozen (``guards.frozen``): only beta requires grad, no parameter
  gradients are computed (the official code accumulated full GPT2-XL gradients, ~27 GB);
* one beta per class is shared by all label positions of that class, so several
  demonstrations per class work (the official code needs exactly one per class);
* any model with live ``hook_pattern`` hooks, not only GPT2-XL; epoch shuffling is seeded;
  the logged epoch loss is a plain mean; the k-shot baseline keeps the seed's permutation
  order (the official one shuffles without a seed).

Deliberately not here: plotting (:mod:`anchor_flow.report.figures.applications`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor, nn
from tqdm.auto import tqdm

from anchor_flow.errors import AnchorFlowError, ResultsError
from anchor_flow.icl.evaluation import ICLResult, prompt_batch, run_icl
from anchor_flow.icl.prompts import ICLPrompt
from anchor_flow.icl.roles import PromptBatch, Role
from anchor_flow.models.guards import check_attention_hooks_live, frozen
from anchor_flow.models.tl_adapter import adapt
from anchor_flow.results.files import write_atomic

__all__ = [
    "AnchorReweighting",
    "ReweightingError",
    "ReweightingFit",
    "evaluate_reweighting",
    "fit_reweighting",
]

Policy = Literal["single", "first", "all"]
HookList = list[tuple[str, Callable[..., Any]]]
_BETA_SCHEMA = "anchor_flow.reweighting_betas/1"


class ReweightingError(AnchorFlowError):
    """A re-weighting request that cannot be built (shapes, settings, prompt sets)."""


class AnchorReweighting(nn.Module):
    """Learnable ``beta[layer, head, class]`` whose hooks rescale target -> anchor attention.

    Example:
        >>> reweighting = AnchorReweighting(n_layers=2, n_heads=4, n_classes=3)
        >>> reweighting.beta.shape, float(reweighting.beta.detach().abs().sum())
        (torch.Size([2, 4, 3]), 0.0)
        >>> hooks = reweighting.hooks(batch)  # doctest: +SKIP
        >>> with model.hooks(fwd_hooks=hooks): ...  # doctest: +SKIP

    Args:
        n_layers, n_heads, n_classes: the shape of beta (the model's layers and query heads).
        renormalise: divide the edited target row by its sum (not in the paper).
    """

    def __init__(
        self, n_layers: int, n_heads: int, n_classes: int, *, renormalise: bool = False
    ) -> None:
        super().__init__()
        for name, value in (("n_layers", n_layers), ("n_heads", n_heads), ("n_classes", n_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ReweightingError(f"{name}={value!r}; expected a positive integer")
        self.beta = nn.Parameter(torch.zeros(n_layers, n_heads, n_classes))
        self.renormalise = bool(renormalise)

    @classmethod
    def for_model(
        cls, model: Any, n_classes: int, *, renormalise: bool = False
    ) -> AnchorReweighting:
        """Zero betas shaped for ``model`` (all layers, all query heads)."""
        adapter = adapt(model)
        return cls(adapter.n_layers, adapter.n_heads, n_classes, renormalise=renormalise)

    @classmethod
    def from_beta(cls, beta: Tensor, *, renormalise: bool = False) -> AnchorReweighting:
        """A module holding a copy of ``beta`` ``[layer, head, class]``."""
        if beta.ndim != 3:
            raise ReweightingError(
                f"beta has shape {tuple(beta.shape)}; expected [layer, head, class]"
            )
        module = cls(*beta.shape, renormalise=renormalise)
        with torch.no_grad():
            module.beta.copy_(beta)
        return module

    def hooks(self, batch: PromptBatch) -> HookList:
        """Forward hooks on every layer's ``hook_pattern`` for a forward pass over ``batch``.

        Only ``pattern[b, h, target_position[b], p]`` changes, for the anchors ``p``
        (``Role.LABEL``) of each class; the rows of ``batch`` must be the rows of the pass.
        """
        if batch.n_classes != self.beta.shape[2]:
            raise ReweightingError(
                f"the batch has {batch.n_classes} classes but beta has {self.beta.shape[2]}; "
                "expected prompts of the task the betas were fitted on"
            )
        is_label = batch.roles == Role.LABEL
        key_class = torch.where(is_label, batch.label_class, self.beta.shape[2])  # [b, k]
        target = batch.target_position

        def edit(pattern: Tensor, hook: Any) -> Tensor:
            layer = int(hook.name.split(".")[1])
            if pattern.shape[1] != self.beta.shape[1] or pattern.shape[0] != key_class.shape[0]:
                raise ReweightingError(
                    f"{hook.name} has {pattern.shape[1]} heads and {pattern.shape[0]} rows; "
                    f"beta has {self.beta.shape[1]} heads and the batch {key_class.shape[0]} rows"
                )
            # [head, class + 1]: the extra column (non-anchor keys) scales by exp(0) = 1.
            factors = torch.cat([self.beta[layer], self.beta.new_zeros(self.beta.shape[1], 1)], 1)
            factors = factors.exp().to(device=pattern.device, dtype=pattern.dtype)
            classes = key_class[:, : pattern.shape[-1]].to(pattern.device)
            scale = factors[:, classes].permute(1, 0, 2)  # [batch, head, key_pos]
            rows = torch.arange(pattern.shape[0], device=pattern.device)
            q = target.to(pattern.device)
            new_rows = pattern[rows, :, q, :] * scale
            if self.renormalise:
                new_rows = new_rows / new_rows.sum(-1, keepdim=True)
            out = pattern.clone()
            out[rows, :, q, :] = new_rows
            return out

        return [(f"blocks.{layer}.attn.hook_pattern", edit) for layer in range(self.beta.shape[0])]

    def batch_hooks(self, rows: Tensor, batch: PromptBatch) -> HookList:
        """:func:`anchor_flow.icl.evaluation.run_icl`'s ``batch_hooks``: the hooks of each batch."""
        return self.hooks(batch)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the betas and the renormalise flag to ``path`` (``.npz``), atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = np.array(json.dumps({"schema": _BETA_SCHEMA, "renormalise": self.renormalise}))
        beta = self.beta.detach().cpu().numpy()
        write_atomic(path, lambda f: np.savez(f, beta=beta, meta=meta))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AnchorReweighting:
        """Read betas written by :meth:`save`."""
        try:
            with np.load(Path(path)) as data:
                beta, meta = torch.from_numpy(data["beta"]), json.loads(str(data["meta"]))
        except (OSError, ValueError, KeyError) as error:
            raise ResultsError(
                f"cannot read betas from {str(path)!r}: {error}; expected a .npz written by "
                "AnchorReweighting.save"
            ) from error
        if meta.get("schema") != _BETA_SCHEMA:
            raise ResultsError(f"{str(path)!r} holds schema {meta.get('schema')!r}")
        return cls.from_beta(beta, renormalise=meta["renormalise"])


@dataclass(frozen=True)
class ReweightingFit:
    """Fitted betas and the training loss (mean label cross-entropy over the training set).

    Attributes:
        reweighting: the fitted module (on the model's device).
        losses: ``[epoch + 1]``: the loss at beta = 0, then after each epoch.
    """

    reweighting: AnchorReweighting
    losses: Float[Tensor, " epoch_plus_one"]


def _loss(adapter: Any, module: AnchorReweighting, part: PromptBatch) -> Tensor:
    device = adapter.device
    with adapter.hooks(fwd_hooks=module.hooks(part)):
        final = adapter.final_logits(part.tokens.to(device), part.target_position.to(device))
    label_logits = final.gather(1, part.label_token_ids.to(device)).float()
    return nn.functional.cross_entropy(label_logits, part.gold.to(device), reduction="sum")


def fit_reweighting(
    model: Any,
    prompts: Sequence[ICLPrompt] | PromptBatch,
    *,
    epochs: int = 10,
    lr: float = 0.01,
    batch_size: int = 1,
    seed: int = 0,
    renormalise: bool = False,
    label_token_policy: Policy = "single",
    prepend_bos: bool | None = None,
    progress: bool = True,
) -> ReweightingFit:
    """Fit beta on labelled prompts with the model frozen (paper §3.1.2, App. H).

    Example:
        >>> from anchor_flow import load_model, toy_prompts
        >>> fit = fit_reweighting(load_model("toy-gpt2"), toy_prompts(4), epochs=2, progress=False)
        >>> fit.losses.shape
        torch.Size([3])

    Args:
        model: a TransformerLens model with live attention hooks.
        prompts: training prompts whose query labels are known (paper: 4 per class, each
            wrapped with the same demonstrations as the test prompts).
        epochs, lr: Adam's epochs and learning rate (paper: 10 and 0.01; betas 0.9, 0.999).
        batch_size: prompts per optimiser step (paper: 1).
        seed: seeds the order of the prompts in each epoch.
        renormalise: see :class:`AnchorReweighting`.
        label_token_policy, prepend_bos: as for :func:`anchor_flow.icl.evaluation.run_icl`.
        progress: show a progress bar over epochs.

    Raises:
        ReweightingError: bad settings or a prompt without a query label.
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ReweightingError(f"{name}={value!r}; expected a positive integer")
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ReweightingError(f"lr={lr!r}; expected a positive learning rate such as 0.01")
    adapter = adapt(model)
    batch = prompt_batch(
        adapter, prompts, label_token_policy=label_token_policy, prepend_bos=prepend_bos
    )
    if bool((batch.gold < 0).any()):
        raise ReweightingError(
            f"{int((batch.gold < 0).sum())} training prompts have no query label; "
            "fit_reweighting needs labelled queries"
        )
    check_attention_hooks_live(adapter)
    module = AnchorReweighting.for_model(adapter, batch.n_classes, renormalise=renormalise)
    module.to(adapter.device)
    optimiser = torch.optim.Adam(module.parameters(), lr=lr, betas=(0.9, 0.999))
    generator = torch.Generator().manual_seed(seed)
    n = len(batch)

    def mean_loss() -> float:
        with torch.no_grad():
            total = sum(
                float(_loss(adapter, module, batch.select(list(range(i, min(i + 8, n))))))
                for i in range(0, n, 8)
            )
        return total / n

    with frozen(adapter):
        losses = [mean_loss()]
        for _ in tqdm(range(epochs), desc="reweighting", unit="epoch", disable=not progress):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, batch_size):
                part = batch.select(order[start : start + batch_size])
                optimiser.zero_grad()
                with torch.enable_grad():
                    loss = _loss(adapter, module, part) / len(part)
                    loss.backward()
                optimiser.step()
            losses.append(mean_loss())
    return ReweightingFit(module, torch.tensor(losses, dtype=torch.float64))


def evaluate_reweighting(
    model: Any,
    reweighting: AnchorReweighting,
    prompts: Sequence[ICLPrompt] | PromptBatch,
    **kwargs: Any,
) -> ICLResult:
    """:func:`anchor_flow.icl.evaluation.run_icl` with the re-weighting hooks on every batch.

    Example:
        >>> result = evaluate_reweighting(model, fit.reweighting, prompts)  # doctest: +SKIP
    """
    return run_icl(model, prompts, batch_hooks=reweighting.batch_hooks, **kwargs)
