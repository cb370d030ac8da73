"""The synthetic ICL task: determinism, balance, layout, tokenizer, baseline, registry, errors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from anchor_flow.icl.data import load_task_data
from anchor_flow.icl.prompts import Example, ICLPrompt, Role, tokenize_prompts
from anchor_flow.icl.sampling import SamplingError, task_prompts
from anchor_flow.icl.tasks import get_task
from anchor_flow.testbeds.synthetic import (
    DEFAULT_SPEC,
    SYNTHETIC_TEMPLATE,
    SyntheticError,
    SyntheticSpec,
    bag_of_words_accuracy,
    bag_of_words_scores,
    build_synthetic_tokenizer,
    layout_of,
    synthetic_prompts,
    synthetic_vocabulary,
)


@pytest.fixture(scope="module")
def tokenizer():
    return build_synthetic_tokenizer()


def test_same_seed_same_prompts_and_other_seed_differs():
    assert synthetic_prompts(20, k=3, seed=7) == synthetic_prompts(20, k=3, seed=7)
    assert synthetic_prompts(20, k=3, seed=7) != synthetic_prompts(20, k=3, seed=8)
    # Pinned: reproducible on any machine (numpy's default_rng is platform-independent).
    first = synthetic_prompts(1, k=2, seed=0)[0]
    assert first.label_words == (" L3", " L2")
    assert first.demonstrations[0] == Example("w11 w2 w22 w6 w3 w13", 1)


@pytest.mark.parametrize(("k", "shots"), [(2, 1), (3, 2), (4, 1), (4, 4)])
def test_class_balance_label_words_and_text_length(k, shots):
    for prompt in synthetic_prompts(30, k=k, shots_per_class=shots, seed=1):
        assert Counter(d.label for d in prompt.demonstrations) == dict.fromkeys(range(k), shots)
        assert len(set(prompt.label_words)) == k
        assert set(prompt.label_words) <= {f" L{i}" for i in range(DEFAULT_SPEC.n_label_words)}
        texts = [d.text for d in prompt.demonstrations] + [prompt.query.text]
        assert all(len(t.split()) == DEFAULT_SPEC.text_length for t in texts)
        assert prompt.template == SYNTHETIC_TEMPLATE


def test_mapping_and_order_are_redrawn_per_prompt():
    prompts = synthetic_prompts(50, k=2, seed=3)
    assert len({p.label_words for p in prompts}) > 10
    assert len({tuple(d.label for d in p.demonstrations) for p in prompts}) == 2
    assert {p.query.label for p in prompts} == {0, 1}


def test_topic_tokens_dominate_their_class():
    # Tokens of a class's own topic make up about topic_prob + (1 - p) * m / n_content.
    spec = SyntheticSpec(topic_prob=1.0)
    for prompt in synthetic_prompts(20, k=4, seed=2, spec=spec):
        bags = [set(d.text.split()) for d in prompt.demonstrations]
        assert all(len(b) <= spec.topic_size for b in bags)
        assert all(not (a & b) for i, a in enumerate(bags) for b in bags[i + 1 :])


def test_layout_matches_tokenized_roles(tokenizer):
    prompts = synthetic_prompts(6, k=3, shots_per_class=2, seed=5)
    batch = tokenize_prompts(prompts, tokenizer)
    n = DEFAULT_SPEC.text_length
    expected_role = {0: Role.FORMAT, n + 1: Role.FORMAT, n + 2: Role.FORMAT, n + 3: Role.LABEL}
    expected_role.update({n + 4: Role.FORMAT, **dict.fromkeys(range(1, n + 1), Role.TEXT)})
    assert batch.tokens.shape[1] == 1 + 6 * DEFAULT_SPEC.demonstration_length + n + 3
    for row in range(len(batch)):
        assert int(batch.roles[row, 0]) == Role.BOS
        for position in range(1, batch.tokens.shape[1]):
            slot, offset = layout_of(position)
            role = int(batch.roles[row, position])
            if slot == 6 and offset == n + 2:
                assert role == Role.TARGET
            else:
                assert role == expected_role[offset], (position, slot, offset)
            assert int(batch.demo_index[row, position]) == slot


def test_tokenizer_round_trip_bos_and_pad(tokenizer):
    prompt = synthetic_prompts(1, k=4, seed=9)[0]
    ids = tokenizer(prompt.text())["input_ids"]
    assert ids[0] == tokenizer.bos_token_id == tokenizer.pad_token_id == 0
    assert tokenizer.decode(ids[1:]) == prompt.text()
    assert len(tokenizer) == len(synthetic_vocabulary()) == 37
    assert all(
        len(tokenizer(w, add_special_tokens=False)["input_ids"]) == 1 for w in [" L7", " w23"]
    )


def test_bag_of_words_baseline():
    prompt = ICLPrompt(
        SYNTHETIC_TEMPLATE,
        (" L5", " L1"),
        (Example("w1 w1 w2", 0), Example("w3 w4 w4", 1)),
        Example("w4 w4 w1", 1),
    )
    # class 0: w1 shared (2 x 1); class 1: w4 shared (2 x 2).
    assert bag_of_words_scores(prompt).tolist() == [2.0, 4.0]
    tie = ICLPrompt(SYNTHETIC_TEMPLATE, (" L0", " L1"), prompt.demonstrations, Example("w9", 0))
    assert bag_of_words_accuracy([prompt, tie]) == 0.75  # a tie earns 1/2
    for k, low in ((2, 0.9), (3, 0.85), (4, 0.85)):
        assert low <= bag_of_words_accuracy(synthetic_prompts(300, k=k, seed=11)) < 1.0


@pytest.mark.parametrize("k", [2, 3, 4])
def test_registered_tasks_generate_their_prompts(k):
    task = get_task(f"synthetic-k{k}")
    assert task.n_classes == k
    data = load_task_data(task)
    assert data.source == "builtin"
    assert data.train
    assert data.test
    prompts = task_prompts(task, data.train, data.test, seed=42, n_examples=5, shots_per_class=2)
    assert prompts == synthetic_prompts(5, k=k, shots_per_class=2, seed=42)
    assert prompts == task_prompts(task, (), (), seed=42, n_examples=5, shots_per_class=2)


def test_generated_task_errors():
    task = get_task("synthetic-k2")
    with pytest.raises(SamplingError, match="fix_class_order=True is not supported"):
        task_prompts(task, (), (), seed=1, fix_class_order=True)
    with pytest.raises(SamplingError, match="n_examples=0; expected a positive integer"):
        task_prompts(task, (), (), seed=1, n_examples=0)
    with pytest.raises(SamplingError, match="seed=-1"):
        task_prompts(task, (), (), seed=-1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 1}, r"k=1 classes; expected an integer in 2\.\.6"),
        ({"k": 7}, r"k=7 classes; expected an integer in 2\.\.6"),
        ({"k": True}, r"k=True classes"),
        ({"k": 2, "shots_per_class": 0}, r"shots_per_class=0; expected an integer >= 1"),
        ({"k": 2, "seed": -3}, r"seed=-3; expected an integer >= 0"),
    ],
)
def test_bad_prompt_arguments(kwargs, message):
    kwargs.setdefault("seed", 0)
    with pytest.raises(SyntheticError, match=message):
        synthetic_prompts(3, **kwargs)


def test_bad_n_and_small_pools():
    with pytest.raises(SyntheticError, match=r"n=-1; expected an integer >= 0"):
        synthetic_prompts(-1, k=2, seed=0)
    assert synthetic_prompts(0, k=2, seed=0) == []
    spec = SyntheticSpec(n_label_words=3, n_content=8, topic_size=2)
    assert spec.max_classes == 3
    with pytest.raises(SyntheticError, match=r"k=4 classes; expected an integer in 2\.\.3"):
        synthetic_prompts(1, k=4, seed=0, spec=spec)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_content": 0}, r"SyntheticSpec\.n_content=0; expected an integer >= 1"),
        ({"text_length": -2}, r"SyntheticSpec\.text_length=-2"),
        ({"topic_size": True}, r"SyntheticSpec\.topic_size=True"),
        ({"n_label_words": 1}, r"cannot hold 2 classes"),
        ({"n_content": 7, "topic_size": 4}, r"n_content >= 2 \* topic_size"),
        ({"topic_prob": 1.5}, r"topic_prob=1\.5; expected a probability in \[0, 1\]"),
    ],
)
def test_bad_spec(kwargs, message):
    with pytest.raises(SyntheticError, match=message):
        SyntheticSpec(**kwargs)


def test_bad_layout_and_baseline_inputs():
    with pytest.raises(SyntheticError, match=r"position=-1; expected an integer >= 0"):
        layout_of(-1)
    foreign = ICLPrompt(SYNTHETIC_TEMPLATE, (" L0", " L1"), (Example("w1", 0),), Example("cat", 1))
    with pytest.raises(SyntheticError, match=r"text token 'cat' is not a content token w0\.\.w23"):
        bag_of_words_scores(foreign)
    with pytest.raises(SyntheticError, match="got no prompts"):
        bag_of_words_accuracy([])
    unlabelled = ICLPrompt(SYNTHETIC_TEMPLATE, (" L0", " L1"), (Example("w1", 0),), Example("w1"))
    with pytest.raises(SyntheticError, match="needs query labels"):
        bag_of_words_accuracy([unlabelled])


def test_scores_are_numpy():
    assert isinstance(bag_of_words_scores(synthetic_prompts(1, k=2, seed=0)[0]), np.ndarray)
