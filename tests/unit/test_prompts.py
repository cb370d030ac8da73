"""Unit tests of anchor_flow.icl.prompts and anchor_flow.icl.roles (no model)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast

from anchor_flow.errors import ContextLengthError, LabelWordError, PromptError
from anchor_flow.icl.prompts import (
    Example,
    ICLPrompt,
    Template,
    load_prompts,
    save_prompts,
    tokenize_prompts,
)
from anchor_flow.icl.roles import PromptBatch, Role
from anchor_flow.testbeds.toy import build_toy_tokenizer, toy_prompts

F, T, L, R, G = Role.FORMAT, Role.TEXT, Role.LABEL, Role.LABEL_REST, Role.TARGET
SENTIMENT = (" Negative", " Positive")


@pytest.fixture(scope="module")
def toy_tok():
    return build_toy_tokenizer()


def word_level_tokenizer(*, with_bos: bool) -> PreTrainedTokenizerFast:
    """A Llama-style tokenizer (BOS added by its post-processor) or the same without BOS."""
    words = ["<pad>", "<s>", "<unk>", "Review", ":", "Sentiment", "Negative", "Positive"]
    words += ["good", "bad", "film", "plot"]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    if with_bos:
        tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<s>", pad_token="<pad>", unk_token="<unk>"
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")


def sentiment_prompt(demos, query="the best film", query_label=None, words=SENTIMENT, **template):
    return ICLPrompt(
        Template(**template),
        words,
        tuple(Example(text, label) for text, label in demos),
        Example(query, query_label),
    )


HAND = sentiment_prompt([("a dull film", 0), ("a great cast", 1)])


# --- templates and prompt text ------------------------------------------------------------


def test_text_is_the_papers_prompt():
    expected = (
        "Review: a dull film\nSentiment: Negative\nReview: a great cast\nSentiment: Positive\n"
        "Review: the best film\nSentiment:"
    )
    assert HAND.text() == expected


def test_from_format_parses_the_papers_templates():
    assert Template.from_format("Review: {text}\nSentiment:{label}") == Template()
    trec = Template.from_format("Question: {text}\nAnswer Type:{label}")
    assert (trec.input_prefix, trec.text_lead, trec.label_prefix) == (
        "Question:",
        " ",
        "\nAnswer Type:",
    )
    assert trec.render("why?", " Entity") == "Question: why?\nAnswer Type: Entity"
    assert Template.from_format("{text} =>{label}", separator="\n\n").separator == "\n\n"


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("Review: {text}\nSentiment:", "must contain '{text}' and '{label}' exactly once"),
        ("Review: {text} {text}{label}", "must contain '{text}' and '{label}' exactly once"),
        ("{label} Review: {text}", "must have '{text}' before '{label}'"),
        ("Review: {text}\nSentiment:{label}!", "end with '{label}'"),
    ],
)
def test_from_format_errors_name_the_string(fmt, expected):
    with pytest.raises(PromptError, match=re.escape(expected)) as info:
        Template.from_format(fmt)
    assert repr(fmt) in str(info.value)


def test_template_needs_a_label_prefix():
    with pytest.raises(PromptError, match="label_prefix is empty"):
        Template(label_prefix="")


# --- roles on a hand-checked example ------------------------------------------------------


def test_roles_hand_checked(toy_tok):
    batch = tokenize_prompts([HAND], toy_tok)
    demo = ["Review", ":", " a", " dull", " film", "\n", "Sentiment", ":", " Negative", "\n"]
    demo2 = ["Review", ":", " a", " great", " cast", "\n", "Sentiment", ":", " Positive", "\n"]
    query = ["Review", ":", " the", " best", " film", "\n", "Sentiment", ":"]
    assert batch.str_tokens == (tuple(demo + demo2 + query),)
    demo_roles = [F, F, T, T, T, F, F, F, L, F]
    expected = demo_roles + demo_roles + [F, F, T, T, T, F, F, G]
    assert batch.roles[0].tolist() == [int(r) for r in expected]
    assert batch.demo_index[0].tolist() == [0] * 10 + [1] * 10 + [2] * 8
    assert batch.label_class[0].tolist() == [-1] * 8 + [0, -1] + [-1] * 8 + [1, -1] + [-1] * 8
    assert batch.target_position.tolist() == [27]
    assert batch.label_positions(0) == [8, 18]
    negative, positive = (toy_tok.convert_tokens_to_ids(t) for t in ("ĠNegative", "ĠPositive"))
    assert batch.label_token_ids.tolist() == [[negative, positive]]
    assert batch.tokens[0, 8].item() == negative
    assert batch.gold.tolist() == [-1]
    assert batch.n_classes == 2
    assert len(batch) == 1


def test_no_bos_for_gpt2_style_tokenizer(toy_tok):
    batch = tokenize_prompts([HAND], toy_tok)
    assert Role.BOS not in batch.roles[0].tolist()
    assert batch.tokens[0].tolist() == toy_tok(HAND.text())["input_ids"]


def test_bos_tokenizer_gets_its_bos():
    tok = word_level_tokenizer(with_bos=True)
    prompt = sentiment_prompt([("good film", 1), ("bad plot", 0)], query="good plot")
    batch = tokenize_prompts([prompt], tok)
    assert batch.roles[0, 0].item() == Role.BOS
    assert batch.demo_index[0, 0].item() == -1
    assert batch.tokens[0].tolist() == tok(prompt.text())["input_ids"]
    assert batch.str_tokens[0][batch.target_position[0]] == ":"
    forced_off = tokenize_prompts([prompt], tok, prepend_bos=False)
    assert forced_off.tokens[0].tolist() == batch.tokens[0, 1:].tolist()
    assert Role.BOS not in forced_off.roles[0].tolist()


def test_forced_bos_may_equal_the_pad_id(toy_tok):
    short = sentiment_prompt([("a dull film", 0)], query="fun")
    batch = tokenize_prompts([HAND, short], toy_tok, prepend_bos=True)
    assert batch.tokens[:, 0].tolist() == [0, 0]  # bos = pad = <|endoftext|>
    assert batch.roles[:, 0].tolist() == [Role.BOS, Role.BOS]
    n_short = 1 + len(toy_tok(short.text())["input_ids"])
    assert batch.lengths.tolist() == [29, n_short]
    assert batch.attention_mask[1].tolist() == [True] * n_short + [False] * (29 - n_short)


def test_forced_bos_needs_a_bos_token():
    tok = word_level_tokenizer(with_bos=False)
    prompt = sentiment_prompt([("good film", 1)], query="bad plot")
    assert Role.BOS not in tokenize_prompts([prompt], tok).roles[0].tolist()
    with pytest.raises(PromptError, match="prepend_bos=True but the tokenizer has no bos_token_id"):
        tokenize_prompts([prompt], tok, prepend_bos=True)


# --- segment-wise == whole-string tokenization --------------------------------------------

words = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789.,!?'-", min_size=1, max_size=8)
texts = st.lists(words, min_size=0, max_size=6).map(" ".join)
LABEL_SETS = [SENTIMENT, (" World", " Sports", " Business", " Technology"), (" Sad", " Happy")]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_segments_equal_whole_string(toy_tok, data):
    label_words = data.draw(st.sampled_from(LABEL_SETS))
    n = len(label_words)
    demos = data.draw(st.lists(st.tuples(texts, st.integers(0, n - 1)), max_size=5))
    prompt = sentiment_prompt(demos, query=data.draw(texts), words=label_words)
    batch = tokenize_prompts([prompt], toy_tok)
    assert batch.tokens[0].tolist() == toy_tok(prompt.text(), add_special_tokens=False)["input_ids"]
    roles = batch.roles[0].tolist()
    assert roles.count(Role.TARGET) == 1
    assert roles[-1] == Role.TARGET
    assert roles.count(Role.LABEL) == len(demos)
    assert batch.demo_index[0].tolist() == sorted(batch.demo_index[0].tolist())
    assert [batch.label_class[0, p].item() for p in batch.label_positions(0)] == [
        label for _, label in demos
    ]


def test_segments_that_merge_are_refused(toy_tok):
    # Segment-wise tokenization differs, so the roles come from offsets (anchor_flow.icl.alignment);
    # " wonderful" straddles the query's text and its label prefix: refused, never guessed.
    glued = sentiment_prompt([], query="a wonder", label_prefix="ful\nSentiment:")
    message = (
        "prompt 0: token 3 'Ġwonderful' (characters 9..19, ' wonderful') lies in both the text "
        "of the query and the label prefix of the query, whose tokens get different roles"
    )
    with pytest.raises(PromptError, match=re.escape(message)):
        tokenize_prompts([glued], toy_tok)


# --- demonstrations and label-word policies -----------------------------------------------


def test_several_demonstrations_per_class(toy_tok):
    prompt = sentiment_prompt([("a", 1), ("b", 0), ("c", 0), ("d", 1)], query_label=0)
    batch = tokenize_prompts([prompt], toy_tok)
    positions = batch.label_positions(0)
    assert [batch.label_class[0, p].item() for p in positions] == [1, 0, 0, 1]
    assert [batch.demo_index[0, p].item() for p in positions] == [0, 1, 2, 3]
    assert batch.demo_index[0, batch.target_position[0]].item() == 4
    assert batch.gold.tolist() == [0]


TREC = (" Abbreviation", " Entity")


def test_single_policy_refuses_multi_token_label_words(toy_tok):
    prompt = sentiment_prompt([("what is nasa", 0)], words=TREC)
    message = (
        "label word ' Abbreviation' is 8 tokens for this tokenizer; pass "
        "label_token_policy='first' (the paper's choice) or 'all', or choose single-token "
        "label words"
    )
    with pytest.raises(LabelWordError, match=re.escape(message)):
        tokenize_prompts([prompt], toy_tok)


@pytest.mark.parametrize(("policy", "rest"), [("first", R), ("all", L)])
def test_multi_token_policies(toy_tok, policy, rest):
    prompt = sentiment_prompt([("what is nasa", 0), ("who", 1)], words=TREC)
    batch = tokenize_prompts([prompt], toy_tok, label_token_policy=policy)
    roles = batch.roles[0].tolist()
    start = batch.label_positions(0)[0]  # first token of " Abbreviation"
    assert "".join(batch.str_tokens[0][start : start + 8]) == " Abbreviation"
    assert roles[start : start + 8] == [L] + [rest] * 7
    assert batch.label_class[0, start : start + 8].tolist() == [0] * 8
    assert batch.label_token_ids[0, 0].item() == batch.tokens[0, start].item()
    assert len(batch.label_positions(0)) == (2 if policy == "first" else 9)


@pytest.mark.parametrize("policy", ["single", "first", "all"])
def test_shared_first_token_is_refused(toy_tok, policy):
    prompt = sentiment_prompt([("x", 0)], words=(" Abbreviation", " Abc"))
    expected = "label words ' Abbreviation' and ' Abc' share their first token ' '"
    if policy == "single":
        expected = "label word ' Abbreviation' is 8 tokens"
    with pytest.raises(LabelWordError, match=re.escape(expected)):
        tokenize_prompts([prompt], toy_tok, label_token_policy=policy)


@pytest.mark.parametrize(
    ("label_words", "expected"),
    [
        ((" Negative", ""), "label word of class 1 is empty"),
        ((" Negative", " Negative"), "label word ' Negative' appears twice"),
        ((), "label_words is empty"),
    ],
)
def test_bad_label_words(label_words, expected):
    with pytest.raises(LabelWordError, match=re.escape(expected)):
        ICLPrompt(Template(), label_words, (), Example("x"))


@pytest.mark.parametrize(
    ("demos", "query", "expected"),
    [
        ((Example("a", 0), Example("b", 2)), Example("q"), "demonstration 1 has label 2"),
        ((Example("a", None),), Example("q"), "demonstration 0 has label None"),
        ((Example("a", -1),), Example("q"), "demonstration 0 has label -1"),
        ((), Example("q", 5), "query has label 5"),
    ],
)
def test_labels_out_of_range(demos, query, expected):
    with pytest.raises(PromptError, match=re.escape(expected)):
        ICLPrompt(Template(), SENTIMENT, demos, query)


# --- batching -----------------------------------------------------------------------------


def test_batch_is_right_padded_and_select_repads(toy_tok):
    short = sentiment_prompt([("fun", 1)], query="dull", query_label=0)
    long = sentiment_prompt([("a dull film", 0), ("a great cast", 1), ("bad", 0)], query_label=1)
    batch = tokenize_prompts([short, long, HAND], toy_tok, pad_token_id=7)
    lengths = [len(toy_tok(p.text())["input_ids"]) for p in (short, long, HAND)]
    assert batch.lengths.tolist() == lengths
    assert batch.tokens.shape == (3, max(lengths))
    for row, n in enumerate(lengths):
        assert batch.roles[row, n:].tolist() == [Role.PAD] * (max(lengths) - n)
        assert batch.tokens[row, n:].tolist() == [7] * (max(lengths) - n)
        assert batch.demo_index[row, n:].tolist() == [-1] * (max(lengths) - n)
        assert batch.target_position[row].item() == n - 1
        assert len(batch.str_tokens[row]) == n
    assert batch.gold.tolist() == [1 - 1, 1, -1]
    assert batch.label_positions(0) == [batch.str_tokens[0].index(" Positive")]
    assert len(batch.label_positions(1)) == 3
    assert batch.demo_index[0, batch.target_position[0]].item() == 1
    assert batch.demo_index[1, batch.target_position[1]].item() == 3

    picked = batch.select([2, 0])
    assert picked.tokens.shape == (2, lengths[2])
    assert picked.target_position.tolist() == [lengths[2] - 1, lengths[0] - 1]
    assert picked.str_tokens == (batch.str_tokens[2], batch.str_tokens[0])
    assert torch.equal(picked.roles[1], batch.roles[0, : lengths[2]])
    assert picked.label_positions(0) == batch.label_positions(2)
    only_short = batch.select(torch.tensor([0]))
    assert only_short.tokens.shape == (1, lengths[0])
    assert Role.PAD not in only_short.roles[0].tolist()


def test_select_errors(toy_tok):
    batch = tokenize_prompts([HAND], toy_tok)
    with pytest.raises(PromptError, match="needs at least one row"):
        batch.select([])
    with pytest.raises(PromptError, match=re.escape("rows [3] out of range for a batch of 1")):
        batch.select([3])
    with pytest.raises(PromptError, match="row 1 out of range"):
        batch.label_positions(1)


def test_prompt_batch_validates(toy_tok):
    batch = tokenize_prompts([HAND], toy_tok)
    fields = {name: getattr(batch, name) for name in PromptBatch.__dataclass_fields__}
    with pytest.raises(PromptError, match=r"str_tokens\[0\] has 27 tokens"):
        PromptBatch(**{**fields, "str_tokens": (batch.str_tokens[0][:-1],)})
    holey = batch.roles.clone()
    holey[0, 3] = Role.PAD
    with pytest.raises(PromptError, match="must be right-padded"):
        PromptBatch(**{**fields, "roles": holey})
    with pytest.raises(PromptError, match=r"must point at a Role\.TARGET"):
        PromptBatch(**{**fields, "target_position": torch.tensor([0])})


def test_empty_prompt_list(toy_tok):
    with pytest.raises(PromptError, match="tokenize_prompts got an empty list of prompts"):
        tokenize_prompts([], toy_tok)


def test_mixed_class_counts(toy_tok):
    four = sentiment_prompt([("x", 3)], words=LABEL_SETS[1])
    with pytest.raises(PromptError, match=r"prompt 1 has 4 classes .* but prompt 0 has 2"):
        tokenize_prompts([HAND, four], toy_tok)


def test_too_long(toy_tok):
    message = (
        "prompt 1 is 28 tokens, longer than the context length 20 (max_length); "
        "use fewer demonstrations or shorter texts"
    )
    short = sentiment_prompt([], query="fun")
    with pytest.raises(ContextLengthError, match=re.escape(message)):
        tokenize_prompts([short, HAND], toy_tok, max_length=20)
    tokenize_prompts([HAND], toy_tok, max_length=28)
    small = build_toy_tokenizer()
    small.model_max_length = 20
    with pytest.raises(ContextLengthError, match="context length 20"):
        tokenize_prompts([HAND], small)
    unlimited = word_level_tokenizer(with_bos=True)  # model_max_length is a huge sentinel
    assert len(tokenize_prompts([sentiment_prompt([("good", 1)] * 500)], unlimited)) == 1


# --- toy prompts --------------------------------------------------------------------------


def test_toy_prompts_are_reproducible(toy_tok):
    prompts = toy_prompts(8, shots_per_class=2, seed=3)
    assert prompts == toy_prompts(8, shots_per_class=2, seed=3)
    assert prompts != toy_prompts(8, shots_per_class=2, seed=4)
    for p in prompts:
        assert p.label_words == SENTIMENT
        assert p.query.label in (0, 1)
        assert sorted(d.label for d in p.demonstrations) == [0, 0, 1, 1]
        assert p.query.text not in [d.text for d in p.demonstrations]
    orders = {tuple(d.label for d in p.demonstrations) for p in prompts}
    assert len(orders) == 1  # one class order per seed, as in the paper's §2.1 code
    batch = tokenize_prompts(prompts, toy_tok)
    assert batch.gold.tolist() == [p.query.label for p in prompts]


@pytest.mark.parametrize(("n", "shots"), [(-1, 1), (2, 0), (2, 12)])
def test_toy_prompts_errors(n, shots):
    with pytest.raises(PromptError, match=f"got n={n}, shots_per_class={shots}"):
        toy_prompts(n, shots_per_class=shots)


# --- serialisation ------------------------------------------------------------------------


def test_dict_round_trip():
    prompt = sentiment_prompt([("a\nb", 0), ("ünï", 1)], query_label=1, separator="\n\n")
    d = prompt.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert ICLPrompt.from_dict(d) == prompt


def test_from_dict_errors():
    with pytest.raises(PromptError, match=r"not an ICLPrompt dict .*'template'"):
        ICLPrompt.from_dict({"label_words": []})
    with pytest.raises(PromptError, match="label_words must be a list, got ' Negative'"):
        ICLPrompt.from_dict({**HAND.to_dict(), "label_words": " Negative"})


def test_save_load_round_trip(tmp_path: Path):
    prompts = [*toy_prompts(3), HAND]
    path = tmp_path / "prompts.jsonl"
    save_prompts(path, prompts)
    assert load_prompts(path) == prompts
    assert len(path.read_text().splitlines()) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["prompts.jsonl"]  # no temp file left


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("{not json", "line 2: not a valid prompt: Expecting property name"),
        ("[1, 2]", "line 2: not a valid prompt: expected a JSON object, got list"),
        ('{"template": {}}', "line 2: not a valid prompt: not an ICLPrompt dict"),
    ],
)
def test_load_bad_line(tmp_path: Path, line, expected):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(HAND.to_dict()) + "\n" + line + "\n")
    with pytest.raises(PromptError, match=re.escape(expected)) as info:
        load_prompts(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_load_empty_file(tmp_path: Path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(PromptError, match=re.escape(f"{path} contains no prompts")):
        load_prompts(path)
