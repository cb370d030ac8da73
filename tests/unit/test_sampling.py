"""Unit tests of anchor_flow.icl.sampling (no model): the official protocol as an oracle."""

from __future__ import annotations

import inspect
import logging
import re

import numpy as np
import pytest

from anchor_flow.errors import ContextLengthError
from anchor_flow.icl.context import fit_to_context
from anchor_flow.icl.prompts import Example, ICLPrompt, tokenize_prompts
from anchor_flow.icl.sampling import (
    PAPER_SEEDS,
    SamplingError,
    build_prompts,
    per_example_demonstrations,
    sample_demonstrations,
    sample_test,
    task_prompts,
)
from anchor_flow.icl.tasks import get_task
from anchor_flow.testbeds.toy import build_toy_tokenizer

AGNEWS = get_task("agnews")  # 4 classes


def make_split(n: int, n_classes: int, prefix: str, seed: int = 0) -> list[Example]:
    """Labelled rows with an uneven, shuffled class distribution (like a real split)."""
    labels = np.random.default_rng(seed).integers(0, n_classes, n)
    labels[:n_classes] = np.arange(n_classes)  # every class present
    return [Example(f"{prefix} {i}", int(label)) for i, label in enumerate(labels)]


def unchecked(function):
    """The function without the runtime type checker pytest switches on (see pyproject), so
    that the library's own validation, which users see, is what is tested."""
    return inspect.unwrap(function)


TRAIN = make_split(300, 4, "train")
TEST = make_split(50, 4, "test", seed=1)


# --- an independent re-implementation of the official code, with NumPy's global state --------
def official_test_sample(examples, n, seed):
    # datasets.Dataset.shuffle(seed=seed) draws np.random.default_rng(seed).permutation(N).
    permutation = np.random.default_rng(seed).permutation(len(examples))
    return [examples[i] for i in permutation][: min(n, len(examples))]


def official_scheme_a(train, shot, seed):
    # icl/utils/other.py::sample_two_set_with_shot_per_class, first set only.
    saved = np.random.get_state()
    np.random.seed(seed)
    all_indices = list(range(len(train)))
    np.random.shuffle(all_indices)
    np.random.set_state(saved)
    count: dict[int, int] = {}
    chosen = []
    for index in all_indices:
        label = train[index].label
        if label < 0:
            continue
        count.setdefault(label, 0)
        if count[label] < shot:
            chosen.append(index)
            count[label] += 1
    return [train[i] for i in chosen]


def official_scheme_b(train, n_classes, n_queries, shot, seed):
    # attention_attr.py::prepare_analysis_dataset.
    saved = np.random.get_state()
    np.random.seed(seed)
    class_indices = [[i for i, e in enumerate(train) if e.label == c] for c in range(n_classes)]
    out = []
    for _ in range(n_queries):
        drawn = []
        for c in range(n_classes):
            drawn.extend(int(i) for i in np.random.choice(class_indices[c], shot))
        demos = [train[i] for i in drawn]
        order = np.random.default_rng(seed).permutation(len(demos))  # Dataset.shuffle(seed)
        out.append([demos[i] for i in order])
    np.random.set_state(saved)
    return out


@pytest.mark.parametrize("seed", PAPER_SEEDS)
def test_sample_test_equals_the_official_draw(seed):
    assert list(sample_test(TEST, n=20, seed=seed)) == official_test_sample(TEST, 20, seed)


@pytest.mark.parametrize("seed", PAPER_SEEDS)
@pytest.mark.parametrize("shots", [1, 2])
def test_scheme_a_equals_the_official_draw(seed, shots):
    expected = official_scheme_a(TRAIN, shots, seed)
    assert list(sample_demonstrations(TRAIN, 4, shots_per_class=shots, seed=seed)) == expected


@pytest.mark.parametrize("seed", PAPER_SEEDS)
@pytest.mark.parametrize("shots", [1, 2])
def test_scheme_b_equals_the_official_draw(seed, shots):
    expected = official_scheme_b(TRAIN, 4, 7, shots, seed)
    got = per_example_demonstrations(TRAIN, 4, 7, shots_per_class=shots, seed=seed)
    assert [list(d) for d in got] == expected


