"""Edge groups from roles: partition property and the paper's edge counts."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from anchor_flow.analysis.edges import FINE_GROUPS, edge_groups, fine_group_flow, paper_edge_masks
from anchor_flow.icl.prompts import Example, ICLPrompt, Template, tokenize_prompts
from anchor_flow.icl.roles import PromptBatch, Role
from anchor_flow.testbeds.toy import TOY_NEGATIVE, TOY_POSITIVE, build_toy_tokenizer

TOKENIZER = build_toy_tokenizer()


def random_layout_batch(layouts: list[list[tuple[int, int]]]) -> PromptBatch:
    """A right-padded batch from explicit (role, demo) layouts; no tokenizer involved."""
    n_pos = max(len(layout) for layout in layouts)
    roles = torch.zeros(len(layouts), n_pos, dtype=torch.long)
    demo = torch.full((len(layouts), n_pos), -1, dtype=torch.long)
    label_class = torch.full((len(layouts), n_pos), -1, dtype=torch.long)
    for row, layout in enumerate(layouts):
        for pos, (role, d) in enumerate(layout):
            roles[row, pos] = role
            demo[row, pos] = d
            if role in (Role.LABEL, Role.LABEL_REST):
                label_class[row, pos] = d % 2
    lengths = (roles != Role.PAD).sum(1)
    return PromptBatch(
        tokens=torch.zeros_like(roles),
        roles=roles,
        demo_index=demo,
        label_class=label_class,
        target_position=lengths - 1,
        label_token_ids=torch.tensor([[1, 2]]).repeat(len(layouts), 1),
        gold=torch.zeros(len(layouts), dtype=torch.long),
        str_tokens=tuple(tuple("x" for _ in range(int(n))) for n in lengths),
    )


segment_roles = st.sampled_from([Role.TEXT, Role.FORMAT, Role.LABEL, Role.LABEL_REST])


@st.composite
def layouts(draw: st.DrawFn) -> list[tuple[int, int]]:
    bos = draw(st.booleans())
    n_demos = draw(st.integers(0, 4))
    layout = [(int(Role.BOS), -1)] if bos else []
    for d in range(n_demos):
        for role in draw(st.lists(segment_roles, min_size=1, max_size=6)):
            layout.append((int(role), d))
    for role in draw(st.lists(st.sampled_from([Role.TEXT, Role.FORMAT]), max_size=4)):
        layout.append((int(role), n_demos))
    layout.append((int(Role.TARGET), n_demos))
    return layout


@settings(max_examples=60, deadline=None)
@given(st.lists(layouts(), min_size=1, max_size=4))
def test_paper_masks_partition_the_strict_causal_triangle(batch_layouts):
    batch = random_layout_batch(batch_layouts)
    masks = paper_edge_masks(batch)
    real = batch.roles != Role.PAD
    n = batch.roles.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool).tril(-1)[None] & real[:, :, None] & real[:, None]
    total = masks.wp.long() + masks.pq.long() + masks.ww.long()
    assert torch.equal(total <= 1, torch.ones_like(total, dtype=torch.bool)), "masks overlap"
    assert torch.equal(total.bool(), causal), "masks do not cover the strict causal triangle"
    groups = edge_groups(batch)
    assert torch.equal(groups >= 0, causal)
    assert int(groups.max()) < len(FINE_GROUPS)


def test_every_fine_group_belongs_to_one_paper_flow():
    flows = fine_group_flow()
    assert len(flows) == len(FINE_GROUPS)
    assert set(flows) == {"S_wp", "S_pq", "S_ww"}
    assert [g for g, f in zip(FINE_GROUPS, flows, strict=True) if f == "S_pq"] == [
        "target <- label (same demo)",
        "target <- label (earlier)",
    ]


def sst2_prompt(n_demos_per_class: int, query: str) -> ICLPrompt:
    demos = []
    for i in range(n_demos_per_class):
        demos += [Example(TOY_NEGATIVE[i], 0), Example(TOY_POSITIVE[i], 1)]
    return ICLPrompt(Template(), (" Negative", " Positive"), tuple(demos), Example(query, 1))


def test_edge_counts_match_the_official_normalisers():
    # Independent oracle: attention_attr.py's |C_wp| = sum_k p_k, |C_pq| = C,
    # |C_ww| = N(N+1)/2 - sum_k p_k - C with N = q (0-indexed, no BOS).
    prompts = [sst2_prompt(1, TOY_POSITIVE[5]), sst2_prompt(2, "a fine and moving film")]
    batch = tokenize_prompts(prompts, TOKENIZER)
    masks = paper_edge_masks(batch)
    for row in range(len(batch)):
        labels = batch.label_positions(row)
        q = int(batch.target_position[row])
        assert int(masks.wp[row].sum()) == sum(labels)
        assert int(masks.pq[row].sum()) == len(labels)
        assert int(masks.ww[row].sum()) == q * (q + 1) // 2 - sum(labels) - len(labels)


def test_fine_groups_of_a_hand_checked_prompt():
    batch = tokenize_prompts([sst2_prompt(1, "great fun")], TOKENIZER)
    groups = edge_groups(batch)[0]
    labels = batch.label_positions(0)
    q = int(batch.target_position[0])
    roles = batch.roles[0]
    demo = batch.demo_index[0]
    name = lambda i, j: FINE_GROUPS[int(groups[i, j])]  # noqa: E731
    for p in labels:
        assert name(q, p) == "target <- label (earlier)"
        own_text = [j for j in range(p) if roles[j] == Role.TEXT and demo[j] == demo[p]]
        assert own_text, "each demonstration has text"
        assert {name(p, j) for j in own_text} == {"label <- text (same demo)"}
    second = labels[1]
    earlier_text = [j for j in range(second) if roles[j] == Role.TEXT and demo[j] != demo[second]]
    assert {name(second, j) for j in earlier_text} == {"label <- text (earlier)"}
    query_text = [j for j in range(q) if roles[j] == Role.TEXT and demo[j] == demo[q]]
    assert {name(q, j) for j in query_text} == {"target <- text (same demo)"}
    assert int(groups[q, q]) == -1, "the diagonal is never an edge"
    assert int(groups[0, q]) == -1, "no edge reads the future"
