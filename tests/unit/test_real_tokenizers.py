"""The paper's four tasks on the real tokenizers of today's model families (issue 23).

For every family (``tests/real_tokenizers.py``; files from scripts/fetch_tokenizers.sh) and
task, on hand-written texts that hold what the datasets hold: the ids equal the checkpoint
tokenizer's own encoding of the prompt string (BOS where it adds one), one anchor per
demonstration on its label word (found here from character offsets, independently of
anchor_flow's segment logic), the target on the last token, and tokens that join a text's
end with the template's newline counted and given the text's role.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch

from anchor_flow import tokenize_prompts
from anchor_flow.errors import LabelWordError
from anchor_flow.icl.context import tokenization_summary
from anchor_flow.icl.prompts import ICLPrompt
from anchor_flow.icl.roles import Role
from anchor_flow.icl.sampling import task_prompts
from anchor_flow.icl.tasks import get_task
from real_tokenizers import FAMILIES, PAPER_TASKS, TASK_TEXTS, load_tokenizer

GPT4_STYLE = ("llama3", "llama3_1", "qwen3", "deepseek_v3", "gptoss")


def paper_prompts(task_name: str) -> list[ICLPrompt]:
    """Every text as a query, under both demonstration schemes and two seeds."""
    from anchor_flow.icl.prompts import Example

    task = get_task(task_name)
    examples = [Example(text, label) for text, label in TASK_TEXTS[task_name]]
    prompts = []
    for seed in (42, 43):
        for scheme in ("fixed", "per_example"):
            prompts += task_prompts(
                task, examples, examples, seed=seed, n_examples=100, scheme=scheme
            )
    return prompts


def label_word_spans(prompt: ICLPrompt) -> list[tuple[int, int]]:
    """Character span of each demonstration's label word in ``prompt.text()``, built here."""
    t, spans, at = prompt.template, [], 0
    for demo in prompt.demonstrations:
        at += len(t.input_prefix + t.text_lead + demo.text + t.label_prefix)
        word = prompt.label_words[demo.label]  # type: ignore[index]
        spans.append((at, at + len(word)))
        at += len(word) + len(t.separator)
    return spans


def official_anchors(tokens: list[int], target: int, label_ids: list[int]) -> list[int]:
    """The official code's rule (Predictor.get_pos): a label word's first token whose two
    tokens before it are the label prefix's last token and ':' (the prompt's last two)."""
    pair = tokens[target - 1 : target + 1]
    return [i for i in range(2, target) if tokens[i] in label_ids and tokens[i - 2 : i] == pair]


