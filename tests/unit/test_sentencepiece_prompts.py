"""SentencePiece-style (Llama-2) tokenizers: token roles from character offsets (no model).

The tokenizers here are built offline like Llama-2's: a byte-fallback BPE trained in memory,
with a Metaspace pre-tokenizer that adds "▁" to every call (``prepend_scheme="always"``), or
with Llama-2's own ``Prepend("▁")`` + ``Replace(" ", "▁")`` normalizer, which gives ``" Negative"``
alone the tokens ``["▁", "▁Negative"]``. The oracle walks the prompt string with each token's
decoded bytes, never with offsets.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import (
    Regex,
    normalizers,
)
from transformers import PreTrainedTokenizer

from anchor_flow.errors import ContextLengthError, LabelWordError, PromptError
from anchor_flow.icl import alignment
from anchor_flow.icl.prompts import Example, ICLPrompt, Template, tokenize_prompts
from anchor_flow.icl.roles import Role
from anchor_flow.testbeds.toy import build_toy_tokenizer, toy_prompts
from conftest import sentencepiece_tokenizer

F, T, L, G = (int(r) for r in (Role.FORMAT, Role.TEXT, Role.LABEL, Role.TARGET))
SENTIMENT = (" Negative", " Positive")
VARIANTS = ("metaspace", "llama2-normalizer")


@pytest.fixture(scope="module", params=VARIANTS)
def sp_tok(request):
    return sentencepiece_tokenizer(request.param)


@pytest.fixture(scope="module")
def metaspace_tok():
    return sentencepiece_tokenizer("metaspace")


@pytest.fixture(scope="module")
def toy_tok():
    return build_toy_tokenizer()


def prompt(demos, query="the best film", words=SENTIMENT, template=None, query_label=None):
    return ICLPrompt(
        template or Template(),
        words,
        tuple(Example(text, label) for text, label in demos),
        Example(query, query_label),
    )


HAND = prompt([("a dull film", 0), ("a great cast", 1)], query_label=1)


def pieces(tok, ids):
    return tok.convert_ids_to_tokens([int(i) for i in ids])


# --- the brute-force oracle: decode every token and walk the string -----------------------


def _surface(tok, ids) -> list[bytes]:
    """Each token's bytes from its vocabulary entry: "▁" is a space, <0xNN> one byte."""
    out = []
    for piece in pieces(tok, ids):
        byte = re.fullmatch(r"<0x([0-9A-F]{2})>", piece)
        out.append(bytes([int(byte[1], 16)]) if byte else piece.replace("▁", " ").encode())
    return out


def _oracle_segments(p: ICLPrompt) -> list[tuple[str, str, int, int]]:
    """(text, kind, demonstration, class); kind F(ormat), T(ext), L(abel), Q(uery prefix)."""
    t, out = p.template, []
    for d, ex in enumerate(p.demonstrations):
        out += [(t.input_prefix, "F", d, -1), (t.text_lead + ex.text, "T", d, -1)]
        out += [(t.label_prefix, "F", d, -1), (p.label_words[ex.label], "L", d, ex.label)]
        out += [(t.separator, "F", d, -1)]
    n = len(p.demonstrations)
    out += [(t.input_prefix, "F", n, -1), (t.text_lead + p.query.text, "T", n, -1)]
    return [*out, (t.label_prefix, "Q", n, -1)]


