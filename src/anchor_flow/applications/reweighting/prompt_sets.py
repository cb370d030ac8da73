"""§3.1's prompt sets per seed (Table 1, PAPER.md §4): the 1-shot test prompts, the auxiliary
training prompts, the k-shot baseline's prompts, fitted to the model's context.

:func:`anchor_flow.applications.reweighting.protocol.run_reweighting` runs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from anchor_flow.applications.reweighting.beta import ReweightingError
from anchor_flow.icl.prompts import Example, ICLPrompt, tokenize_prompts
from anchor_flow.icl.sampling import build_prompts, sample_demonstrations, sample_test
from anchor_flow.icl.tasks import Task

__all__ = [
    "ReweightingPrompts",
    "demonstrations_per_class",
    "fit_reweighting_prompts",
    "reweighting_prompts",
]

Policy = Literal["single", "first", "all"]


@dataclass(frozen=True)
class ReweightingPrompts:
    """The prompt sets of one seed (paper §3.1.2 and Table 1).

    Attributes:
        train: the auxiliary examples as queries, each wrapped with the demonstrations.
        test: the evaluation queries with the same demonstrations (vanilla 1-shot, re-weighted).
        k_shot: the evaluation queries with the auxiliary examples added as demonstrations.
        k_shot_shots: demonstrations per class of ``k_shot`` (1 + extra, or fewer to fit).
        seed: the sampling seed of these sets; :func:`~anchor_flow.applications.reweighting.
            protocol.run_reweighting` seeds its training order with it, as the CLI does.
    """

    train: list[ICLPrompt]
    test: list[ICLPrompt]
    k_shot: list[ICLPrompt]
    k_shot_shots: int
    seed: int | None = None


def reweighting_prompts(
    task: Task,
    train: Sequence[Example],
    test: Sequence[Example],
    *,
    seed: int,
    n_examples: int = 1000,
    train_per_class: int = 4,
    tokenizer: Any = None,
    max_length: int | None = None,
    label_token_policy: Policy = "single",
) -> ReweightingPrompts:
    """The paper's prompts for one seed: 1 demonstration per class, 4 extra per class.

    The demonstrations and the extra examples are the first ``1 + train_per_class`` rows
    of each class along the seed's permutation (the official ``sample_two_set_with_shot_per_
    class``), so the k-shot demonstrations are the 1-shot ones plus the extra examples. With
    ``tokenizer`` and ``max_length``, the k-shot baseline drops shots until its longest prompt
    fits (the paper used 3 shots for AGNews). A task that generates its prompts (synthetic)
    draws the three sets from ``seed``, ``seed + 1`` (train) and ``seed`` with more shots.

    Example:
        >>> from anchor_flow.icl.tasks import get_task
        >>> pool = [Example(f"text {i}", i % 2) for i in range(20)]
        >>> sets = reweighting_prompts(get_task("sst2"), pool, pool[:4], seed=42)
        >>> len(sets.train), len(sets.test), sets.k_shot_shots
        (8, 4, 5)
    """
    if (
        isinstance(train_per_class, bool)
        or not isinstance(train_per_class, int)
        or train_per_class < 1
    ):
        raise ReweightingError(f"train_per_class={train_per_class!r}; expected a positive integer")
    n_classes = task.n_classes

    def fits(prompts: list[ICLPrompt]) -> bool:
        if tokenizer is None or max_length is None:
            return True
        batch = tokenize_prompts(prompts, tokenizer, label_token_policy=label_token_policy,
                                 max_length=10**9)  # fmt: skip
        return int(batch.lengths.max()) <= max_length

    if task.prompt_source is not None:
        source = task.prompt_source
        train_set = list(source(seed + 1, n_classes * train_per_class, 1))
        test_set = list(source(seed, n_examples, 1))
        shots = 1 + train_per_class
        while shots > 2 and not fits(list(source(seed, n_examples, shots))):
            shots -= 1
        return ReweightingPrompts(
            train_set, test_set, list(source(seed, n_examples, shots)), shots, seed
        )
    everything = sample_demonstrations(
        train,
        n_classes,
        shots_per_class=1 + train_per_class,
        seed=seed,
        label_names=task.label_names,
    )
    seen: set[int] = set()
    demonstrations: list[Example] = []
    extra: list[Example] = []
    for example in everything:
        label = int(example.label)  # type: ignore[arg-type]  # sampled rows are labelled
        (extra if label in seen else demonstrations).append(example)
        seen.add(label)
    queries = sample_test(test, n=n_examples, seed=seed)
    test_set = build_prompts(task, queries, demonstrations)
    shots = 1 + train_per_class
    k_shot = build_prompts(task, queries, everything)
    while shots > 2 and not fits(k_shot):
        shots -= 1
        k_shot = build_prompts(
            task, queries, sample_demonstrations(train, n_classes, shots_per_class=shots, seed=seed)
        )
    return ReweightingPrompts(
        build_prompts(task, extra, demonstrations), test_set, k_shot, shots, seed
    )


def demonstrations_per_class(prompts: Sequence[ICLPrompt]) -> int:
    """The fewest demonstrations any class has in any of ``prompts`` (what a k-shot run had).

    Example:
        >>> from anchor_flow.icl.prompts import Template
        >>> demos = (Example("a", 0), Example("b", 1), Example("c", 0))
        >>> demonstrations_per_class([ICLPrompt(Template(), (" x", " y"), demos, Example("d"))])
        1
    """
    return min(
        (sum(d.label == c for d in p.demonstrations) for p in prompts
         for c in range(len(p.label_words))),
        default=0,
    )  # fmt: skip


def fit_reweighting_prompts(
    prompts: ReweightingPrompts,
    tokenizer: Any,
    max_length: int,
    *,
    on_overflow: Literal["error", "skip"] = "error",
    label_token_policy: Policy = "single",
) -> tuple[ReweightingPrompts, int]:
    """The sets with every prompt longer than ``max_length`` dropped, and how many queries were.

    A test query is dropped from both ``test`` and ``k_shot`` (the conditions stay paired).

    Raises:
        ContextLengthError: ``on_overflow="error"`` and a prompt is too long.
        SamplingError: every training or test prompt is too long.
    """
    from anchor_flow.icl.context import fit_to_context
    from anchor_flow.icl.sampling import SamplingError

    def lengths(sets: list[ICLPrompt]) -> list[int]:
        batch = tokenize_prompts(sets, tokenizer, label_token_policy=label_token_policy,
                                 max_length=10**9)  # fmt: skip
        return [int(n) for n in batch.lengths]

    train, _ = fit_to_context(prompts.train, tokenizer, max_length, on_overflow=on_overflow,
                              label_token_policy=label_token_policy)  # fmt: skip
    pairs = list(zip(prompts.test, prompts.k_shot, strict=True))
    both = [max(a, b) for a, b in zip(lengths(prompts.test), lengths(prompts.k_shot), strict=True)]
    if on_overflow == "error" or all(n <= max_length for n in both):
        fit_to_context(prompts.test, tokenizer, max_length, on_overflow=on_overflow,
                       label_token_policy=label_token_policy)  # fmt: skip
        return replace(prompts, train=train), 0
    kept = [pair for pair, n in zip(pairs, both, strict=True) if n <= max_length]
    if not kept:
        raise SamplingError(
            f"all {len(pairs)} re-weighting test prompts are longer than max_length="
            f"{max_length} tokens (1-shot or k-shot); use shorter examples or a longer context"
        )
    skipped = len(pairs) - len(kept)
    test, k_shot = [p for p, _ in kept], [k for _, k in kept]
    return replace(prompts, train=train, test=test, k_shot=k_shot), skipped