@pytest.mark.parametrize("task_name", PAPER_TASKS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_paper_task_prompts_tokenize_as_the_checkpoint_does(family: str, task_name: str) -> None:
    tokenizer = load_tokenizer(family)
    prompts = paper_prompts(task_name)
    policy = get_task(task_name).label_token_policy  # what a run uses without flags
    assert policy == "first"  # the paper's first-token rule
    batch = tokenize_prompts(prompts, tokenizer, label_token_policy=policy)
    straddling = 0
    for row, prompt in enumerate(prompts):
        text = prompt.text()
        own = tokenizer(text, return_offsets_mapping=True)  # special tokens as the checkpoint
        ids, spans = own["input_ids"], own["offset_mapping"]
        n = int(batch.lengths[row])
        assert batch.tokens[row, :n].tolist() == ids, f"{family} {task_name} prompt {row}"
        roles = batch.roles[row, :n].tolist()
        assert roles[-1] == Role.TARGET
        assert roles.count(Role.TARGET) == 1
        assert int(batch.target_position[row]) == n - 1
        # One anchor per demonstration: the first token overlapping its label word.
        expected = [
            next(k for k, (s, e) in enumerate(spans) if e > s and s < b and e > a)
            for a, b in label_word_spans(prompt)
        ]
        assert batch.label_positions(row) == expected
        for k, demo in zip(expected, prompt.demonstrations, strict=True):
            assert int(batch.label_class[row, k]) == demo.label
            assert ids[k] == int(batch.label_token_ids[row, demo.label])
        # Tokens holding a text's non-space character and the template's newline (the texts
        # hold no newline) are the straddling ones, with the text's role.
        joined = [k for k, (s, e) in enumerate(spans) if re.search(r"\S\s*\n", text[s:e])]
        assert batch.straddle_mask[row, :n].nonzero().flatten().tolist() == joined
        assert all(roles[k] == Role.TEXT for k in joined)
        straddling += len(joined)
    if family in GPT4_STYLE:
        assert straddling > 0  # the case issue 23 found refused
    summary = tokenization_summary(prompts, tokenizer, label_token_policy="first")
    assert summary["straddling_tokens"] == straddling


@pytest.mark.parametrize(("family", "task_name", "word"), [
    ("llama2", "sst2", " Negative"), ("llama2", "emoc", " Angry"),
    ("deepseek_v3", "emoc", " Angry"), ("gpt2", "trec", " Abbreviation"),
])  # fmt: skip
def test_single_policy_still_refuses_multi_token_label_words(family, task_name, word) -> None:
    tokenizer = load_tokenizer(family)
    prompts = paper_prompts(task_name)[:2]
    with pytest.raises(LabelWordError, match=f"label word '{word}' is [2-9] tokens"):
        tokenize_prompts(prompts, tokenizer, label_token_policy="single")
    summary = tokenization_summary(prompts, tokenizer, label_token_policy="first")
    assert summary["label_word_tokens"][word] > 1


def _official_vs_ours(family: str, prompts: list[ICLPrompt]) -> tuple[int, int, int]:
    tokenizer = load_tokenizer(family)
    batch = tokenize_prompts(prompts, tokenizer, label_token_policy="first")
    ours = official = missed = 0
    for row in range(len(prompts)):
        n, target = int(batch.lengths[row]), int(batch.target_position[row])
        theirs = set(official_anchors(batch.tokens[row, :n].tolist(), target,
                                      batch.label_token_ids[row].tolist()))  # fmt: skip
        mine = set(batch.label_positions(row))
        ours, official = ours + len(mine), official + len(theirs)
        missed += len(mine - theirs)
    return ours, official, missed


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_official_rule_finds_every_anchor_and_more_in_trec_texts(family: str) -> None:
    # Every anchor of ours follows the label prefix, so the official trigram rule finds it;
    # it also counts " Person" in the TREC text "What is the Answer Type: Person or Location ?"
    # wherever a prompt holds it (as a demonstration or the query): anchor_flow keeps it text.
    prompts = paper_prompts("trec")
    needle = "What is the Answer Type: Person or Location ?"
    held = sum(e.text == needle for p in prompts for e in (*p.demonstrations, p.query))
    ours, official, missed = _official_vs_ours(family, prompts)
    assert missed == 0
    assert held > 4  # as the query of 4 prompts, and as a demonstration
    assert official - ours == held


def _row_with(batch: Any, needle: str) -> int:
    return next(r for r, s in enumerate(batch.str_tokens) if needle in "".join(s))


def test_a_straddling_token_joins_the_text_and_the_label_prefix() -> None:
    tokenizer = load_tokenizer("llama3")
    prompt = ICLPrompt(get_task("trec").template, get_task("trec").label_words,
                       (), __import__("anchor_flow").icl.prompts.Example("Why ?"))  # fmt: skip
    batch = tokenize_prompts([prompt], tokenizer, label_token_policy="first")
    tokens = [tokenizer.convert_ids_to_tokens(int(t)) for t in batch.tokens[0]]
    assert tokens == ["Question", ":", "ĠWhy", "Ġ?Ċ", "Answer", "ĠType", ":"]
    assert batch.roles[0].tolist() == [Role.FORMAT, Role.FORMAT, Role.TEXT, Role.TEXT,
                                       Role.FORMAT, Role.FORMAT, Role.TARGET]  # fmt: skip
    assert batch.straddle_mask[0].tolist() == [False, False, False, True, False, False, False]
    assert batch.straddling_counts.tolist() == [1]
    assert torch.equal(batch.select([0]).straddle_mask, batch.straddle_mask)