def brute_force_roles(tok, p: ICLPrompt, policy: str):
    """(roles, demo_index, label_class) without BOS, or None where a token straddles roles."""
    text, segments = p.text(), _oracle_segments(p)
    chunks = _surface(tok, tok(text, add_special_tokens=False)["input_ids"])
    data, body = b"".join(chunks), text.encode()
    lead = len(data) - len(body)  # the "▁" the tokenizer prepends (none if text starts with " ")
    assert data[lead:] == body
    assert data[:lead] in (b"", b" ")
    segment_of_char = [s for s, seg in enumerate(segments) for _ in seg[0]]
    char_of_byte = [c for c, ch in enumerate(text) for _ in ch.encode()]
    owners, position = [], 0
    for chunk in chunks:
        span = range(max(position, lead), position + len(chunk))
        chars = sorted({char_of_byte[x - lead] for x in span})  # the prepended "▁" is no char
        position += len(chunk)
        while len(chars) > 1 and text[chars[0]] == " ":  # leading spaces go with what follows
            chars.pop(0)
        kinds = {segments[segment_of_char[c]][1:] for c in chars}
        if len(kinds) > 1:
            return None
        owners.append(segment_of_char[chars[0] if chars else 0])
    roles, demos, classes = [], [], []
    for k, owner in enumerate(owners):
        _, kind, demo, cls = segments[owner]
        first = k == 0 or owners[k - 1] != owner
        if kind == "L":
            rest = Role.LABEL if policy == "all" else Role.LABEL_REST
            roles.append(Role.LABEL if first else rest)
        elif kind == "Q":
            roles.append(Role.TARGET if k == len(owners) - 1 else Role.FORMAT)
        else:
            roles.append(Role.TEXT if kind == "T" else Role.FORMAT)
        demos.append(demo)
        classes.append(cls)
    return [int(r) for r in roles], demos, classes


def assert_matches_oracle(tok, p: ICLPrompt, policy: str = "single") -> None:
    batch = tokenize_prompts([p], tok, label_token_policy=policy)
    expected = brute_force_roles(tok, p, policy)
    assert expected is not None
    assert batch.roles[0, 0].item() == Role.BOS
    assert batch.roles[0, 1:].tolist() == expected[0]
    assert batch.demo_index[0, 1:].tolist() == expected[1]
    assert batch.label_class[0, 1:].tolist() == expected[2]
    assert batch.tokens[0].tolist() == tok(p.text())["input_ids"]


# --- the tokenizers really are SentencePiece-like (else nothing here could fail) ----------


def test_tokenizer_adds_a_prefix_space_to_every_call(sp_tok):
    alone = pieces(sp_tok, sp_tok("\nSentiment:", add_special_tokens=False)["input_ids"])
    inside = pieces(sp_tok, sp_tok(HAND.text(), add_special_tokens=False)["input_ids"])
    assert alone[:2] == ["▁", "<0x0A>"]
    assert inside[inside.index("<0x0A>") - 1] != "▁"
    assert sp_tok("a")["input_ids"][0] == sp_tok.bos_token_id


def test_llama2_normalizer_splits_a_label_word_alone(sp_tok):
    alone = pieces(sp_tok, sp_tok(" Negative", add_special_tokens=False)["input_ids"])
    expected = ["▁Negative"] if sp_tok.backend_tokenizer.normalizer is None else ["▁", "▁Negative"]
    assert alone == expected


# --- offsets give the oracle's roles --------------------------------------------------------


def test_paper_prompts_are_no_longer_refused(sp_tok):
    prompts = toy_prompts(6, shots_per_class=2, seed=1)
    batch = tokenize_prompts(prompts, sp_tok)  # PromptError before offset alignment
    for row, p in enumerate(prompts):
        n = int(batch.lengths[row])
        assert batch.tokens[row, :n].tolist() == sp_tok(p.text())["input_ids"]
        assert batch.target_position[row].item() == n - 1
        assert pieces(sp_tok, [batch.tokens[row, n - 1]])[0].endswith(":")
        assert_matches_oracle(sp_tok, p)
    negative, positive = sp_tok.convert_tokens_to_ids(["▁Negative", "▁Positive"])
    assert batch.label_token_ids.tolist() == [[negative, positive]] * len(prompts)


def test_hand_checked_roles(metaspace_tok):
    batch = tokenize_prompts([HAND], metaspace_tok)
    got = list(zip(pieces(metaspace_tok, batch.tokens[0]), batch.roles[0].tolist(), strict=True))
    demo = [("▁a", T), ("▁dull", T), ("▁film", T), ("<0x0A>", F), ("Sen", F), ("timen", F)]
    assert got[:11] == [("<s>", Role.BOS), ("▁Review:", F), *demo, ("t:", F), ("▁Negative", L),
                        ("<0x0A>", F)]  # fmt: skip
    assert got[11:13] == [("Re", F), ("view:", F)]  # no "▁" after a newline, as in Llama-2
    assert got[-4:] == [("<0x0A>", F), ("Sen", F), ("timen", F), ("t:", G)]
    assert batch.label_positions(0) == [9, 20]
    assert batch.label_class[0, [9, 20]].tolist() == [0, 1]
    assert batch.demo_index[0].tolist() == [-1] + [0] * 10 + [1] * 11 + [2] * 9
    assert batch.target_position.tolist() == [30]
    assert batch.str_tokens[0][9] == "Negative"  # per-token decode, as before (strips "▁")
    assert batch.gold.tolist() == [1]


