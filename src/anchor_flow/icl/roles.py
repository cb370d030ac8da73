"""Token roles of tokenized ICL prompts (PAPER.md §0.3 prompt layout, §5.1 'formatting').

:class:`Role` names what every position of a prompt is (demonstration text, formatting, a
label word, the target ``:``), and :class:`PromptBatch` holds a right-padded batch of token
ids together with those roles. Both are pure data: :func:`anchor_flow.icl.prompts.tokenize_prompts`
builds them, every experiment module reads them. This module does not tokenize and never
touches a model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from anchor_flow.errors import LabelWordError, PromptError

__all__ = ["PromptBatch", "Role"]


class Role(IntEnum):
    """What a token position is, following the paper's vocabulary.

    Example:
        >>> int(Role.LABEL), Role(6).name
        (4, 'TARGET')

    Attributes:
        PAD: right padding beyond a row's length.
        BOS: a beginning-of-sequence token the tokenizer (or the caller) prepends.
        TEXT: demonstration or query input text, including the space in front of it.
        FORMAT: the input prefix (``"Review:"``), the label prefix (``"\\nSentiment:"``, minus
            the query's final token) and the separators between demonstrations.
        LABEL: the anchor token(s) of a demonstration's label word.
        LABEL_REST: the other tokens of a multi-token label word under policy ``"first"``.
        TARGET: the last token of the query's label prefix, where the prediction is read.
    """

    PAD = 0
    BOS = 1
    TEXT = 2
    FORMAT = 3
    LABEL = 4
    LABEL_REST = 5
    TARGET = 6


@dataclass(frozen=True)
class PromptBatch:
    """A right-padded batch of tokenized ICL prompts with the role of every position.

    Example:
        >>> from anchor_flow import tokenize_prompts, toy_prompts
        >>> from anchor_flow.testbeds.toy import build_toy_tokenizer
        >>> batch = tokenize_prompts(toy_prompts(2), build_toy_tokenizer())
        >>> len(batch), batch.n_classes, batch.roles[0, batch.target_position[0]].item()
        (2, 2, 6)

    Attributes:
        tokens: token ids; pad id beyond each row's length.
        roles: :class:`Role` values; ``Role.PAD`` beyond each row's length.
        demo_index: the demonstration (0..D-1) a position belongs to; the query's positions get
            D (the row's number of demonstrations); BOS and PAD get -1. A separator belongs to
            the demonstration it ends (paper §5.1 keeps "the trailing \\n" with each demo).
        label_class: class index at LABEL and LABEL_REST positions, -1 elsewhere.
        target_position: position of the TARGET token of each row.
        label_token_ids: first token of each class's label word, in class order.
        gold: the query's class, -1 when unknown.
        str_tokens: per row, the decoded tokens without padding (for plots).
        straddling: True at a token whose trailing whitespace lies in the next segment of
            another role (a text's ``" .\\n"`` on GPT-4-style BPE; it gets its core's role:
            :mod:`anchor_flow.icl.alignment`); None means none (all False).
    """

    tokens: Int[Tensor, "batch pos"]
    roles: Int[Tensor, "batch pos"]
    demo_index: Int[Tensor, "batch pos"]
    label_class: Int[Tensor, "batch pos"]
    target_position: Int[Tensor, " batch"]
    label_token_ids: Int[Tensor, "batch n_classes"]
    gold: Int[Tensor, " batch"]
    str_tokens: tuple[tuple[str, ...], ...]
    straddling: Bool[Tensor, "batch pos"] | None = None

    def __post_init__(self) -> None:
        shape = tuple(self.tokens.shape)
        if self.straddling is None:
            object.__setattr__(
                self, "straddling", torch.zeros(shape, dtype=torch.bool, device=self.tokens.device)
            )
        for name in ("roles", "demo_index", "label_class", "straddling"):
            if tuple(getattr(self, name).shape) != shape:
                raise PromptError(
                    f"PromptBatch.{name} has shape {tuple(getattr(self, name).shape)}, "
                    f"expected the shape of tokens {shape}"
                )
        n_rows = shape[0]
        for name in ("target_position", "gold"):
            if tuple(getattr(self, name).shape) != (n_rows,):
                raise PromptError(
                    f"PromptBatch.{name} has shape {tuple(getattr(self, name).shape)}, "
                    f"expected ({n_rows},)"
                )
        if self.label_token_ids.shape[0] != n_rows:
            raise PromptError(
                f"PromptBatch.label_token_ids has {self.label_token_ids.shape[0]} rows, "
                f"expected {n_rows}"
            )
        if len(self.str_tokens) != n_rows:
            raise PromptError(
                f"PromptBatch.str_tokens has {len(self.str_tokens)} rows, expected {n_rows}"
            )
        real = self.attention_mask
        lengths = real.sum(-1)
        # Right padding: every row is real tokens followed only by PAD.
        positions = torch.arange(shape[1], device=real.device)
        if not torch.equal(real, positions[None, :] < lengths[:, None]):
            raise PromptError(
                "PromptBatch.roles must be right-padded: Role.PAD only after a row's tokens"
            )
        for row, length in enumerate(lengths.tolist()):
            if len(self.str_tokens[row]) != length:
                raise PromptError(
                    f"PromptBatch.str_tokens[{row}] has {len(self.str_tokens[row])} tokens, "
                    f"expected the row's length {length}"
                )
        if n_rows and not bool(
            (self.roles.gather(1, self.target_position[:, None]) == Role.TARGET).all()
        ):
            raise PromptError("PromptBatch.target_position must point at a Role.TARGET position")
        if bool((self.demo_index[~real] != -1).any()) or bool(
            (self.label_class[~real] != -1).any()
        ):
            raise PromptError("PromptBatch.demo_index and label_class must be -1 at PAD positions")
        if bool(self.straddle_mask[~real].any()):
            raise PromptError("PromptBatch.straddling must be False at PAD positions")

    @property
    def straddle_mask(self) -> Bool[Tensor, "batch pos"]:
        """``straddling`` as a tensor (never None after construction)."""
        if self.straddling is None:  # __post_init__ fills it; this keeps the type checker sure
            raise PromptError("PromptBatch.straddling was not filled in")
        return self.straddling

    @property
    def straddling_counts(self) -> Int[Tensor, " batch"]:
        """Per row, how many tokens straddle two non-anchor segments (see ``straddling``)."""
        return self.straddle_mask.sum(-1)

    @property
    def attention_mask(self) -> Bool[Tensor, "batch pos"]:
        """True at real tokens, False at padding (found from the roles, never the pad id)."""
        return self.roles != Role.PAD

    @property
    def has_bos(self) -> bool:
        """Whether the rows start with a BOS token (what results record as ``prepend_bos``)."""
        return bool((self.roles[:, 0] == Role.BOS).any())

    @property
    def lengths(self) -> Int[Tensor, " batch"]:
        """Number of real tokens per row."""
        return self.attention_mask.sum(-1)

    @property
    def n_classes(self) -> int:
        """Number of classes (label words) of every prompt in the batch."""
        return int(self.label_token_ids.shape[1])

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def select(self, rows: Sequence[int] | Int[Tensor, " n"]) -> PromptBatch:
        """The given rows, re-padded to the longest of them.

        Example:
            >>> from anchor_flow import tokenize_prompts, toy_prompts
            >>> from anchor_flow.testbeds.toy import build_toy_tokenizer
            >>> batch = tokenize_prompts(toy_prompts(3), build_toy_tokenizer())
            >>> len(batch.select([2, 0]))
            2
        """
        index = [int(r) for r in (rows.tolist() if isinstance(rows, Tensor) else rows)]
        if not index:
            raise PromptError("PromptBatch.select needs at least one row, got none")
        bad = [r for r in index if not -len(self) <= r < len(self)]
        if bad:
            raise PromptError(
                f"PromptBatch.select: rows {bad} out of range for a batch of {len(self)}"
            )
        picked = torch.tensor(index, dtype=torch.long, device=self.tokens.device)
        width = int(self.lengths[picked].max())
        return PromptBatch(
            tokens=self.tokens[picked, :width],
            roles=self.roles[picked, :width],
            demo_index=self.demo_index[picked, :width],
            label_class=self.label_class[picked, :width],
            target_position=self.target_position[picked],
            label_token_ids=self.label_token_ids[picked],
            gold=self.gold[picked],
            str_tokens=tuple(self.str_tokens[r] for r in index),
            straddling=self.straddle_mask[picked, :width],
        )

    def label_positions(self, row: int) -> list[int]:
        """Positions of the anchor (Role.LABEL) tokens of ``row``, in prompt order.

        Example:
            >>> from anchor_flow import tokenize_prompts, toy_prompts
            >>> from anchor_flow.testbeds.toy import build_toy_tokenizer
            >>> batch = tokenize_prompts(toy_prompts(1), build_toy_tokenizer())
            >>> len(batch.label_positions(0))
            2
        """
        if not -len(self) <= row < len(self):
            raise PromptError(f"row {row} out of range for a batch of {len(self)}")
        return [int(p) for p in torch.nonzero(self.roles[row] == Role.LABEL).flatten().tolist()]


# Building blocks of anchor_flow.icl.prompts.tokenize_prompts (kept here for file size; not public).


class TokenCache:
    """A tokenizer's ``encode`` (no special tokens) and one-token ``decode``, memoised."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._ids: dict[str, list[int]] = {}
        self._strings: dict[int, str] = {}

    def encode(self, s: str) -> list[int]:
        if s not in self._ids:
            ids = self.tokenizer(s, add_special_tokens=False)["input_ids"] if s else []
            self._ids[s] = [int(t) for t in ids]
        return self._ids[s]

    def keeps_tokens(self, prefix: str, word: str) -> bool:
        """Whether ``word`` has the same tokens after ``prefix`` as alone."""
        return self.encode(prefix + word) == self.encode(prefix) + self.encode(word)

    def decode(self, token: int) -> str:
        if token not in self._strings:
            self._strings[token] = str(self.tokenizer.decode([token]))
        return self._strings[token]


class RowBuilder:
    """Accumulates one prompt's tokens with their role, demonstration and class."""

    def __init__(self, bos: int | None = None) -> None:
        self.tokens: list[int] = []
        self.roles: list[int] = []
        self.demo_index: list[int] = []
        self.label_class: list[int] = []
        self.straddling: list[bool] = []
        if bos is not None:
            self.add([bos], Role.BOS, -1)

    def add(
        self,
        ids: list[int],
        roles: Role | list[Role],
        demo: int,
        label: int = -1,
        straddling: list[bool] | None = None,
    ) -> None:
        self.tokens.extend(ids)
        self.straddling.extend(straddling if straddling is not None else [False] * len(ids))
        self.roles.extend(
            int(r) for r in ([roles] * len(ids) if isinstance(roles, Role) else roles)
        )
        self.demo_index.extend([demo] * len(ids))
        self.label_class.extend([label] * len(ids))


def stack_rows(
    rows: list[RowBuilder],
    pad_token_id: int,
    label_token_ids: list[list[int]],
    gold: list[int],
    str_tokens: tuple[tuple[str, ...], ...],
) -> PromptBatch:
    """Right-pad the rows into a :class:`PromptBatch`."""
    width = max(len(r.tokens) for r in rows)

    def padded(field: str, fill: int) -> Tensor:
        values = [getattr(r, field) + [fill] * (width - len(r.tokens)) for r in rows]
        return torch.tensor(values, dtype=torch.long)

    roles = padded("roles", int(Role.PAD))
    return PromptBatch(
        straddling=padded("straddling", 0).bool(),
        tokens=padded("tokens", pad_token_id),
        roles=roles,
        demo_index=padded("demo_index", -1),
        label_class=padded("label_class", -1),
        target_position=(roles == Role.TARGET).long().argmax(-1),
        label_token_ids=torch.tensor(label_token_ids, dtype=torch.long),
        gold=torch.tensor(gold, dtype=torch.long),
        str_tokens=str_tokens,
    )


def resolve_bos(tokenizer: Any, prepend_bos: bool | None) -> int | None:
    """The BOS id to prepend, or None; ``None`` copies what the tokenizer itself does."""
    if prepend_bos is None:
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        special = tokenizer("a", add_special_tokens=True)["input_ids"]
        if len(special) > len(plain) and special[1 : 1 + len(plain)] == plain:
            return int(special[0])
        return None
    if prepend_bos and getattr(tokenizer, "bos_token_id", None) is None:
        raise PromptError("prepend_bos=True but the tokenizer has no bos_token_id")
    return int(tokenizer.bos_token_id) if prepend_bos else None


def check_label_words(
    words: tuple[str, ...], ids: list[list[int]], policy: str, decode: Callable[[int], str]
) -> list[list[int]]:
    """``ids`` (the tokens of each label word) if the policy and the classes can use them."""
    for word, toks in zip(words, ids, strict=True):
        if not toks:
            raise LabelWordError(f"label word {word!r} is 0 tokens for this tokenizer")
        if policy == "single" and len(toks) > 1:
            raise LabelWordError(
                f"label word {word!r} is {len(toks)} tokens for this tokenizer; pass "
                f"label_token_policy='first' (the paper's choice) or 'all', or choose "
                f"single-token label words"
            )
    for c, toks in enumerate(ids):
        for other in range(c):
            if ids[other][0] == toks[0]:
                raise LabelWordError(
                    f"label words {words[other]!r} and {words[c]!r} share their first token "
                    f"{decode(toks[0])!r} (id {toks[0]}), so their classes cannot be told apart; "
                    f"choose label words whose first tokens differ"
                )
    return ids