def test_the_global_numpy_state_is_untouched():
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    sample_test(TEST, seed=42)
    sample_demonstrations(TRAIN, 4, seed=42)
    per_example_demonstrations(TRAIN, 4, 3, seed=42)
    assert np.array_equal(np.random.get_state()[1], before)


def test_sample_test_size_is_min_of_n_and_the_split():
    assert len(sample_test(TEST, n=1000, seed=42)) == len(TEST)
    assert len(sample_test(TEST, n=10, seed=42)) == 10
    assert len(set(sample_test(TEST, seed=42))) == len(TEST)  # a permutation: no repeats


def test_same_seed_same_prompts_other_seed_other_prompts():
    for scheme in ("fixed", "per_example"):
        kw = dict(n_examples=10, scheme=scheme)
        first = task_prompts(AGNEWS, TRAIN, TEST, seed=42, **kw)
        assert first == task_prompts(AGNEWS, TRAIN, TEST, seed=42, **kw)
        assert first != task_prompts(AGNEWS, TRAIN, TEST, seed=43, **kw)


@pytest.mark.parametrize("shots", [1, 2, 3])
def test_exactly_shots_per_class(shots):
    demos = sample_demonstrations(TRAIN, 4, shots_per_class=shots, seed=44)
    assert sorted(d.label for d in demos) == sorted(list(range(4)) * shots)
    assert len(set(demos)) == len(demos)  # scheme (a) never repeats a row
    for row in per_example_demonstrations(TRAIN, 4, 5, shots_per_class=shots, seed=44):
        assert sorted(d.label for d in row) == sorted(list(range(4)) * shots)


def test_scheme_a_class_order_varies_with_the_seed_and_can_be_fixed():
    orders = {tuple(d.label for d in sample_demonstrations(TRAIN, 4, seed=s)) for s in PAPER_SEEDS}
    assert len(orders) > 1
    for seed in PAPER_SEEDS:
        free = sample_demonstrations(TRAIN, 4, shots_per_class=2, seed=seed)
        fixed = sample_demonstrations(TRAIN, 4, shots_per_class=2, seed=seed, fix_class_order=True)
        assert [d.label for d in fixed] == [0, 0, 1, 1, 2, 2, 3, 3]
        assert sorted(free, key=lambda d: d.label) == list(fixed)  # same demos, stable sort


def test_scheme_b_demos_differ_per_example_but_share_the_class_order():
    rows = per_example_demonstrations(TRAIN, 4, 20, seed=42)
    assert len(set(rows)) > 1
    assert len({tuple(d.label for d in row) for row in rows}) == 1
    orders = set()
    for seed in PAPER_SEEDS:
        row = per_example_demonstrations(TRAIN, 4, 1, seed=seed)[0]
        orders.add(tuple(d.label for d in row))
    assert len(orders) > 1
    fixed = per_example_demonstrations(
        TRAIN, 4, 5, shots_per_class=2, seed=42, fix_class_order=True
    )
    assert all([d.label for d in row] == [0, 0, 1, 1, 2, 2, 3, 3] for row in fixed)


def test_task_prompts_assembles_the_paper_prompts():
    prompts = task_prompts(AGNEWS, TRAIN, TEST, seed=45, n_examples=5, shots_per_class=2)
    demos = sample_demonstrations(TRAIN, 4, shots_per_class=2, seed=45)
    assert [p.query for p in prompts] == list(sample_test(TEST, n=5, seed=45))
    assert all(p.demonstrations == demos for p in prompts)
    assert all(p.label_words == AGNEWS.label_words for p in prompts)
    assert prompts[0].text().startswith("Article: ")
    assert prompts[0].text().endswith("\nAnswer:")
    per_example = task_prompts(AGNEWS, TRAIN, TEST, seed=45, n_examples=5, scheme="per_example")
    expected = per_example_demonstrations(TRAIN, 4, 5, seed=45)
    assert [p.demonstrations for p in per_example] == expected


