"""Which tokens of a prompt belong to which of its pieces (PAPER.md §0.3 prompt layout).

A prompt is a sequence of :class:`Segment` s (input prefix, text, label prefix, label word,
separator; :func:`prompt_segments`), each with the role, demonstration and class its tokens
get. Two ways to find those tokens:

* segment by segment (:func:`segment_row`), when tokenizing every piece alone gives the whole
  prompt's tokens, as with GPT-2's byte-level BPE: roles exact by construction;
* from character offsets (:func:`align_prompt`), when it does not: SentencePiece-style
  tokenizers (a Metaspace pre-tokenizer or a ``"▁"``-prepending normalizer, e.g. Llama-2's)
  add a prefix space ``"▁"`` on every call. The whole prompt's tokens and character offsets
  (:func:`encode_with_offsets`; fast tokenizers only, slow ones are refused with
  :func:`no_offsets_error`) put every token in the segment its characters lie in.

Boundary rule (:func:`assign_tokens`). A token belongs to the segment of its *core*: its
characters without leading spaces and without trailing whitespace. Leading spaces (``" "``, the
``"▁"`` of a Metaspace token or the ``" "`` of a byte-level BPE token) go with the characters
after them, wherever they came from: ``"▁Negative"`` made of a label prefix's trailing space and
the label word ``"Negative"`` is the label word's token, as a GPT-2 token ``" Negative"`` is.
Trailing whitespace goes with the characters before it: GPT-4-style regex BPE (Llama-3,
Qwen2.5/3, DeepSeek-V3, gpt-oss) merges a text's final punctuation with the newline that starts
the label prefix (``" .\n"``, ``"?\n"``, ``"%.\n"``); such a token is the text's. A token
that is only whitespace belongs to the segment of its first character after leading spaces.
Such a token that reaches, through its trailing whitespace, into a segment whose tokens get a
different (role, demonstration, class) *straddles*: allowed where neither segment is an anchor
(a label word, or the query's label prefix when the token is the prompt's last, the target),
counted per prompt (``PromptBatch.straddling``), refused otherwise. A core that lies in two
such segments (a letter, a newline between two words) is never guessed: ``PromptError``.
Offsets that include the ``"▁"`` and offsets that leave it out (``trim_offsets``) give the same
roles; a token with an empty span (e.g. a prepended ``"▁"``) belongs to the segment at its start.

Label words (:func:`label_ids_in_context`). The classifier reads the logit of a label word's
first token at the target position, so on the offset path each class's token ids are those the
word gets when it follows the whole prompt (e.g. ``["▁Negative"]`` after ``"Sentiment:"``,
whatever ``" Negative"`` gives alone). The prompt's own tokens must stay a prefix of that (else
the word merges with the target token), every demonstration's label-word tokens must equal
them, and a word must get the same tokens in every prompt of a batch
(:func:`check_same_label_ids`).

Deliberately not here: choosing the path and batching
(:func:`anchor_flow.icl.prompts.tokenize_prompts`), and anything that guesses a role from decoded
strings.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from anchor_flow.errors import LabelWordError, PromptError
from anchor_flow.icl.roles import Role, RowBuilder, check_label_words

__all__ = [
    "Segment",
    "align_prompt",
    "assign_tokens",
    "check_same_label_ids",
    "encode_with_offsets",
    "label_ids_in_context",
    "no_offsets_error",
    "prompt_segments",
    "segment_mismatch",
    "segment_row",
    "token_piece",
]


@dataclass(frozen=True)
class Segment:
    """A contiguous piece of one prompt's text and the role its tokens get.

    ``role`` is TEXT or FORMAT; LABEL for a label word (its tokens become LABEL and
    LABEL_REST by the label-token policy); TARGET for the query's label prefix (its last token
    is the target, the others FORMAT). ``name`` says which piece it is, for error messages.
    """

    text: str
    role: Role
    demo: int
    name: str
    label: int = -1

    @property
    def key(self) -> tuple[int, int, int]:
        """What its tokens get: two segments with equal keys may share a token."""
        return int(self.role), self.demo, self.label

    def token_roles(self, n: int, policy: str) -> list[Role]:
        """The roles of this segment's ``n`` tokens under a label-token policy."""
        if n == 0:
            return []
        if self.role == Role.LABEL:
            return [Role.LABEL] + [Role.LABEL if policy == "all" else Role.LABEL_REST] * (n - 1)
        if self.role == Role.TARGET:
            return [Role.FORMAT] * (n - 1) + [Role.TARGET]
        return [self.role] * n


