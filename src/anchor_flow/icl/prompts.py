"""ICL prompts and their segment-wise tokenization with exact token roles (PAPER.md §0.3).

Implements the paper's prompt assembly: every demonstration is ``format_s`` with its label
word, the query is ``format_s`` with an empty label, all joined by a single ``"\\n"``, so the
prompt ends at the label prefix's ``":"`` (the target position). :func:`tokenize_prompts`
tokenizes the prompt one segment at a time (input prefix, text, label prefix, label word,
separator), so the role of every token is known by construction: no string search and no
trigram hashing as in the official code. Where the segments do not give the same tokens as the
whole prompt string (SentencePiece tokenizers such as Llama-2's add a ``"▁"`` to every call),
it tokenizes the whole string and takes the roles from character offsets instead
(:mod:`anchor_flow.icl.alignment`): a text's final punctuation merged with the template's
newline (GPT-4-style BPE: ``" .\\n"``) is the text's token and is counted
(``PromptBatch.straddling``); other tokens that straddle two roles are refused.

Deliberately not here: datasets, demonstration sampling protocols and seeds
(:mod:`anchor_flow.icl.sampling`); the offline toy prompts (:mod:`anchor_flow.testbeds.toy`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from anchor_flow.errors import ContextLengthError, LabelWordError, PromptError
from anchor_flow.icl import alignment
from anchor_flow.icl.roles import (
    PromptBatch,
    Role,
    TokenCache,
    check_label_words,
    resolve_bos,
    stack_rows,
)
from anchor_flow.models.bos import checkpoint_prepends_bos

__all__ = [
    "Example",
    "ICLPrompt",
    "PromptBatch",
    "Role",
    "Template",
    "load_prompts",
    "save_prompts",
    "tokenize_prompts",
]


@dataclass(frozen=True)
class Template:
    """One demonstration's layout: ``input_prefix + text_lead + text + label_prefix + label``.

    Example:
        >>> Template().render("a fine film", " Positive")
        'Review: a fine film\\nSentiment: Positive'
    """

    input_prefix: str = "Review:"
    label_prefix: str = "\nSentiment:"
    separator: str = "\n"
    text_lead: str = " "  # GPT-2 BPE attaches the space to the next word, so it goes with the text

    def __post_init__(self) -> None:
        if not self.label_prefix:
            raise PromptError(
                "Template.label_prefix is empty; the prediction is read at its last token"
            )

    @classmethod
    def from_format(cls, format_string: str, separator: str = "\n") -> Template:
        """Parse a paper-style ``format_s`` such as ``"Review: {text}\\nSentiment:{label}"``.

        Example:
            >>> Template.from_format("Article: {text}\\nAnswer:{label}").input_prefix
            'Article:'
        """
        counts = {key: format_string.count(key) for key in ("{text}", "{label}")}
        if counts != {"{text}": 1, "{label}": 1}:
            raise PromptError(
                f"format string {format_string!r} must contain '{{text}}' and '{{label}}' "
                f"exactly once each, e.g. 'Review: {{text}}\\nSentiment:{{label}}'"
            )
        text_at, label_at = format_string.index("{text}"), format_string.index("{label}")
        if not text_at < label_at or not format_string.endswith("{label}"):
            raise PromptError(
                f"format string {format_string!r} must have '{{text}}' before '{{label}}' and end "
                f"with '{{label}}', e.g. 'Review: {{text}}\\nSentiment:{{label}}'"
            )
        before = format_string[:text_at]
        input_prefix = before.rstrip(" ")
        return cls(
            input_prefix=input_prefix,
            label_prefix=format_string[text_at + len("{text}") : label_at],
            separator=separator,
            text_lead=before[len(input_prefix) :],
        )

    def render(self, text: str, label_word: str = "") -> str:
        """One demonstration (or, with no label word, the query), exactly the paper's format_s."""
        return self.input_prefix + self.text_lead + text + self.label_prefix + label_word


@dataclass(frozen=True)
class Example:
    """An input text with its class index (``None`` for an unlabelled query).

    Example:
        >>> Example("a fine film", 1).label
        1
    """

    text: str
    label: int | None = None