words = st.text(alphabet="abcdefghijklmnopqrstuvwxyzü.,!'", min_size=1, max_size=8)
texts = st.lists(words, min_size=0, max_size=5).map(" ".join)
TEMPLATES = [
    Template(),
    Template(input_prefix="Review: ", text_lead=""),  # the prefix's space joins the first word
    Template.from_format("{text} =>{label}"),
    Template(input_prefix="Re", text_lead=""),  # "▁Review:" straddles a text "view:...": refused
    Template(separator="\n\n"),
]
LABEL_SETS = [SENTIMENT, (" dull", " fun", " great"), ("negative", "positive")]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_roles_equal_the_brute_force_oracle(sp_tok, data):
    template = data.draw(st.sampled_from(TEMPLATES))
    label_words = data.draw(st.sampled_from(LABEL_SETS))
    policy = data.draw(st.sampled_from(["first", "all"]))
    text = st.one_of(texts, texts.map(lambda s: "view:" + s))
    demos = data.draw(st.lists(st.tuples(text, st.integers(0, len(label_words) - 1)), max_size=4))
    p = prompt(demos, query=data.draw(text), words=label_words, template=template)
    expected = brute_force_roles(sp_tok, p, policy)
    if expected is None:
        with pytest.raises(PromptError, match=r"prompt 0: token .* lies in both the"):
            tokenize_prompts([p], sp_tok, label_token_policy=policy)
        return
    assert_matches_oracle(sp_tok, p, policy)
    batch = tokenize_prompts([p], sp_tok, label_token_policy=policy)
    after = sp_tok(p.text() + label_words[0], add_special_tokens=False)["input_ids"]
    assert batch.label_token_ids[0, 0].item() == after[int(batch.lengths[0]) - 1]
    classes, demos = batch.label_class[0].tolist(), batch.demo_index[0].tolist()
    for k in range(1, len(classes)):
        if classes[k] >= 0 and (classes[k - 1] < 0 or demos[k - 1] != demos[k]):  # word start
            assert batch.tokens[0, k] == batch.label_token_ids[0, classes[k]]


def test_input_prefix_space_joins_the_text(metaspace_tok):
    p = prompt([("a dull film", 0)], template=Template(input_prefix="Review: ", text_lead=""))
    batch = tokenize_prompts([p], metaspace_tok)
    tokens = pieces(metaspace_tok, batch.tokens[0])
    assert tokens[1:3] == ["▁Review:", "▁a"]  # "▁a" is the prefix's space + the text's "a"
    assert batch.roles[0, 1:3].tolist() == [Role.FORMAT, Role.TEXT]
    assert_matches_oracle(metaspace_tok, p)


def test_label_ids_are_the_words_tokens_after_the_prompt(sp_tok):
    # Alone, "Negative" is "▁Negative", a token it never is after "=>": the ids must be the
    # in-prompt ones, with or without demonstrations.
    p = prompt([("dull", 0), ("fun", 1)], words=("Negative", "Positive"),
               template=Template.from_format("{text} =>{label}"))  # fmt: skip
    assert pieces(sp_tok, sp_tok("Negative", add_special_tokens=False)["input_ids"]) == [
        "▁Negative"
    ]
    batch = tokenize_prompts([p], sp_tok, label_token_policy="first")
    first = batch.tokens[0, batch.label_positions(0)[0]].item()
    assert pieces(sp_tok, [first, batch.tokens[0, batch.label_positions(0)[0] + 1]]) == [
        "Ne",
        "gative",
    ]
    assert batch.label_token_ids[0, 0].item() == first
    zero_shot = tokenize_prompts([prompt([], "dull", p.label_words, p.template)], sp_tok,
                                 label_token_policy="first")  # fmt: skip
    assert zero_shot.label_token_ids.tolist() == batch.label_token_ids.tolist()