def prompt_segments(
    input_prefix: str,
    text_lead: str,
    label_prefix: str,
    separator: str,
    label_words: tuple[str, ...],
    demonstrations: Sequence[tuple[str, int]],
    query: str,
) -> list[Segment]:
    """The pieces of an ICL prompt's text (``ICLPrompt.text()``) in order, with their roles."""
    out = []
    for d, (text, c) in enumerate(demonstrations):
        where, word = f"demonstration {d}", label_words[c]
        out += [
            Segment(input_prefix, Role.FORMAT, d, f"input prefix of {where}"),
            Segment(text_lead + text, Role.TEXT, d, f"text of {where}"),
            Segment(label_prefix, Role.FORMAT, d, f"label prefix of {where}"),
            Segment(word, Role.LABEL, d, f"label word {word!r} of {where}", c),
            Segment(separator, Role.FORMAT, d, f"separator after {where}"),
        ]
    n = len(demonstrations)
    return [
        *out,
        Segment(input_prefix, Role.FORMAT, n, "input prefix of the query"),
        Segment(text_lead + query, Role.TEXT, n, "text of the query"),
        Segment(label_prefix, Role.TARGET, n, "label prefix of the query"),
    ]


def segment_row(
    index: int, segments: list[Segment], pieces: list[list[int]], policy: str, bos: int | None
) -> RowBuilder:
    """One prompt's row from its segments' own tokens (they equal the whole prompt's)."""
    if not pieces[-1]:
        raise PromptError(
            f"prompt {index}: label prefix {segments[-1].text!r} is 0 tokens for this tokenizer"
        )
    row = RowBuilder(bos)
    for segment, ids in zip(segments, pieces, strict=True):
        row.add(ids, segment.token_roles(len(ids), policy), segment.demo, segment.label)
    return row


def segment_mismatch(
    index: int, tokens: list[int], whole: list[int], decode: Callable[[int], str]
) -> str:
    """Why a prompt's segments do not tokenize like the whole prompt string (first difference)."""
    at = next(
        (k for k, (a, b) in enumerate(zip(tokens, whole, strict=False)) if a != b),
        min(len(tokens), len(whole)),
    )
    seg = decode(tokens[at]) if at < len(tokens) else "<end>"
    ful = decode(whole[at]) if at < len(whole) else "<end>"
    return (
        f"prompt {index}: tokenizing segment by segment gives token {at} = {seg!r}, but the "
        f"whole prompt text gives {ful!r}; a template piece and a text merge into one token "
        f"(e.g. a text ending without the separator the template expects, or a tokenizer that "
        f"adds a prefix space to every call)"
    )


def token_piece(tokenizer: Any) -> Callable[[int], str]:
    """The vocabulary entry of a token id (``"▁Negative"``), for error messages."""
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        return lambda token: str(tokenizer.convert_ids_to_tokens(int(token)))
    return lambda token: str(tokenizer.decode([int(token)]))


