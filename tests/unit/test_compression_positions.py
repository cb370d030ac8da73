"""Pure position logic of context compression (PAPER.md §5.1-5.2): which positions are kept."""

from __future__ import annotations

import pytest
import torch

from anchor_flow.applications.compression.baselines import text_anchor_batch
from anchor_flow.applications.compression.cache import CompressedContext
from anchor_flow.applications.compression.engines import (
    CompressionError,
    anchor_positions,
    compression_mask,
    context_end,
    query_batch,
    random_anchor_positions,
)
from anchor_flow.applications.compression.positions import context_groups
from anchor_flow.icl.prompts import ICLPrompt, Template, tokenize_prompts
from anchor_flow.icl.roles import Role
from anchor_flow.testbeds.toy import toy_prompts


@pytest.fixture
def batch(toy_tokenizer):
    return tokenize_prompts(toy_prompts(3, shots_per_class=2, seed=1), toy_tokenizer)


def test_anchor_positions_are_the_demonstrations_formatting_and_label_words(batch):
    kept = anchor_positions(batch, 1)
    end = context_end(batch, 1)
    roles, demos = batch.roles[1], batch.demo_index[1]
    expected = [
        p for p in range(end)
        if roles[p] in (Role.FORMAT, Role.LABEL, Role.LABEL_REST) or roles[p] == Role.BOS
    ]  # fmt: skip
    assert kept.tolist() == expected
    assert int(demos[end]) == 4  # the query starts right after 4 demonstrations
    assert int((roles[kept] == Role.LABEL).sum()) == 4
    text = "".join(batch.str_tokens[1][p] for p in kept.tolist())
    assert text.count("Review:") == 4
    assert text.count("Sentiment:") == 4


def test_bos_is_kept_only_on_request(toy_tokenizer):
    batch = tokenize_prompts(toy_prompts(1), toy_tokenizer, prepend_bos=True)
    assert batch.roles[0, 0] == Role.BOS
    assert anchor_positions(batch, keep_bos=True)[0] == 0
    assert 0 not in anchor_positions(batch, keep_bos=False).tolist()


def test_random_positions_are_seeded_and_replace_label_words_by_own_text(batch):
    a = random_anchor_positions(batch, 0, seed=3, trial=1)
    assert torch.equal(a, random_anchor_positions(batch, 0, seed=3, trial=1))
    draws = {tuple(random_anchor_positions(batch, 0, seed=3, trial=t).tolist()) for t in range(8)}
    assert len(draws) > 1
    anchor = anchor_positions(batch, 0)
    assert len(a) == len(anchor)
    roles = batch.roles[0]
    assert not bool((roles[a] == Role.LABEL).any())
    swapped = a[roles[a] == Role.TEXT]
    labels = anchor[roles[anchor] == Role.LABEL]
    assert sorted(batch.demo_index[0, swapped].tolist()) == sorted(
        batch.demo_index[0, labels].tolist()
    )


def test_no_label_words_is_refused(toy_tokenizer):
    prompt = toy_prompts(1)[0]
    bare = ICLPrompt(prompt.template, prompt.label_words, (), prompt.query)
    batch = tokenize_prompts([bare], toy_tokenizer)
    with pytest.raises(CompressionError, match="no label words in its demonstrations"):
        anchor_positions(batch)
    with pytest.raises(CompressionError, match="no label words"):
        random_anchor_positions(batch, seed=0)


def test_short_demonstration_text_is_refused_for_random(toy_tokenizer):
    prompt = toy_prompts(1)[0]
    template = Template(text_lead="")
    demos = tuple(type(d)("", d.label) for d in prompt.demonstrations)
    batch = tokenize_prompts(
        [ICLPrompt(template, prompt.label_words, demos, prompt.query)], toy_tokenizer
    )
    with pytest.raises(CompressionError, match="0 text tokens cannot replace 1 label-word"):
        random_anchor_positions(batch, seed=0)


def test_query_batch_and_text_anchor_keep_the_query_tokens(batch):
    end = context_end(batch, 2)
    query = query_batch(batch, [2], end)
    assert query.str_tokens[0] == batch.str_tokens[2][end:]
    assert query.roles[0, query.target_position[0]] == Role.TARGET
    text = text_anchor_batch(batch)
    joined = "".join(text.str_tokens[2])
    assert joined.startswith("Review:\nSentiment:")
    assert joined.endswith("".join(batch.str_tokens[2][end:]))
    assert Role.TEXT not in text.roles[2, : len(anchor_positions(batch, 2))].tolist()


def test_query_position_ids_follow_the_policy():
    kept = torch.tensor([0, 3, 7])
    ids = {p: CompressedContext((), kept, 9, p).query_position_ids(2).tolist()
           for p in ("original", "compact", "restart")}  # fmt: skip
    assert ids == {"original": [9, 10], "compact": [3, 4], "restart": [0, 1]}
    with pytest.raises(CompressionError, match="position_policy='later'"):
        CompressedContext((), kept, 9, "later")  # type: ignore[arg-type]


def test_compression_mask_blocks_only_query_rows_from_dropped_context_keys(batch):
    kept = [anchor_positions(batch, r) for r in range(len(batch))]
    mask = compression_mask(batch, kept)
    assert mask.shape == (3, batch.tokens.shape[1], batch.tokens.shape[1])
    for row in range(len(batch)):
        end = context_end(batch, row)
        dropped = torch.ones(end, dtype=torch.bool)
        dropped[kept[row]] = False
        assert not bool(mask[row, :end].any())  # the context itself runs unchanged
        assert bool((mask[row, end:, :end] == dropped).all())
        assert not bool(mask[row, :, end:].any())  # the query always sees itself
        roles = batch.roles[row, :end][~mask[row, end, :end]]
        assert Role.TEXT not in roles.tolist()


def test_context_groups_pool_rows_with_identical_demonstrations(toy_tokenizer):
    prompts = toy_prompts(3, seed=1)
    same = [ICLPrompt(prompts[0].template, prompts[0].label_words, prompts[0].demonstrations,
                      p.query) for p in prompts]  # fmt: skip
    batch = tokenize_prompts(same + prompts[1:], toy_tokenizer)
    groups = context_groups(batch)
    assert [rows for _, rows in groups] == [[0, 1, 2], [3], [4]]
    assert all(end == context_end(batch, rows[0]) for end, rows in groups)


def test_compressed_context_from_past_keeps_the_positions_and_the_full_length():
    keys = torch.arange(2 * 6 * 3, dtype=torch.float32).reshape(1, 6, 2, 3)
    past = [(keys, -keys), (2 * keys, keys)]
    context = CompressedContext.from_past(past, torch.tensor([1, 4]), "compact")
    assert context.context_length == 6
    assert context.n_kept == 2
    assert torch.equal(context.key_values[1][0], 2 * keys[:, [1, 4]])
    assert context.query_position_ids(2).tolist() == [2, 3]
