"""The paper's sampling protocol: test samples, demonstrations and prompts per seed (PAPER.md §0.2,
§0.3 "Test sample" and "Demonstration sampling", §7).

Every draw uses a NumPy generator object built from an explicit seed, never NumPy's global
state, and reproduces the official code's draws exactly:

* test sample: ``Dataset.shuffle(seed=seed).select(range(min(n, N)))``, i.e. the first
  ``min(n, N)`` rows of ``np.random.default_rng(seed).permutation(N)``;
* scheme (a), fixed demonstrations per seed (§2.2, §2.3, §3.1, §3.2):
  ``np.random.seed(seed)`` then a shuffle of all train indices, which
  ``np.random.RandomState(seed).permutation(N)`` reproduces; the first ``shots_per_class``
  rows of each class met along it, in the order met (so the class order is random per seed);
* scheme (b), per-example demonstrations (§2.1): after ``np.random.seed(seed)``, for every
  query and every class, ``np.random.choice(rows_of_class, shots_per_class)`` (with
  replacement, as the code), then one reordering shared by all queries,
  ``default_rng(seed).permutation(C * shots_per_class)`` (the code's ``Dataset.shuffle``).

Fitting prompts to a model's context window is :mod:`anchor_flow.icl.context`.

Deliberately not here: reading datasets (:mod:`anchor_flow.icl.data`), running a model
(:mod:`anchor_flow.icl.evaluation`), and the official code's skipping of train rows with label
< 0: every train label must be a class index here (the paper's train splits have no others).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from anchor_flow.errors import AnchorFlowError
from anchor_flow.icl.prompts import Example, ICLPrompt
from anchor_flow.icl.tasks import Task

__all__ = [
    "PAPER_SEEDS",
    "SamplingError",
    "build_prompts",
    "per_example_demonstrations",
    "sample_demonstrations",
    "sample_test",
    "task_prompts",
]

PAPER_SEEDS: tuple[int, ...] = (42, 43, 44, 45, 46)
"""The five seeds of the paper (Appendix L) and of every official experiment script."""

Scheme = Literal["fixed", "per_example"]


class SamplingError(AnchorFlowError):
    """A dataset, class count or sampling parameter cannot give the requested sample."""


def check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise SamplingError(f"{name}={value!r}; expected a positive integer")


def _check_seed(seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**32:
        raise SamplingError(f"seed={seed!r}; expected an integer in 0..2**32-1 such as 42")


def _check_nonempty(name: str, examples: Sequence[Example]) -> None:
    if len(examples) == 0:
        raise SamplingError(f"{name} is an empty dataset; expected at least one Example")


def _class_rows(train: Sequence[Example], n_classes: int) -> list[list[int]]:
    """Row indices of each class, in dataset order; refuses labels outside 0..n_classes-1."""
    _check_nonempty("train", train)
    if isinstance(n_classes, bool) or not isinstance(n_classes, int | np.integer) or n_classes < 2:
        raise SamplingError(f"n_classes={n_classes!r}; expected an integer >= 2")
    rows: list[list[int]] = [[] for _ in range(n_classes)]
    for i, example in enumerate(train):
        label = example.label
        if label is None or isinstance(label, bool) or not 0 <= label < n_classes:
            raise SamplingError(
                f"train example {i} has label {label!r}; expected a class index in "
                f"0..{n_classes - 1} for n_classes={n_classes}"
            )
        rows[label].append(i)
    return rows


def _check_counts(
    rows: list[list[int]],
    needed: int,
    shots_per_class: int,
    label_names: Sequence[str] | None = None,
) -> None:
    names = list(label_names) if label_names is not None and len(label_names) == len(rows) else None
    for c, members in enumerate(rows):
        if len(members) < needed:
            which = f"class {c} ({names[c]!r})" if names else f"class {c}"
            counts = (
                "{" + ", ".join(f"{n!r}: {len(m)}" for n, m in zip(names, rows, strict=True)) + "}"
                if names
                else str([len(m) for m in rows])
            )
            raise SamplingError(
                f"{which} has {len(members)} training examples but shots_per_class="
                f"{shots_per_class} needs at least {needed}; counts per class: {counts}"
            )


def sample_test(examples: Sequence[Example], *, n: int = 1000, seed: int) -> tuple[Example, ...]:
    """The evaluation sample: ``min(n, N)`` examples in the official code's shuffled order.

    Example:
        >>> test = [Example(f"text {i}", i % 2) for i in range(5)]
        >>> [e.text for e in sample_test(test, n=3, seed=42)]
        ['text 4', 'text 2', 'text 3']

    Args:
        examples: the test split.
        n: how many to take; the paper takes 1000 (all rows when the split is smaller).
        seed: one of :data:`PAPER_SEEDS` to reproduce the paper.

    Returns:
        The first ``min(n, N)`` rows of ``np.random.default_rng(seed).permutation(N)``, which is
        what ``datasets.Dataset.shuffle(seed=seed)`` does.
    """
    check_positive("n", n)
    _check_seed(seed)
    _check_nonempty("test", examples)
    order = np.random.default_rng(seed).permutation(len(examples))
    return tuple(examples[int(i)] for i in order[: min(n, len(examples))])


def sample_demonstrations(
    train: Sequence[Example],
    n_classes: int,
    *,
    shots_per_class: int = 1,
    seed: int,
    fix_class_order: bool = False,
    label_names: Sequence[str] | None = None,
) -> tuple[Example, ...]:
    """One demonstration set per seed, shared by every query (scheme (a), paper §2.2–§3.2).

    Example:
        >>> train = [Example(f"text {i}", i % 2) for i in range(10)]
        >>> [d.label for d in sample_demonstrations(train, 2, shots_per_class=2, seed=42)]
        [0, 1, 1, 0]

    Args:
        train: the demonstration pool; every label must be a class index.
        n_classes: number of classes (the task's label words).
        shots_per_class: demonstrations per class (paper: 1; Appendix F.1: 2).
        seed: one of :data:`PAPER_SEEDS` to reproduce the paper.
        fix_class_order: sort the demonstrations by class (stable); the paper's order is the
            order met along the permutation, so the class order varies with the seed.
        label_names: the classes' names, for a refusal that names them (optional).

    Raises:
        SamplingError: an empty pool, a label out of range, or a class with fewer than
            ``shots_per_class`` rows.
    """
    check_positive("shots_per_class", shots_per_class)
    _check_seed(seed)
    rows = _class_rows(train, n_classes)
    _check_counts(rows, shots_per_class, shots_per_class, label_names)
    # np.random.seed(seed); np.random.shuffle(all_indices) draws exactly these.
    order = np.random.RandomState(seed).permutation(len(train))
    taken = [0] * n_classes
    picked: list[Example] = []
    for i in order:
        example = train[int(i)]
        label = int(example.label)  # type: ignore[arg-type]  # checked by _class_rows
        if taken[label] < shots_per_class:
            taken[label] += 1
            picked.append(example)
            if len(picked) == n_classes * shots_per_class:
                break
    if fix_class_order:
        picked.sort(key=lambda e: int(e.label))  # type: ignore[arg-type]
    return tuple(picked)


def per_example_demonstrations(
    train: Sequence[Example],
    n_classes: int,
    n_queries: int,
    *,
    shots_per_class: int = 1,
    seed: int,
    fix_class_order: bool = False,
    label_names: Sequence[str] | None = None,
) -> list[tuple[Example, ...]]:
    """Fresh demonstrations for every query, one class order per seed (scheme (b), paper §2.1).

    Example:
        >>> train = [Example(f"text {i}", i % 2) for i in range(10)]
        >>> demos = per_example_demonstrations(train, 2, 3, seed=42)
        >>> [[d.label for d in row] for row in demos]
        [[1, 0], [1, 0], [1, 0]]

    Draws are with replacement, as in the official code, so with ``shots_per_class > 1`` a
    demonstration can repeat within one prompt.

    Args:
        train: the demonstration pool; every label must be a class index.
        n_classes: number of classes (the task's label words).
        n_queries: number of queries (test examples) to draw demonstrations for.
        shots_per_class: demonstrations per class and query.
        seed: one of :data:`PAPER_SEEDS` to reproduce the paper.
        fix_class_order: keep class order 0..C-1 instead of the seed's shared reordering.
        label_names: the classes' names, for a refusal that names them (optional).

    Raises:
        SamplingError: an empty pool, a label out of range, or a class with no rows.
    """
    check_positive("n_queries", n_queries)
    check_positive("shots_per_class", shots_per_class)
    _check_seed(seed)
    rows = _class_rows(train, n_classes)
    _check_counts(rows, 1, shots_per_class, label_names)
    pools = [np.asarray(members) for members in rows]
    rng = np.random.RandomState(seed)  # the code's np.random.seed(seed) + np.random.choice
    n_demos = n_classes * shots_per_class
    reorder = (
        np.arange(n_demos) if fix_class_order else np.random.default_rng(seed).permutation(n_demos)
    )
    out = []
    for _ in range(n_queries):
        drawn = np.concatenate([rng.choice(pool, shots_per_class) for pool in pools])
        out.append(tuple(train[int(drawn[j])] for j in reorder))
    return out


def build_prompts(
    task: Task,
    queries: Sequence[Example],
    demonstrations: Sequence[Example] | Sequence[Sequence[Example]],
) -> list[ICLPrompt]:
    """ICL prompts for ``task``: one demonstration tuple shared by all, or one per query.

    Example:
        >>> from anchor_flow.icl.tasks import get_task
        >>> demos = (Example("dull", 0), Example("fun", 1))
        >>> prompts = build_prompts(get_task("sst2"), [Example("great", 1)], demos)
        >>> prompts[0].text().splitlines()[-1]
        'Sentiment:'

    Raises:
        SamplingError: no queries, a per-query list of the wrong length, or a label out of
            range for the task's classes.
    """
    if len(queries) == 0:
        raise SamplingError("build_prompts got no queries; expected at least one Example")
    shared = len(demonstrations) == 0 or isinstance(demonstrations[0], Example)
    if shared:
        per_query: list[Sequence[Example]] = [demonstrations] * len(queries)  # type: ignore[list-item]
    else:
        per_query = list(demonstrations)  # type: ignore[arg-type]
        if len(per_query) != len(queries):
            raise SamplingError(
                f"build_prompts got {len(per_query)} demonstration sets for {len(queries)} "
                "queries; expected one set per query or a single shared set"
            )
    n = task.n_classes
    for i, query in enumerate(queries):
        if query.label is not None and not 0 <= query.label < n:
            raise SamplingError(
                f"query {i} has label {query.label!r}; task {task.name!r} has {n} classes "
                f"(expected None or 0..{n - 1})"
            )
    prompts = []
    for i, (query, demos) in enumerate(zip(queries, per_query, strict=True)):
        for d, demo in enumerate(demos):
            if not isinstance(demo, Example) or demo.label is None or not 0 <= demo.label < n:
                raise SamplingError(
                    f"demonstration {d} of query {i} is {demo!r}; task {task.name!r} expects "
                    f"Examples with a class index in 0..{n - 1}"
                )
        prompts.append(ICLPrompt(task.template, task.label_words, tuple(demos), query))
    return prompts


def task_prompts(
    task: Task,
    train: Sequence[Example],
    test: Sequence[Example],
    *,
    seed: int,
    n_examples: int = 1000,
    shots_per_class: int = 1,
    scheme: Scheme = "fixed",
    fix_class_order: bool = False,
) -> list[ICLPrompt]:
    """The paper's prompts for one task and one seed.

    Example:
        >>> from anchor_flow.icl.tasks import get_task
        >>> train = [Example(f"train {i}", i % 2) for i in range(10)]
        >>> test = [Example(f"test {i}", i % 2) for i in range(4)]
        >>> len(task_prompts(get_task("sst2"), train, test, seed=42))
        4

    Args:
        task: the task (template and label words).
        train: the demonstration pool.
        test: the evaluation split; ``min(n_examples, len(test))`` queries are drawn.
        seed: one of :data:`PAPER_SEEDS` to reproduce the paper.
        n_examples: queries per seed (paper: 1000).
        shots_per_class: demonstrations per class.
        scheme: ``"fixed"`` (scheme (a): one demonstration set per seed, §2.2–§3.2) or
            ``"per_example"`` (scheme (b): fresh demonstrations per query, §2.1 saliency).
        fix_class_order: demonstrations in class order 0..C-1 instead of the seed's order.

    A task with a ``prompt_source`` (e.g. ``synthetic-k2``) generates its prompts itself:
    ``train`` and ``test`` are ignored, and so is ``scheme`` (every prompt draws its own
    demonstrations and label words).
    """
    if scheme not in ("fixed", "per_example"):
        raise SamplingError(f"scheme={scheme!r}; expected 'fixed' or 'per_example'")
    if task.prompt_source is not None:
        for name, value in (("n_examples", n_examples), ("shots_per_class", shots_per_class)):
            check_positive(name, value)
        _check_seed(seed)
        if fix_class_order:
            raise SamplingError(
                f"task {task.name!r} generates its own prompts in a random class order; "
                "fix_class_order=True is not supported for it"
            )
        return list(task.prompt_source(seed, n_examples, shots_per_class))
    queries = sample_test(test, n=n_examples, seed=seed)
    demonstrations: Sequence[Example] | Sequence[Sequence[Example]]
    if scheme == "fixed":
        demonstrations = sample_demonstrations(
            train,
            task.n_classes,
            shots_per_class=shots_per_class,
            seed=seed,
            fix_class_order=fix_class_order,
            label_names=task.label_names,
        )
    else:
        demonstrations = per_example_demonstrations(
            train,
            task.n_classes,
            len(queries),
            shots_per_class=shots_per_class,
            seed=seed,
            fix_class_order=fix_class_order,
            label_names=task.label_names,
        )
    return build_prompts(task, queries, demonstrations)