def assign_tokens(
    index: int,
    text: str,
    segments: Sequence[Segment],
    offsets: Sequence[tuple[int, int]],
    piece: Callable[[int], str],
) -> tuple[list[int], list[bool]]:
    """The segment each token belongs to, from its character span (the module's boundary rule),
    and whether it straddles two segments through its trailing whitespace.

    Example:
        >>> from anchor_flow.icl.roles import Role
        >>> segments = [Segment("Review: ok.", Role.TEXT, 0, "text"),
        ...             Segment("\\nAnswer:", Role.TARGET, 0, "label prefix")]
        >>> spans = [(0, 6), (6, 7), (7, 10), (10, 12), (12, 18), (18, 19)]  # ".\\n" merged
        >>> assign_tokens(0, "Review: ok.\\nAnswer:", segments, spans, str)
        ([0, 0, 0, 0, 1, 1], [False, False, False, True, False, False])

    Args:
        index: the prompt's index, for messages.
        text: the prompt string, the concatenation of the segments' texts.
        segments: the prompt's pieces in order.
        offsets: ``(start, end)`` character span of every token of ``text``.
        piece: the token's vocabulary entry from its position in ``offsets`` (for messages).

    Raises:
        PromptError: a token whose core lies in two segments whose tokens get different roles,
            demonstrations or classes; a straddling token that touches a label word or is the
            target; offsets that go backwards.
    """
    starts = list(itertools.accumulate((len(s.text) for s in segments), initial=0))[:-1]
    if "".join(s.text for s in segments) != text:
        raise PromptError(f"prompt {index}: its segments do not spell its text {text!r}")

    def at(position: int) -> int:
        # bisect_right skips empty segments: they share their start with the next segment.
        return bisect.bisect_right(starts, min(position, len(text) - 1)) - 1

    def shared(k: int, owner: int, other: int) -> PromptError:
        start, end = offsets[k]
        return PromptError(
            f"prompt {index}: token {k} {piece(k)!r} (characters {start}..{end}, "
            f"{text[start:end]!r}) lies in both the {segments[owner].name} and the "
            f"{segments[other].name}, whose tokens get different roles, "
            f"demonstrations or classes; its role would be a guess, so the prompt "
            f"is refused: change the template or the texts so that a token "
            f"boundary falls between them (e.g. a space or newline)"
        )

    owners: list[int] = []
    straddles: list[bool] = []
    for k, (start, end) in enumerate(offsets):
        straddle = False
        if end <= start:
            owner = at(start)
        else:
            core = start
            while core < end - 1 and text[core] == " ":
                core += 1
            solid = end - 1  # the core's last character: trailing whitespace goes with it
            while solid > core and text[solid].isspace():
                solid -= 1
            owner = at(core)
            for other in range(owner + 1, at(end - 1) + 1):
                if not segments[other].text or segments[other].key == segments[owner].key:
                    continue
                target = segments[other].role == Role.TARGET and k == len(offsets) - 1
                anchor = Role.LABEL in (segments[owner].role, segments[other].role)
                if starts[other] <= solid or anchor or target:
                    raise shared(k, owner, other)
                straddle = True
        if owners and owner < owners[-1]:
            raise PromptError(
                f"prompt {index}: token {k} {piece(k)!r} (characters {start}..{end}) lies in "
                f"the {segments[owner].name}, before token {k - 1} in the "
                f"{segments[owners[-1]].name}; the tokenizer's offsets are out of order"
            )
        owners.append(owner)
        straddles.append(straddle)
    return owners, straddles


def label_ids_in_context(
    index: int,
    text: str,
    prompt_ids: list[int],
    words: tuple[str, ...],
    tokenizer: Any,
    policy: str,
) -> list[list[int]]:
    """Each label word's token ids when it follows the whole prompt, checked for ``policy``.

    Raises:
        LabelWordError: the word merges with the prompt's last tokens (the prompt's tokens are
            not a prefix of the prompt-plus-word tokens), or the words are unusable (0 tokens,
            several under ``"single"``, a first token shared by two classes).
    """
    piece = token_piece(tokenizer)
    out = []
    for word in words:
        ids = [int(t) for t in tokenizer(text + word, add_special_tokens=False)["input_ids"]]
        n = len(prompt_ids)
        if ids[:n] != prompt_ids:
            at = next((k for k in range(n) if k >= len(ids) or ids[k] != prompt_ids[k]), n)
            raise LabelWordError(
                f"prompt {index}: label word {word!r} merges with the end of the prompt: the "
                f"prompt ends in {[piece(t) for t in prompt_ids[at:]]} but the prompt followed "
                f"by the word in {[piece(t) for t in ids[at:]]}, so the word's first token is not "
                f"what the model predicts at the target position; change the label prefix or "
                f"the label words (e.g. no space at the end of the label prefix)"
            )
        out.append(ids[n:])
    return check_label_words(words, out, policy, piece)