def test_build_prompts_shared_or_per_query():
    queries = [Example("q0", 0), Example("q1")]
    shared = (Example("a", 0), Example("b", 1), Example("c", 2), Example("d", 3))
    prompts = build_prompts(AGNEWS, queries, shared)
    assert [p.demonstrations for p in prompts] == [shared, shared]
    per_query = [shared, shared[::-1]]
    prompts = build_prompts(AGNEWS, queries, per_query)
    assert [p.demonstrations for p in prompts] == [shared, shared[::-1]]
    zero_shot = build_prompts(AGNEWS, queries, ())
    assert zero_shot[1].text() == "Article: q1\nAnswer:"


# --- fit_to_context ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_tok():
    return build_toy_tokenizer()


@pytest.fixture(scope="module")
def mixed_prompts():
    sst2 = get_task("sst2")
    train = [Example("a dull film", 0), Example("a warm and funny film", 1)]
    long_demos = tuple(train * 6)
    queries = [Example("great", 1), Example("awful", 0), Example("fine", 1)]
    return [
        build_prompts(sst2, queries[:1], train)[0],
        build_prompts(sst2, queries[1:2], long_demos)[0],
        build_prompts(sst2, queries[2:], train)[0],
    ]


def lengths_of(prompts, tokenizer):
    return tokenize_prompts(prompts, tokenizer, max_length=10**6).lengths.tolist()


def test_fit_to_context_keeps_everything_that_fits(mixed_prompts, toy_tok):
    kept, dropped = fit_to_context(mixed_prompts, toy_tok, max(lengths_of(mixed_prompts, toy_tok)))
    assert kept == mixed_prompts
    assert dropped == 0


def test_fit_to_context_skip_drops_long_prompts_and_logs(mixed_prompts, toy_tok, caplog):
    lengths = lengths_of(mixed_prompts, toy_tok)
    limit = max(lengths[0], lengths[2])
    assert lengths[1] > limit
    with caplog.at_level(logging.WARNING, logger="anchor_flow.icl.context"):
        kept, dropped = fit_to_context(mixed_prompts, toy_tok, limit, on_overflow="skip")
    assert kept == [mixed_prompts[0], mixed_prompts[2]]
    assert dropped == 1
    assert f"dropped 1 of 3 prompts longer than {limit} tokens" in caplog.text


def test_fit_to_context_error_names_the_prompt(mixed_prompts, toy_tok):
    lengths = lengths_of(mixed_prompts, toy_tok)
    limit = lengths[0]
    message = (
        f"prompt 1 is {lengths[1]} tokens, longer than max_length={limit}; use fewer "
        "demonstrations (shots_per_class) or on_overflow='skip'"
    )
    with pytest.raises(ContextLengthError, match=re.escape(message)):
        fit_to_context(mixed_prompts, toy_tok, limit)


def test_fit_to_context_counts_a_prepended_bos(mixed_prompts, toy_tok):
    limit = lengths_of(mixed_prompts[:1], toy_tok)[0]
    assert fit_to_context(mixed_prompts[:1], toy_tok, limit)[1] == 0
    with pytest.raises(ContextLengthError, match=f"is {limit + 1} tokens"):
        fit_to_context(mixed_prompts[:1], toy_tok, limit, prepend_bos=True)


def test_fit_to_context_errors(mixed_prompts, toy_tok):
    with pytest.raises(SamplingError, match="all 3 prompts are longer than max_length=5 tokens"):
        fit_to_context(mixed_prompts, toy_tok, 5, on_overflow="skip")
    with pytest.raises(SamplingError, match="fit_to_context got no prompts"):
        fit_to_context([], toy_tok, 1024)
    with pytest.raises(SamplingError, match="on_overflow='drop'; expected 'error' or 'skip'"):
        unchecked(fit_to_context)(mixed_prompts, toy_tok, 1024, on_overflow="drop")
    with pytest.raises(SamplingError, match="max_length=0; expected a positive integer"):
        fit_to_context(mixed_prompts, toy_tok, 0)