@pytest.mark.parametrize("policy", ["single", "first", "all"])
def test_label_token_policies(sp_tok, policy):
    # Inside the prompt ["▁Negative", "ly"]; alone, Llama-2's normalizer adds a third "▁".
    words = (" Negatively", " Positively")
    p = prompt([("what is nasa", 0), ("a dull film", 1)], words=words)
    if policy == "single":
        message = "label word ' Negatively' is 2 tokens for this tokenizer; pass label_token_"
        with pytest.raises(LabelWordError, match=re.escape(message)):
            tokenize_prompts([p], sp_tok, label_token_policy=policy)
        return
    batch = tokenize_prompts([p], sp_tok, label_token_policy=policy)
    assert_matches_oracle(sp_tok, p, policy)
    roles = batch.roles[0].tolist()
    rest = Role.LABEL if policy == "all" else Role.LABEL_REST
    start = batch.label_positions(0)[0]
    assert roles[start : start + 3] == [Role.LABEL, rest, Role.FORMAT]
    assert pieces(sp_tok, batch.label_token_ids[0]) == ["▁Negative", "▁Positive"]


def test_single_token_words_work_under_single_with_the_llama2_normalizer(sp_tok):
    # Alone " Negative" is ["▁", "▁Negative"] for Llama-2: segment-wise it would be 2 tokens.
    batch = tokenize_prompts([HAND], sp_tok, label_token_policy="single")
    assert pieces(sp_tok, batch.label_token_ids[0]) == ["▁Negative", "▁Positive"]


# --- padding, BOS, max_length ---------------------------------------------------------------


def test_batch_padding_bos_and_max_length(metaspace_tok):
    short, long = prompt([], "fun"), prompt([("a", 0), ("b", 1), ("c", 0)])
    batch = tokenize_prompts([short, long], metaspace_tok, pad_token_id=2)
    lengths = [len(metaspace_tok(p.text())["input_ids"]) for p in (short, long)]
    assert batch.lengths.tolist() == lengths
    assert batch.tokens[0, lengths[0] :].tolist() == [2] * (lengths[1] - lengths[0])
    assert batch.target_position.tolist() == [lengths[0] - 1, lengths[1] - 1]
    assert [len(s) for s in batch.str_tokens] == lengths
    no_bos = tokenize_prompts([short], metaspace_tok, prepend_bos=False)
    assert no_bos.tokens[0].tolist() == batch.tokens[0, 1 : lengths[0]].tolist()
    assert Role.BOS not in no_bos.roles[0].tolist()
    message = f"prompt 1 is {lengths[1]} tokens, longer than the context length {lengths[0]}"
    with pytest.raises(ContextLengthError, match=re.escape(message)):
        tokenize_prompts([short, long], metaspace_tok, max_length=lengths[0])


# --- GPT-2 style byte-level BPE: the segment-wise path, unchanged -------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_offsets_agree_with_segment_wise_tokenization_on_gpt2(toy_tok, data):
    label_words = data.draw(st.sampled_from([SENTIMENT, (" World", " Sports", " Business")]))
    demos = data.draw(st.lists(st.tuples(texts, st.integers(0, len(label_words) - 1)), max_size=4))
    p = prompt(demos, query=data.draw(texts), words=label_words)
    policy = data.draw(st.sampled_from(["single", "first", "all"]))
    batch = tokenize_prompts([p], toy_tok, label_token_policy=policy)  # segment-wise path
    t = p.template
    segments = alignment.prompt_segments(
        t.input_prefix, t.text_lead, t.label_prefix, t.separator, label_words,
        [(d.text, d.label) for d in p.demonstrations], p.query.text,
    )  # fmt: skip
    ids, offsets = alignment.encode_with_offsets(toy_tok, p.text())
    row, words = alignment.align_prompt(
        0, p.text(), segments, ids, offsets, label_words, toy_tok, policy, None
    )
    assert row.tokens == batch.tokens[0].tolist()
    assert row.roles == batch.roles[0].tolist()
    assert row.demo_index == batch.demo_index[0].tolist()
    assert row.label_class == batch.label_class[0].tolist()
    assert [w[0] for w in words] == batch.label_token_ids[0].tolist()
    assert words == [toy_tok(w, add_special_tokens=False)["input_ids"] for w in label_words]