def check_same_label_ids(
    seen: dict[str, tuple[list[int], int]],
    index: int,
    words: tuple[str, ...],
    ids: list[list[int]],
    piece: Callable[[int], str],
) -> None:
    """Refuse a label word whose tokens differ from those it had in an earlier prompt.

    ``seen`` maps each word to its ids and the first prompt that had them; it is updated.
    """
    for word, toks in zip(words, ids, strict=True):
        first, where = seen.setdefault(word, (toks, index))
        if first != toks:
            raise LabelWordError(
                f"label word {word!r} is tokenized as {[piece(t) for t in toks]} in prompt "
                f"{index} but as {[piece(t) for t in first]} in prompt {where}; one batch "
                f"needs one token sequence per label word: use the same label prefix in every "
                f"prompt, or tokenize the prompts in separate batches"
            )


def encode_with_offsets(
    tokenizer: Any, text: str
) -> tuple[list[int], list[tuple[int, int]] | None]:
    """The ids of ``text`` (no special tokens) and their character spans, once.

    The spans are None where the tokenizer cannot give them (slow tokenizers ignore
    ``return_offsets_mapping`` or raise ``NotImplementedError``).
    """
    if getattr(tokenizer, "is_fast", False):
        try:
            encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        except NotImplementedError:
            encoded = None
        if encoded is not None and "offset_mapping" in encoded:
            ids = [int(t) for t in encoded["input_ids"]]
            return ids, [(int(s), int(e)) for s, e in encoded["offset_mapping"]]
    return [int(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]], None


def no_offsets_error(mismatch: str, tokenizer: Any) -> PromptError:
    """The error for a prompt that needs offsets (``mismatch`` says why) they cannot give."""
    return PromptError(
        f"{mismatch}; roles can then only be aligned from the whole prompt's character "
        f"offsets, which this tokenizer ({type(tokenizer).__name__}) does not give: use a "
        f"fast tokenizer (tokenizer.is_fast; e.g. AutoTokenizer.from_pretrained(name) "
        f"without use_fast=False), or change the template or the texts"
    )


def align_prompt(
    index: int,
    text: str,
    segments: Sequence[Segment],
    ids: list[int],
    offsets: Sequence[tuple[int, int]],
    label_words: tuple[str, ...],
    tokenizer: Any,
    policy: str,
    bos: int | None,
) -> tuple[RowBuilder, list[list[int]]]:
    """One prompt's row: the whole prompt's tokens, with roles from their offsets.

    Args:
        index: the prompt's index, for messages.
        text: the prompt string.
        segments: its pieces, in order, spelling ``text``.
        ids, offsets: the whole prompt's tokens and their character spans
            (:func:`encode_with_offsets`).
        label_words: the prompt's label words in class order.
        tokenizer: the Hugging Face tokenizer (for the label words after the prompt).
        policy: the label-token policy (``"single"``, ``"first"`` or ``"all"``).
        bos: the BOS id to put first, or None.

    Returns:
        The row, and each class's label-word token ids as tokenized right after the prompt.

    Raises:
        PromptError: an ambiguous token, or a query label prefix with no token of its own.
        LabelWordError: see :func:`label_ids_in_context`, or a demonstration whose label-word
            tokens differ from the word's tokens after the prompt.
    """
    piece = token_piece(tokenizer)
    owners, straddles = assign_tokens(index, text, segments, offsets, lambda k: piece(ids[k]))
    words = label_ids_in_context(index, text, ids, label_words, tokenizer, policy)
    members: list[list[int]] = [[] for _ in segments]
    row = RowBuilder(bos)
    for k, owner in enumerate(owners):
        members[owner].append(k)
    for segment, positions in zip(segments, members, strict=True):
        toks = [ids[k] for k in positions]
        if segment.role == Role.LABEL and toks != words[segment.label]:
            raise LabelWordError(
                f"prompt {index}: the {segment.name} is tokenized as {[piece(t) for t in toks]} "
                f"inside the prompt but as {[piece(t) for t in words[segment.label]]} after the "
                f"label prefix at the target position, where its logit is read; change the "
                f"separator or the label words so that they tokenize the same in both places"
            )
        if segment.role == Role.TARGET and not toks:
            raise PromptError(
                f"prompt {index}: the {segment.name} {segment.text!r} has no token of its own, "
                f"so there is no target position; change the template"
            )
        row.add(toks, segment.token_roles(len(toks), policy), segment.demo, segment.label,
                straddling=[straddles[k] for k in positions])  # fmt: skip
    return row, words