@dataclass(frozen=True)
class ICLPrompt:
    """Demonstrations and a query under one template and one set of label words.

    Example:
        >>> prompt = ICLPrompt(Template(), (" Negative", " Positive"),
        ...                    (Example("dull", 0), Example("fun", 1)), Example("great"))
        >>> print(prompt.text())
        Review: dull
        Sentiment: Negative
        Review: fun
        Sentiment: Positive
        Review: great
        Sentiment:
    """

    template: Template
    label_words: tuple[str, ...]
    demonstrations: tuple[Example, ...]
    query: Example

    def __post_init__(self) -> None:
        if not self.label_words:
            raise LabelWordError("ICLPrompt.label_words is empty; give one label word per class")
        for c, word in enumerate(self.label_words):
            if not word:
                raise LabelWordError(f"label word of class {c} is empty in {self.label_words!r}")
            if word in self.label_words[:c]:
                raise LabelWordError(f"label word {word!r} appears twice in {self.label_words!r}")
        n = len(self.label_words)
        for i, demo in enumerate(self.demonstrations):
            if demo.label is None or not 0 <= demo.label < n:
                raise PromptError(
                    f"demonstration {i} has label {demo.label!r}; expected a class index in "
                    f"0..{n - 1} for label words {self.label_words!r}"
                )
        if self.query.label is not None and not 0 <= self.query.label < n:
            raise PromptError(
                f"query has label {self.query.label!r}; expected None or a class index "
                f"in 0..{n - 1}"
            )

    def text(self) -> str:
        """The whole prompt string, identical to the paper's (no trailing space after ``:``)."""
        t = self.template
        demos = [t.render(d.text, self.label_words[_class_of(d)]) for d in self.demonstrations]
        return t.separator.join([*demos, t.render(self.query.text)])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict; :meth:`from_dict` inverts it."""
        return {
            "template": asdict(self.template),
            "label_words": list(self.label_words),
            "demonstrations": [asdict(d) for d in self.demonstrations],
            "query": asdict(self.query),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ICLPrompt:
        """Rebuild a prompt from :meth:`to_dict` output (raises PromptError if malformed)."""
        try:
            if not isinstance(d["label_words"], list | tuple):
                raise TypeError(f"label_words must be a list, got {d['label_words']!r}")
            return cls(
                template=Template(**d["template"]),
                label_words=tuple(d["label_words"]),
                demonstrations=tuple(Example(**e) for e in d["demonstrations"]),
                query=Example(**d["query"]),
            )
        except (KeyError, TypeError) as err:
            raise PromptError(
                f"not an ICLPrompt dict ({type(err).__name__}: {err}); expected keys "
                f"'template', 'label_words', 'demonstrations', 'query'"
            ) from err


def save_prompts(
    path: str | os.PathLike[str], prompts: Sequence[ICLPrompt], *, overwrite: bool = True
) -> None:
    """Write prompts as JSONL, one per line, atomically (temp file + ``os.replace``).

    ``overwrite=False`` (what ``anchor-flow prompts`` passes) refuses a ``path`` that exists
    and holds anything but exactly these prompts, and writes nothing; a file that already
    holds them is kept. A folder at ``path`` is always refused.

    Example:
        >>> import tempfile, pathlib
        >>> from anchor_flow import toy_prompts
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "prompts.jsonl"
        >>> save_prompts(path, toy_prompts(2)); len(load_prompts(path))
        2
    """
    from anchor_flow.results.files import write_atomic

    target = Path(path)
    text = "".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in prompts)
    if target.is_dir():
        raise PromptError(f"{str(target)!r} is a folder; expected a JSONL file path")
    if not overwrite and target.exists():
        try:
            same = target.read_bytes() == text.encode("utf-8")
        except OSError as error:
            raise PromptError(f"{str(target)!r} cannot be read ({error.strerror})") from None
        if not same:
            raise PromptError(
                f"{str(target)!r} exists and holds other content than these prompts; move it "
                "away or choose another --out file (nothing was written)"
            )
        return
    write_atomic(target, lambda handle: handle.write(text.encode("utf-8")))


def load_prompts(path: str | os.PathLike[str]) -> list[ICLPrompt]:
    """Read prompts written by :func:`save_prompts` (blank lines are skipped).

    Example:
        >>> import tempfile, pathlib
        >>> from anchor_flow import toy_prompts
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "prompts.jsonl"
        >>> save_prompts(path, toy_prompts(1)); load_prompts(path) == toy_prompts(1)
        True
    """
    prompts = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise PromptError(
            f"cannot read prompts from {str(path)!r} ({err.strerror}); expected a JSONL file "
            "written by save_prompts or `anchor-flow prompts`"
        ) from err
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise PromptError(f"expected a JSON object, got {type(record).__name__}")
            prompts.append(ICLPrompt.from_dict(record))
        except (json.JSONDecodeError, PromptError) as err:
            raise PromptError(f"{path}, line {number}: not a valid prompt: {err}") from err
    if not prompts:
        raise PromptError(f"{path} contains no prompts")
    return prompts


def tokenize_prompts(
    prompts: Sequence[ICLPrompt],
    tokenizer: Any,
    *,
    prepend_bos: bool | None = None,
    label_token_policy: Literal["single", "first", "all"] = "single",
    max_length: int | None = None,
    pad_token_id: int | None = None,
) -> PromptBatch:
    """Tokenize prompts into a right-padded :class:`PromptBatch` with exact token roles.

    Segment by segment where that gives the whole prompt's tokens (GPT-2 style byte-level BPE);
    otherwise, with a fast tokenizer, from the whole prompt's character offsets (SentencePiece
    style, e.g. Llama-2; see :mod:`anchor_flow.icl.alignment` for the rule at segment boundaries).
    Label-token ids are then the tokens a label word gets right after the prompt.

    Example:
        >>> from anchor_flow.testbeds.toy import build_toy_tokenizer, toy_prompts
        >>> batch = tokenize_prompts(toy_prompts(2), build_toy_tokenizer())
        >>> batch.str_tokens[0][batch.target_position[0]]
        ':'

    Args:
        prompts: the prompts; all must have the same number of classes.
        tokenizer: a Hugging Face tokenizer (called with ``add_special_tokens=False``).
        prepend_bos: None does what the checkpoint's own tokenizer does with
            ``add_special_tokens=True`` (GPT-2, GPT-J, GPT-NeoX: no BOS, as in the paper;
            Llama-style: BOS), also for the tokenizer copy of a model from
            :func:`anchor_flow.load_model`, which TransformerLens rebuilt to always add BOS
            (:func:`anchor_flow.models.bos.checkpoint_prepends_bos`); True/False force it.
        label_token_policy: "single" refuses multi-token label words; "first" makes the first
            token the anchor (LABEL) and the rest LABEL_REST (the paper); "all" marks all LABEL.
        max_length: the model's context length; None uses ``tokenizer.model_max_length`` when
            it is a real limit (< 1e6), else no limit.
        pad_token_id: pad id; default the tokenizer's pad, else EOS, else 0.

    Raises:
        PromptError: no prompts, mixed class counts, segments that tokenize differently from
            the whole prompt string with a slow tokenizer (no offsets), or a token that lies in
            two segments of different roles.
        LabelWordError: a label word that is multi-token under "single", empty, shares its
            first token with another class's, merges with the target token, or is tokenized
            differently in two places (demonstrations, after the prompt, other prompts).
        ContextLengthError: a prompt longer than ``max_length``.
    """
    if label_token_policy not in ("single", "first", "all"):
        raise PromptError(
            f"label_token_policy {label_token_policy!r}; expected 'single', 'first' or 'all'"
        )
    if not prompts:
        raise PromptError("tokenize_prompts got an empty list of prompts")
    n_classes = len(prompts[0].label_words)
    for i, p in enumerate(prompts):
        if len(p.label_words) != n_classes:
            raise PromptError(
                f"prompt {i} has {len(p.label_words)} classes {p.label_words!r} but prompt 0 has "
                f"{n_classes} {prompts[0].label_words!r}; one batch needs one number of classes"
            )
    codec = TokenCache(tokenizer)
    encode, decode = codec.encode, codec.decode
    piece = alignment.token_piece(tokenizer)
    if prepend_bos is None:  # a TL model's tokenizer copy adds BOS; the checkpoint may not
        prepend_bos = checkpoint_prepends_bos(tokenizer)
    bos = resolve_bos(tokenizer, prepend_bos)
    if max_length is None:
        limit = getattr(tokenizer, "model_max_length", None)
        max_length = limit if isinstance(limit, int) and limit < 1e6 else None
    words_ids: dict[tuple[str, ...], list[list[int]]] = {}
    seen: dict[str, tuple[list[int], int]] = {}
    rows, label_ids = [], []
    for i, p in enumerate(prompts):
        t, text = p.template, p.text()
        segments = alignment.prompt_segments(
            t.input_prefix,
            t.text_lead,
            t.label_prefix,
            t.separator,
            p.label_words,
            [(d.text, _class_of(d)) for d in p.demonstrations],
            p.query.text,
        )
        pieces = [encode(s.text) for s in segments]
        whole, offsets = alignment.encode_with_offsets(tokenizer, text)
        flat = [tok for ids in pieces for tok in ids]
        # SentencePiece tokenizers may give a word alone a "▁" it does not get after ":".
        if flat == whole and all(codec.keeps_tokens(t.label_prefix, w) for w in p.label_words):
            if p.label_words not in words_ids:
                words_ids[p.label_words] = check_label_words(
                    p.label_words, [encode(w) for w in p.label_words], label_token_policy, decode
                )
            row = alignment.segment_row(i, segments, pieces, label_token_policy, bos)
            words = words_ids[p.label_words]
        elif offsets is None:
            mismatch = alignment.segment_mismatch(i, flat, whole, decode)
            raise alignment.no_offsets_error(mismatch, tokenizer)
        else:
            row, words = alignment.align_prompt(
                i, text, segments, whole, offsets, p.label_words, tokenizer,
                label_token_policy, bos,
            )  # fmt: skip
        alignment.check_same_label_ids(seen, i, p.label_words, words, piece)
        if max_length is not None and len(row.tokens) > max_length:
            raise ContextLengthError(
                f"prompt {i} is {len(row.tokens)} tokens, longer than the context length "
                f"{max_length} (max_length); use fewer demonstrations or shorter texts"
            )
        rows.append(row)
        label_ids.append([w[0] for w in words])
    if pad_token_id is None:
        for name in ("pad_token_id", "eos_token_id"):
            if (pad_token_id := getattr(tokenizer, name, None)) is not None:
                break
    return stack_rows(
        rows,
        pad_token_id=int(pad_token_id) if pad_token_id is not None else 0,
        label_token_ids=label_ids,
        gold=[-1 if p.query.label is None else p.query.label for p in prompts],
        str_tokens=tuple(tuple(decode(tok) for tok in r.tokens) for r in rows),
    )


def _class_of(example: Example) -> int:
    if example.label is None:  # ICLPrompt.__post_init__ already refuses this
        raise PromptError(f"demonstration {example!r} has no label")
    return example.label