def test_gpt2_label_ids_are_the_segment_wise_ones(toy_tok):
    batch = tokenize_prompts(toy_prompts(3), toy_tok)
    negative, positive = toy_tok.convert_tokens_to_ids(["ĠNegative", "ĠPositive"])
    assert batch.label_token_ids.tolist() == [[negative, positive]] * 3
    assert Role.BOS not in batch.roles.flatten().tolist()


# --- the boundary rule on hand-made offsets -------------------------------------------------


def _segments():
    return [
        alignment.Segment("Answer: ", Role.FORMAT, 0, "label prefix of demonstration 0"),
        alignment.Segment("yes", Role.LABEL, 0, "label word 'yes' of demonstration 0", 1),
        alignment.Segment("\n", Role.FORMAT, 0, "separator after demonstration 0"),
    ]


@pytest.mark.parametrize(
    "offsets",
    [
        [(0, 7), (7, 11), (11, 12)],  # "▁yes" with its space: the space is the prefix's
        [(0, 7), (8, 11), (11, 12)],  # trim_offsets: the same token without its space
        [(0, 7), (7, 8), (8, 11), (11, 12)],  # a lone "▁" token: the prefix's
        [(0, 0), (0, 7), (7, 11), (11, 12)],  # an empty span: where it starts
    ],
)
def test_leading_space_goes_with_what_follows(offsets):
    owners, straddles = alignment.assign_tokens(0, "Answer: yes\n", _segments(), offsets, str)
    assert not any(straddles)
    assert owners[-2:] == [1, 2]
    assert set(owners[:-2]) == {0}


@pytest.mark.parametrize(
    ("offsets", "token", "first", "second"),
    [
        ([(0, 8), (8, 12)], "(characters 8..12, 'yes\\n')", "label word 'yes'", "separator"),
        ([(0, 9), (9, 11), (11, 12)], "(characters 0..9, 'Answer: y')", "label prefix", "label"),
    ],
)
def test_a_token_across_two_roles_is_refused(offsets, token, first, second):
    with pytest.raises(PromptError) as info:
        alignment.assign_tokens(3, "Answer: yes\n", _segments(), offsets, lambda k: f"tok{k}")
    message = str(info.value)
    assert message.startswith("prompt 3: token ")
    assert token in message
    assert re.search(f"lies in both the {first}.* and the {second}", message)


def test_offsets_out_of_order_are_refused():
    with pytest.raises(PromptError, match=r"prompt 0: token 1 'b' .* offsets are out of order"):
        alignment.assign_tokens(
            0, "Answer: yes\n", _segments(), [(8, 11), (0, 7)], "ab".__getitem__
        )


# --- bad input ------------------------------------------------------------------------------


def test_text_merging_with_the_label_prefix_is_refused(metaspace_tok):
    glued = prompt([], query="a wonder", template=Template(label_prefix="ful\nSentiment:"))
    message = (
        "prompt 0: token 3 'derful' (characters 13..19, 'derful') lies in both the text of the "
        "query and the label prefix of the query, whose tokens get different roles"
    )
    with pytest.raises(PromptError, match=re.escape(message)):
        tokenize_prompts([glued], metaspace_tok)


def test_label_word_merging_with_the_next_text_is_refused(sp_tok):
    glued = prompt([("dull", 0), ("fun", 1)], words=(" Neg", " Pos"),
                   template=Template(separator="ative\n"))  # fmt: skip
    message = (
        "prompt 1: token 6 '▁Negative' (characters 23..32, ' Negative') lies in both the label "
        "word ' Neg' of demonstration 0 and the separator after demonstration 0"
    )
    with pytest.raises(PromptError, match=re.escape(message)):
        tokenize_prompts([HAND, glued], sp_tok, label_token_policy="first")


