"""The boundary rule for tokens whose trailing whitespace lies in the next segment (issue 23),
on hand-made offsets: allowed between non-anchor segments (the text's role, counted), refused
where the token touches a label word or is the target."""

from __future__ import annotations

import itertools
import re

import pytest

from anchor_flow.errors import PromptError
from anchor_flow.icl import alignment
from anchor_flow.icl.roles import Role

S = alignment.Segment
SEGMENTS = [
    S("Q: ok.", Role.TEXT, 0, "text of demonstration 0"),
    S("\nA:", Role.FORMAT, 0, "label prefix of demonstration 0"),
    S(" yes", Role.LABEL, 0, "label word ' yes' of demonstration 0", 1),
    S("\n", Role.FORMAT, 0, "separator after demonstration 0"),
    S("Q: hm?", Role.TEXT, 1, "text of the query"),
    S("\nA:", Role.TARGET, 1, "label prefix of the query"),
]
TEXT = "Q: ok.\nA: yes\nQ: hm?\nA:"


def spans(*cuts: int) -> list[tuple[int, int]]:
    bounds = [0, *cuts, len(TEXT)]
    return list(itertools.pairwise(bounds))


def test_punctuation_and_newline_get_the_texts_role_and_are_counted() -> None:
    # Q | : | ok | .\n | A | : | yes | \n | Q | : | hm | ?\n | A | :
    offsets = spans(1, 2, 5, 7, 8, 9, 13, 14, 15, 16, 19, 21, 22)
    owners, straddles = alignment.assign_tokens(0, TEXT, SEGMENTS, offsets, str)
    assert TEXT[5:7] == ".\n"
    assert TEXT[19:21] == "?\n"
    assert owners == [0, 0, 0, 0, 1, 1, 2, 3, 4, 4, 4, 4, 5, 5]
    assert [k for k, s in enumerate(straddles) if s] == [3, 11]


def test_a_whitespace_only_token_goes_with_its_first_character() -> None:
    segments = [S("ok\n", Role.TEXT, 0, "text"), S("\nA:", Role.TARGET, 0, "label prefix")]
    owners, straddles = alignment.assign_tokens(0, "ok\n\nA:", segments, [(0, 2), (2, 4),
                                                (4, 5), (5, 6)], str)  # fmt: skip
    assert owners == [0, 0, 1, 1]
    assert straddles == [False, True, False, False]


@pytest.mark.parametrize(
    ("offsets", "token", "first", "second"),
    [  # " yes\n": a label word's token reaching into the separator
        (spans(1, 2, 5, 7, 8, 9, 14, 15, 16, 19, 21, 22), "' yes\\n'", "label word", "separator"),
        # ".\nA": the core reaches into the label prefix
        (spans(1, 2, 5, 8, 9, 13, 14, 15, 16, 19, 21, 22), "'.\\nA'", "text of", "label prefix"),
    ],
)
def test_straddling_into_an_anchor_or_with_the_core_is_refused(offsets, token, first, second):
    with pytest.raises(PromptError) as info:
        alignment.assign_tokens(7, TEXT, SEGMENTS, offsets, lambda k: f"tok{k}")
    message = str(info.value)
    assert message.startswith("prompt 7: token ")
    assert token in message
    assert re.search(f"lies in both the {first}.* and the {second}", message)


def test_a_straddling_token_that_would_be_the_target_is_refused() -> None:
    segments = [S("Q: hm?", Role.TEXT, 0, "text of the query"),
                S("\n", Role.TARGET, 0, "label prefix of the query")]  # fmt: skip
    with pytest.raises(PromptError, match=re.escape(
        "prompt 0: token 2 'tok2' (characters 5..7, '?\\n') lies in both the text of the query "
        "and the label prefix of the query"
    )):  # fmt: skip
        alignment.assign_tokens(0, "Q: hm?\n", segments, [(0, 2), (2, 5), (5, 7)],
                                lambda k: f"tok{k}")  # fmt: skip
