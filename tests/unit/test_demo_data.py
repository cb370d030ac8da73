"""Unit tests of anchor_flow.testbeds.demo: the demo task's generator and word-level tokenizer (no
model)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from anchor_flow.errors import PromptError
from anchor_flow.icl.prompts import Template, tokenize_prompts
from anchor_flow.icl.roles import Role
from anchor_flow.testbeds.demo import (
    DEMO_SHAPES,
    DEMO_TEMPLATE,
    DemoTaskConfig,
    build_demo_tokenizer,
    demo_prompts,
    episode_prompt,
    episode_token_ids,
    sample_episode,
)

TASK = DemoTaskConfig()


@pytest.fixture(scope="module")
def tokenizer():
    return build_demo_tokenizer()


def test_template_is_the_paper_format_with_an_empty_input_prefix() -> None:
    assert Template.from_format("{text} :{label}") == DEMO_TEMPLATE


def test_prompts_are_deterministic_per_seed() -> None:
    assert demo_prompts(5, k=3, shots_per_class=2, seed=4) == demo_prompts(
        5, k=3, shots_per_class=2, seed=4
    )
    assert demo_prompts(5, k=3, seed=4) != demo_prompts(5, k=3, seed=5)


@pytest.mark.parametrize(("k", "shots"), DEMO_SHAPES)
def test_demonstrations_are_class_balanced_with_distinct_label_words(k: int, shots: int) -> None:
    for prompt in demo_prompts(20, k=k, shots_per_class=shots, seed=1):
        assert Counter(d.label for d in prompt.demonstrations) == dict.fromkeys(range(k), shots)
        assert len(set(prompt.label_words)) == k
        assert prompt.query.label is not None
        assert 0 <= prompt.query.label < k


def test_label_words_and_query_classes_are_spread_over_the_pool() -> None:
    prompts = demo_prompts(400, k=2, seed=0)
    words = Counter(w for p in prompts for w in p.label_words)
    assert set(words) == {f" L{i}" for i in range(TASK.n_label_words)}
    queries = Counter(p.query.label for p in prompts)
    assert 150 < queries[0] < 250  # balanced in expectation


def test_prototypes_are_disjoint_and_dominate_each_class() -> None:
    rng = random.Random(0)
    hits = total = overlapping = 0
    for _ in range(200):
        episode = sample_episode(rng, 3, 3)
        by_class: dict[int, Counter[int]] = {}
        for text, c in zip(episode.demonstration_texts, episode.demonstration_classes, strict=True):
            by_class.setdefault(c, Counter()).update(text)
        tops = {
            c: {t for t, _ in counts.most_common(TASK.prototype_length)}
            for c, counts in by_class.items()
        }
        for c, counts in by_class.items():
            hits += sum(counts[t] for t in tops[c])
            total += sum(counts.values())
        overlapping += any(tops[a] & tops[b] for a in tops for b in tops if a < b)
    assert hits / total > 0.85  # p(prototype) = 0.9, plus noise that lands on it
    assert overlapping <= 10  # prototypes are disjoint; only noise can make tops collide


def test_tokenizer_round_trip_and_roles(tokenizer) -> None:
    prompts = demo_prompts(8, k=3, shots_per_class=2, seed=2)
    batch = tokenize_prompts(prompts, tokenizer)  # checks segment-wise == whole string
    for i, prompt in enumerate(prompts):
        tokens = batch.str_tokens[i]
        assert tokens[0] == "<bos>"
        assert " ".join(tokens[1:]).replace(" \n ", "\n") == prompt.text()
        assert "<unk>" not in tokens
        roles = batch.roles[i, : len(tokens)].tolist()
        assert roles.count(Role.LABEL) == len(prompt.demonstrations)
        assert roles.count(Role.TEXT) == TASK.text_length * (len(prompt.demonstrations) + 1)
        assert tokens[int(batch.target_position[i])] == ":"
    ids = tokenizer("w3 w4 : L5\nw6")["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True).split() == ["w3", "w4", ":", "L5", "w6"]


def test_episode_token_ids_equal_the_tokenizer(tokenizer) -> None:
    rng = random.Random(7)
    for k, shots in DEMO_SHAPES:
        episode = sample_episode(rng, k, shots)
        prompt = episode_prompt(episode)
        batch = tokenize_prompts([prompt], tokenizer)
        assert batch.tokens[0].tolist() == episode_token_ids(episode, with_answer=False)
        answer = episode_token_ids(episode)[-1]
        assert (
            tokenizer.convert_ids_to_tokens(answer)
            == prompt.label_words[episode.query_class].strip()
        )


def test_vocabulary_size_and_specials(tokenizer) -> None:
    assert len(tokenizer) == len(TASK.vocabulary()) == 53
    assert tokenizer.bos_token == "<bos>"
    assert tokenizer.pad_token == "<pad>"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 1}, "k=1 classes does not fit"),
        ({"k": 17}, "k=17 classes does not fit"),
        ({"k": 2, "shots_per_class": 0}, "shots_per_class=0"),
    ],
)
def test_bad_shapes_are_refused(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(PromptError, match=message):
        demo_prompts(1, **kwargs)


def test_negative_count_is_refused() -> None:
    with pytest.raises(PromptError, match="n >= 0, got n=-1"):
        demo_prompts(-1)
