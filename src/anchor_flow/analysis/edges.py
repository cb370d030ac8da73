"""Edge groups of the attention graph, from token roles (paper §2.1, Eq. 2–4).

Every causal edge ``i <- j`` (``j < i``, both real tokens) of a prompt falls in exactly one
*fine* group, named ``"<row> <- <column>"``: the row is the reading position (a label word,
the target, or any other token) and the column says what is read (BOS, text, formatting,
label word, the rest of a multi-token label word) and whether it lies in the same
demonstration as the reader or in an earlier segment. The paper's three sets are unions
of fine groups:

* ``S_wp`` (:math:`C_{wp}`): every edge whose row is a label-word position;
* ``S_pq`` (:math:`C_{pq}`): target row, label-word column;
* ``S_ww`` (:math:`C_{ww}`): every other causal edge. The diagonal is never an edge.

Everything here is pure and works on batches of right-padded prompts. Counts of edges are
always computed from these masks, never derived by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from anchor_flow.icl.roles import PromptBatch, Role

__all__ = [
    "FINE_GROUPS",
    "PAPER_FLOWS",
    "PaperEdgeMasks",
    "edge_groups",
    "fine_group_flow",
    "paper_edge_masks",
]

_ROWS = ("label", "target", "other")
_COLUMNS = (
    "bos",
    "text (same demo)",
    "text (earlier)",
    "format (same demo)",
    "format (earlier)",
    "label (same demo)",
    "label (earlier)",
    "label rest (same demo)",
    "label rest (earlier)",
)
FINE_GROUPS: tuple[str, ...] = tuple(f"{row} <- {column}" for row in _ROWS for column in _COLUMNS)
"""Names of the fine edge groups; group ``g`` of :func:`edge_groups` is ``FINE_GROUPS[g]``."""

PAPER_FLOWS: tuple[str, ...] = ("S_wp", "S_pq", "S_ww")
"""The paper's three flows, in the order every result object uses."""


def _flow_of(group: str) -> str:
    row, column = group.split(" <- ")
    if row == "label":
        return "S_wp"
    if row == "target" and column.startswith("label ("):
        return "S_pq"
    return "S_ww"


def fine_group_flow() -> tuple[str, ...]:
    """The paper flow (``"S_wp"``, ``"S_pq"`` or ``"S_ww"``) each fine group belongs to."""
    return tuple(_flow_of(group) for group in FINE_GROUPS)


# Column kind per Role; -1 for roles that can never be read (PAD) or that are always last.
_COLUMN_KIND = {
    Role.BOS: 0,
    Role.TEXT: 1,
    Role.FORMAT: 2,
    Role.LABEL: 3,
    Role.LABEL_REST: 4,
}


def edge_groups(batch: PromptBatch) -> Int[Tensor, "batch query_pos key_pos"]:
    """Fine edge group of every ``(query_pos, key_pos)`` pair; ``-1`` where it is not an edge.

    Example:
        >>> from anchor_flow import tokenize_prompts, toy_prompts
        >>> from anchor_flow.testbeds.toy import build_toy_tokenizer
        >>> batch = tokenize_prompts(toy_prompts(2), build_toy_tokenizer())
        >>> groups = edge_groups(batch)
        >>> FINE_GROUPS[int(groups[0, batch.target_position[0], batch.label_positions(0)[0]])]
        'target <- label (earlier)'
    """
    roles = batch.roles
    real = roles != Role.PAD
    row_kind = torch.full_like(roles, 2)
    row_kind[roles == Role.LABEL] = 0
    row_kind[roles == Role.TARGET] = 1

    column_kind = torch.full_like(roles, -1)
    for role, kind in _COLUMN_KIND.items():
        column_kind[roles == role] = kind
    same_segment = batch.demo_index[:, :, None] == batch.demo_index[:, None, :]
    column = column_kind[:, None, :].expand(-1, roles.shape[1], -1)
    # BOS -> 0; kind k >= 1 -> 2k - 1 (same segment) or 2k (earlier segment).
    column_index = torch.where(column == 0, 0, 2 * column - same_segment.long())
    groups = row_kind[:, :, None] * len(_COLUMNS) + column_index

    n = roles.shape[1]
    strictly_causal = torch.ones(n, n, dtype=torch.bool, device=roles.device).tril(-1)
    is_edge = strictly_causal[None] & real[:, :, None] & real[:, None, :] & (column >= 0)
    return torch.where(is_edge, groups, -1)


@dataclass(frozen=True)
class PaperEdgeMasks:
    """Boolean masks of the paper's edge sets C_wp, C_pq and C_ww (Eq. 2–4)."""

    wp: Bool[Tensor, "batch query_pos key_pos"]
    pq: Bool[Tensor, "batch query_pos key_pos"]
    ww: Bool[Tensor, "batch query_pos key_pos"]


def paper_edge_masks(batch: PromptBatch) -> PaperEdgeMasks:
    """The paper's C_wp, C_pq and C_ww as masks; they partition the strict causal triangle.

    Example:
        >>> from anchor_flow import tokenize_prompts, toy_prompts
        >>> from anchor_flow.testbeds.toy import build_toy_tokenizer
        >>> masks = paper_edge_masks(tokenize_prompts(toy_prompts(1), build_toy_tokenizer()))
        >>> int(masks.pq.sum())  # target <- each of the two label words
        2
    """
    groups = edge_groups(batch)
    flow_of_group = fine_group_flow()
    members = {
        flow: torch.tensor(
            [g for g, f in enumerate(flow_of_group) if f == flow], device=groups.device
        )
        for flow in PAPER_FLOWS
    }
    return PaperEdgeMasks(
        wp=torch.isin(groups, members["S_wp"]),
        pq=torch.isin(groups, members["S_pq"]),
        ww=torch.isin(groups, members["S_ww"]),
    )
