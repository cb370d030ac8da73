"""The anchor heads' causal check (issue 24): the head-level analogue of paper §2.2 (claim C3).

:func:`run_head_blocking` blocks the label-word flow in chosen heads only, with
:mod:`anchor_flow.analysis.blocking`'s hooks and a head axis (:func:`~anchor_flow.analysis.
blocking.head_mask`): the edges ``label word <- text`` in the gathering heads and ``target <-
label word`` in the reading heads, every other head bitwise unchanged. The control
(:func:`random_heads`) blocks the same edges in as many random heads of the same layers (never
a chosen head), drawn per prompt from ``(seed, prompt id)``, so the two arms are paired on the
same prompts and the draw does not depend on the batch size. Both arms are compared with the
unblocked baseline of the same call: label loyalty, word loyalty, accuracy
(:mod:`anchor_flow.analysis.loyalty`).

Deliberately not here: which heads to choose (:mod:`anchor_flow.analysis.heads.flows`),
the verdict (:mod:`anchor_flow.analysis.findings.heads`), plotting.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from anchor_flow.analysis.blocking import BlockingError, BlockMode, blocking_hooks, head_mask
from anchor_flow.analysis.blocking import role_pair_mask as pair_mask
from anchor_flow.analysis.loyalty import METRICS, LoyaltyResult, word_loyalty
from anchor_flow.icl.evaluation import prompt_batch, run_icl
from anchor_flow.icl.prompts import ICLPrompt
from anchor_flow.icl.roles import PromptBatch, Role
from anchor_flow.models.tl_adapter import adapt

__all__ = ["ARMS", "HeadBlockingResult", "random_heads", "run_head_blocking"]

SCHEMA = "anchor_flow.head_blocking/1"
ARMS = ("anchor_heads", "random_heads")
Heads = Sequence[tuple[int, int]]


def _pairs(heads: Sequence[Sequence[int]]) -> tuple[tuple[int, int], ...]:
    return tuple((int(layer), int(head)) for layer, head in heads)


def random_heads(
    chosen: Heads, n_heads: int, *, seed: int, prompt_ids: Sequence[int]
) -> Int[Tensor, "prompt chosen"]:
    """Per prompt, a random head of the same layer for each chosen head (never a chosen one).

    The draw of a prompt depends only on ``(seed, prompt id)``; within a layer the heads are
    drawn without replacement.

    Example:
        >>> random_heads([(0, 0), (1, 0)], 3, seed=0, prompt_ids=[0, 1]).shape
        torch.Size([2, 2])

    Raises:
        BlockingError: a layer has fewer unchosen heads than chosen ones, or a negative seed.
    """
    chosen = _pairs(chosen)
    if seed < 0:
        raise BlockingError(f"seed={seed}; expected a non-negative integer")
    layers = sorted({layer for layer, _ in chosen})
    out = torch.zeros(len(prompt_ids), len(chosen), dtype=torch.long)
    for layer in layers:
        slots = [i for i, (lay, _) in enumerate(chosen) if lay == layer]
        taken = {head for lay, head in chosen if lay == layer}
        free = [h for h in range(n_heads) if h not in taken]
        if len(free) < len(slots):
            raise BlockingError(
                f"layer {layer} has {len(slots)} chosen heads but only {len(free)} other heads "
                "to draw the random control from; choose fewer heads in that layer"
            )
        for row, prompt_id in enumerate(prompt_ids):
            rng = np.random.default_rng([seed, int(prompt_id), layer, 24])
            picked = rng.choice(len(free), size=len(slots), replace=False)
            out[row, slots] = torch.tensor([free[int(k)] for k in picked])
    return out


@dataclass(frozen=True)
class HeadBlockingResult(LoyaltyResult):
    """Per-prompt outcomes of blocking the anchor heads and as many random heads.

    Attributes:
        gathering_heads, reading_heads: the chosen ``(layer, head)`` pairs.
        baseline_predictions: predicted class without intervention.
        predictions: ``[arm, prompt]`` predicted class per arm (:data:`ARMS`).
        word_jaccard: ``[arm, prompt]`` Jaccard of the top-k tokens with vs without.
        gold: the query's class, -1 when unknown.
        random_gathering, random_reading: ``[prompt, chosen]`` the control's head in the
            layer of each chosen gathering / reading head.
        run, run_names, settings: as every pooled result.
    """

    gathering_heads: tuple[tuple[int, int], ...]
    reading_heads: tuple[tuple[int, int], ...]
    baseline_predictions: Int[Tensor, " prompt"]
    predictions: Int[Tensor, "arm prompt"]
    word_jaccard: Float[Tensor, "arm prompt"]
    gold: Int[Tensor, " prompt"]
    random_gathering: Int[Tensor, "prompt gathering"]
    random_reading: Int[Tensor, "prompt reading"]
    run: Int[Tensor, " prompt"]
    run_names: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)

    _STEM, _SCHEMA, _WHAT = "head_blocking", SCHEMA, "a head-blocking result"
    _ARRAYS = ("baseline_predictions", "predictions", "word_jaccard", "gold",
               "random_gathering", "random_reading", "run")  # fmt: skip

    def __post_init__(self) -> None:
        self._check_outcome_shapes(len(ARMS), "arms", "arm")
        self._detach_arrays()

    def summary_frame(self, *, level: float = 0.95) -> pd.DataFrame:
        """One row per (arm, metric): ``arm``, ``metric``, ``mean``, ``ci_low``, ``ci_high``,
        ``n_prompts`` (means over runs; bootstrap over runs with two or more, else prompts)."""
        rows = []
        for metric in METRICS:
            means = self._run_means(self.per_prompt(metric), level)
            for index, arm in enumerate(ARMS):
                rows.append({"arm": arm, "metric": metric, **means.row(index),
                             "n_prompts": self.n_prompts})  # fmt: skip
        return pd.DataFrame(rows)

    def to_frame(self) -> pd.DataFrame:
        """Long form: one row per (arm, prompt) with the three per-prompt metrics."""
        metrics = {m: self.per_prompt(m) for m in METRICS}
        runs = [self.run_names[r] for r in self.run.tolist()]
        frames = [pd.DataFrame({"arm": arm, "run": runs, "prompt": range(self.n_prompts),
                                **{m: metrics[m][i].numpy() for m in METRICS},
                                "baseline_correct": self.baseline_accuracy().numpy()})
                  for i, arm in enumerate(ARMS)]  # fmt: skip
        return pd.concat(frames, ignore_index=True)

    def summary(self, *, level: float = 0.95) -> dict[str, Any]:
        """JSON-safe summary: the heads, the arms' means and the baseline's accuracy."""
        base = self._run_means(self.baseline_accuracy()[None], level)
        return {"schema": SCHEMA, "settings": self.settings, "runs": list(self.run_names),
                "n_prompts": self.n_prompts,
                "gathering_heads": [list(h) for h in self.gathering_heads],
                "reading_heads": [list(h) for h in self.reading_heads],
                "baseline_accuracy": base.row(0),
                "means": self.summary_frame(level=level).to_dict(orient="records")}  # fmt: skip

    @classmethod
    def _check_concat(cls, results: Sequence[HeadBlockingResult], names: tuple[str, ...]) -> None:
        # Each seed may choose its own heads; pooled, the first result's are reported.
        cls._check_unique_run_names(names)

    def _meta(self) -> dict[str, Any]:
        return {**super()._meta(), "gathering_heads": [list(h) for h in self.gathering_heads],
                "reading_heads": [list(h) for h in self.reading_heads]}  # fmt: skip

    @classmethod
    def _fields_from_meta(cls, meta: Mapping[str, Any]) -> dict[str, Any]:
        return {**super()._fields_from_meta(meta),
                "gathering_heads": _pairs(meta["gathering_heads"]),
                "reading_heads": _pairs(meta["reading_heads"])}  # fmt: skip


def _arm_hooks(
    model: Any, part: PromptBatch, gathering: Heads, reading: Heads,
    random_g: Tensor | None, random_r: Tensor | None, n_heads: int, mode: BlockMode,
) -> list[Any]:  # fmt: skip
    """Blocking hooks of one arm: the chosen heads (random_* None) or the drawn ones."""
    edges = {
        "g": pair_mask(part, Role.LABEL, Role.TEXT),
        "r": pair_mask(part, Role.TARGET, Role.LABEL),
    }
    masks: dict[int, Tensor] = {}
    for key, heads, drawn in (("g", gathering, random_g), ("r", reading, random_r)):
        for slot, (layer, head) in enumerate(heads):
            chosen = torch.zeros(len(part), n_heads, dtype=torch.bool)
            if drawn is None:
                chosen[:, head] = True
            else:
                chosen[torch.arange(len(part)), drawn[:, slot]] = True
            mask = head_mask(edges[key], chosen, n_heads)
            masks[layer] = masks[layer] | mask if layer in masks else mask
    return blocking_hooks(model, masks, mode=mode)


def run_head_blocking(
    model: Any,
    prompts: Sequence[ICLPrompt] | PromptBatch,
    *,
    gathering_heads: Heads,
    reading_heads: Heads,
    mode: BlockMode = "renormalise",
    top_k: int = 5,
    seed: int = 0,
    run_name: str | None = None,
    batch_size: int = 8,
    label_token_policy: Literal["single", "first", "all"] = "single",
    prepend_bos: bool | None = None,
    extra_hooks: Sequence[tuple[Any, Callable[..., Any]]] = (),
    first_prompt_id: int = 0,
    progress: bool = True,
) -> HeadBlockingResult:
    """Loyalty and accuracy with the label-word flow blocked in chosen heads vs random heads.

    Example:
        >>> from anchor_flow import load_model, toy_prompts
        >>> result = run_head_blocking(load_model("toy-gpt2"), toy_prompts(4),
        ...     gathering_heads=[(0, 0)], reading_heads=[(3, 1)], progress=False)
        >>> list(result.summary_frame()["arm"].unique())
        ['anchor_heads', 'random_heads']

    Args:
        model: a TransformerLens model with live attention hooks.
        prompts: ICL prompts or a PromptBatch.
        gathering_heads: ``(layer, head)`` pairs whose ``label <- text`` edges are blocked.
        reading_heads: ``(layer, head)`` pairs whose ``target <- label`` edges are blocked.
        mode: ``"renormalise"`` (official pre-softmax mask) or ``"zero"``.
        top_k: tokens compared by word loyalty (paper 5).
        seed: seed of the random heads (non-negative).
        run_name: the run's name in pooled results (default ``"seed-<seed>"``).
        batch_size: prompts per forward pass; results do not depend on it.
        label_token_policy: multi-token label words (see ``tokenize_prompts``).
        prepend_bos: force a BOS token on or off (default: what the tokenizer does).
        extra_hooks: your own forward hooks, active in the baseline and both arms.
        first_prompt_id: the random draw's id of the first prompt (a part of a longer list
            passes its offset, so that its draws equal the whole list's).
        progress: show a progress bar over the arms.

    Raises:
        BlockingError: no heads, a head out of range, or too few other heads in a layer.
    """
    adapter = adapt(model)
    gathering, reading = _pairs(gathering_heads), _pairs(reading_heads)
    bad = [h for h in (*gathering, *reading)
           if not (0 <= h[0] < adapter.n_layers and 0 <= h[1] < adapter.n_heads)]  # fmt: skip
    if bad or not (gathering or reading):
        raise BlockingError(
            f"heads {bad or 'none'}; expected at least one (layer, head) with layer in "
            f"0..{adapter.n_layers - 1} and head in 0..{adapter.n_heads - 1}"
        )
    batch = prompt_batch(adapter, prompts, label_token_policy=label_token_policy,
                         prepend_bos=prepend_bos)  # fmt: skip
    ids = list(range(first_prompt_id, first_prompt_id + len(batch)))
    # One draw over both kinds: a random head is never one of either kind's chosen heads.
    drawn = random_heads((*gathering, *reading), adapter.n_heads, seed=seed, prompt_ids=ids)
    random_g, random_r = drawn[:, : len(gathering)], drawn[:, len(gathering) :]
    baseline = run_icl(model, batch, batch_size=batch_size, top_k=top_k, progress=False,
                       extra_hooks=extra_hooks)  # fmt: skip
    predictions, jaccard = [], []
    for arm in tqdm(ARMS, desc="head blocking", unit="arm", disable=not progress):

        def hooks(rows: Tensor, part: PromptBatch, arm: str = arm) -> list[Any]:
            if arm == "anchor_heads":
                return _arm_hooks(model, part, gathering, reading, None, None,
                                  adapter.n_heads, mode)  # fmt: skip
            return _arm_hooks(model, part, gathering, reading, random_g[rows], random_r[rows],
                              adapter.n_heads, mode)  # fmt: skip

        blocked = run_icl(model, batch, batch_size=batch_size, top_k=top_k, batch_hooks=hooks,
                          extra_hooks=extra_hooks, progress=False)  # fmt: skip
        predictions.append(blocked.predictions)
        jaccard.append(word_loyalty(baseline.top_tokens, blocked.top_tokens))
    settings = {**baseline.settings, "experiment": "heads", "mode": mode, "seed": seed,
                "top_k": top_k}  # fmt: skip
    return HeadBlockingResult(
        gathering_heads=gathering, reading_heads=reading,
        baseline_predictions=baseline.predictions, predictions=torch.stack(predictions),
        word_jaccard=torch.stack(jaccard), gold=baseline.gold,
        random_gathering=random_g, random_reading=random_r,
        run=torch.zeros(len(batch), dtype=torch.long),
        run_names=(run_name or f"seed-{seed}",), settings=settings,
    )  # fmt: skip