def test_label_word_merging_with_the_target_is_refused(metaspace_tok):
    p = prompt([("dull", 0)], words=("Negative", "Positive"),
               template=Template(label_prefix="\nSentiment: "))  # fmt: skip
    message = (
        "prompt 0: label word 'Negative' merges with the end of the prompt: the prompt ends in "
        "['▁'] but the prompt followed by the word in ['▁Negative']"
    )
    with pytest.raises(LabelWordError, match=re.escape(message)):
        tokenize_prompts([p], metaspace_tok)


class SlowPieces(PreTrainedTokenizer):
    """A slow (pure Python) tokenizer with a fast one's pieces: the same ids, no offsets."""

    def __init__(self, fast, **kwargs):
        self.fast = fast
        self.vocab = fast.get_vocab()
        self.ids_to_tokens = {i: t for t, i in self.vocab.items()}
        super().__init__(bos_token="<s>", eos_token="</s>", unk_token="<unk>", **kwargs)

    @property
    def vocab_size(self):
        return len(self.vocab)

    def get_vocab(self):
        return dict(self.vocab)

    def _tokenize(self, text, **kwargs):
        return self.fast.tokenize(text)

    def _convert_token_to_id(self, token):
        return self.vocab[token]

    def _convert_id_to_token(self, index):
        return self.ids_to_tokens[index]

    def convert_tokens_to_string(self, tokens):
        return self.fast.convert_tokens_to_string(tokens)


def test_slow_tokenizer_that_disagrees_needs_a_fast_one(metaspace_tok):
    slow = SlowPieces(metaspace_tok)
    assert not slow.is_fast
    text = HAND.text()
    assert (
        slow(text, add_special_tokens=False)["input_ids"]
        == metaspace_tok(text, add_special_tokens=False)["input_ids"]
    )
    message = (
        "prompt 0: tokenizing segment by segment gives token 4 = '', but the whole prompt text "
        "gives '\\n'; a template piece and a text merge into one token"
    )
    with pytest.raises(PromptError, match=re.escape(message)) as info:
        tokenize_prompts([HAND], slow)
    assert "does not give: use a fast tokenizer (tokenizer.is_fast" in str(info.value)


def test_label_word_tokenized_differently_in_two_prompts(metaspace_tok):
    # No ordinary tokenizer does this without merging (refused above); this normalizer
    # lower-cases a letter after ':' only, so 'Negative' reads 'n...' after ':', 'N...' after '='.
    odd = sentencepiece_tokenizer("metaspace", extra=[normalizers.Replace(Regex("(?<=:)N"), "n")])
    words = ("Negative", "Positive")
    colon = prompt([("dull", 0)], words=words, template=Template(label_prefix="\nSentiment:"))
    equals = prompt([("dull", 0)], words=words, template=Template(label_prefix="\nSentiment="))
    for p in (colon, equals):
        assert len(tokenize_prompts([p], odd, label_token_policy="first")) == 1
    with pytest.raises(LabelWordError, match=r"label word 'Negative' is tokenized as \[") as info:
        tokenize_prompts([colon, equals], odd, label_token_policy="first")
    assert re.search(r"in prompt 1 but as \[.*\] in prompt 0; one batch needs", str(info.value))


def test_label_word_tokenized_differently_in_a_demonstration():
    # A normalizer that strips trailing spaces (as SentencePiece's remove_extra_whitespaces
    # does): "▁Negative", "▁" inside the prompt, only "▁Negative" after it.
    strip = sentencepiece_tokenizer("metaspace", extra=[normalizers.Strip(left=False, right=True)])
    p = prompt([("dull", 0)], words=(" Negative ", " Positive "))
    message = (
        "prompt 0: the label word ' Negative ' of demonstration 0 is tokenized as ['▁Negative', "
        "'▁'] inside the prompt but as ['▁Negative'] after the label prefix at the target position"
    )
    with pytest.raises(LabelWordError, match=re.escape(message)):
        tokenize_prompts([p], strip, label_token_policy="first")


def test_shared_first_token_is_refused(metaspace_tok):
    p = prompt([("dull", 0)], words=(" Negative", " Negatives"))
    with pytest.raises(LabelWordError, match="share their first token"):
        tokenize_prompts([p], metaspace_tok, label_token_policy="first")