# --- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: sample_test(TEST, n=0, seed=42), "n=0; expected a positive integer"),
        (lambda: sample_test([], seed=42), "test is an empty dataset"),
        (lambda: sample_test(TEST, seed=-1), "seed=-1; expected an integer in 0..2**32-1"),
        (
            lambda: unchecked(sample_test)(TEST, seed=4.2),
            "seed=4.2; expected an integer in 0..2**32-1",
        ),
        (
            lambda: sample_demonstrations(TRAIN, 4, seed=2**32),
            "seed=4294967296; expected an integer in 0..2**32-1",
        ),
        (lambda: sample_demonstrations([], 4, seed=42), "train is an empty dataset"),
        (
            lambda: sample_demonstrations(TRAIN, 4, shots_per_class=0, seed=42),
            "shots_per_class=0; expected a positive integer",
        ),
        (lambda: sample_demonstrations(TRAIN, 1, seed=42), "n_classes=1; expected an integer >= 2"),
        (
            lambda: sample_demonstrations(TRAIN, 3, seed=42),
            "train example 3 has label 3; expected a class index in 0..2 for n_classes=3",
        ),
        (
            lambda: sample_demonstrations([Example("x", 0), Example("y")], 2, seed=42),
            "train example 1 has label None; expected a class index in 0..1",
        ),
        (
            lambda: sample_demonstrations(
                [*TRAIN[:4], Example("x", 0)], 4, shots_per_class=2, seed=1
            ),
            "class 1 has 1 training examples but shots_per_class=2 needs at least 2; "
            "counts per class: [2, 1, 1, 1]",
        ),
        (
            lambda: per_example_demonstrations(TRAIN, 4, 0, seed=42),
            "n_queries=0; expected a positive integer",
        ),
        (
            lambda: per_example_demonstrations([Example("x", 0)], 2, 1, seed=42),
            "class 1 has 0 training examples but shots_per_class=1 needs at least 1",
        ),
        (
            lambda: build_prompts(AGNEWS, [], ()),
            "build_prompts got no queries",
        ),
        (
            lambda: build_prompts(AGNEWS, TEST[:3], [(), ()]),
            "build_prompts got 2 demonstration sets for 3 queries",
        ),
        (
            lambda: build_prompts(get_task("sst2"), TEST[:1], TRAIN[:4]),
            "demonstration 2 of query 0 is Example(text='train 2', label=2); task 'sst2' "
            "expects Examples with a class index in 0..1",
        ),
        (
            lambda: build_prompts(get_task("sst2"), [Example("q", 3)], ()),
            "query 0 has label 3; task 'sst2' has 2 classes (expected None or 0..1)",
        ),
        (
            lambda: task_prompts(get_task("sst2"), TRAIN, TEST, seed=42),
            "train example 2 has label 2; expected a class index in 0..1 for n_classes=2",
        ),
        (
            lambda: unchecked(task_prompts)(AGNEWS, TRAIN, TEST, seed=42, scheme="random"),
            "scheme='random'; expected 'fixed' or 'per_example'",
        ),
        (
            lambda: task_prompts(AGNEWS, TRAIN, [], seed=42),
            "test is an empty dataset",
        ),
    ],
)
def test_bad_input_is_refused_with_a_message(call, message):
    with pytest.raises(SamplingError, match=re.escape(message)):
        call()


def test_sampling_error_is_a_value_error():
    assert issubclass(SamplingError, ValueError)
    assert isinstance(build_prompts(AGNEWS, TEST[:1], ())[0], ICLPrompt)


def test_a_class_short_of_examples_is_named_when_the_names_are_known() -> None:
    """Issue 28: refusals gave class counts by position only ([20, 0, 20])."""
    train = [Example("a", 0), Example("b", 0), Example("c", 2), Example("d", 2)]
    with pytest.raises(SamplingError) as info:
        sample_demonstrations(train, 3, seed=42, label_names=("negative", "neutral", "positive"))
    assert str(info.value) == (
        "class 1 ('neutral') has 0 training examples but shots_per_class=1 needs at least 1; "
        "counts per class: {'negative': 2, 'neutral': 0, 'positive': 2}"
    )


def test_task_prompts_names_the_short_class() -> None:
    train = [Example(f"t{i}", 0) for i in range(3)]
    with pytest.raises(SamplingError, match=r"class 1 \('positive'\) has 0 training examples"):
        task_prompts(get_task("sst2"), train, [Example("q", 0)], seed=42, n_examples=1)
