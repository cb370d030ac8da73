"""Blocking hooks on tiny models: identity, effect, score-mask oracle, zero mode, hygiene."""

from __future__ import annotations

import inspect

import pytest
import torch

from anchor_flow.analysis.blocking import (
    BlockingError,
    block_edges_hooks,
    blocking_hooks,
    isolation_hooks,
    isolation_mask,
    label_rows,
    role_pair_mask,
)
from anchor_flow.icl.evaluation import run_icl
from anchor_flow.icl.prompts import tokenize_prompts
from anchor_flow.icl.roles import Role
from anchor_flow.models.tl_adapter import adapt
from anchor_flow.testbeds.toy import toy_prompts
from conftest import assert_no_hooks


@pytest.fixture
def batch(tl_model):
    short, long = toy_prompts(3, seed=1), toy_prompts(3, shots_per_class=2, seed=2)
    return tokenize_prompts([short[0], long[0], short[1], long[1]], adapt(tl_model).tokenizer)


def logits(model, batch, hooks=()):
    adapter = adapt(model)
    with torch.no_grad(), adapter.hooks(fwd_hooks=hooks):
        return adapter.forward_logits(batch.tokens)


def test_empty_layer_set_is_bitwise_the_baseline(tl_model, batch):
    hooks = isolation_hooks(tl_model, batch, layers=())
    assert hooks == []
    assert torch.equal(logits(tl_model, batch, hooks), logits(tl_model, batch))
    # A mask that blocks nothing leaves every row bitwise unchanged too.
    none = torch.zeros(len(batch), batch.tokens.shape[1], batch.tokens.shape[1], dtype=torch.bool)
    assert torch.equal(logits(tl_model, batch, blocking_hooks(tl_model, {0: none})),
                       logits(tl_model, batch))  # fmt: skip
    assert_no_hooks(tl_model)


@pytest.mark.parametrize("mode", ["renormalise", "zero"])
@pytest.mark.parametrize("layer", [0, 1])
def test_blocking_in_a_layer_changes_the_logits(tl_model, batch, mode, layer):
    # In the last layer only the target's own row reaches its logits (label rows are read by
    # no later layer), so block target <- label there; in layer 0 isolate the label words.
    if layer == 0:
        hooks = isolation_hooks(tl_model, batch, [layer], mode=mode)
    else:
        mask = role_pair_mask(batch, Role.TARGET, Role.LABEL)
        hooks = block_edges_hooks(tl_model, mask, [layer], mode=mode)
    base, blocked = logits(tl_model, batch), logits(tl_model, batch, hooks)
    rows = torch.arange(len(batch))
    difference = (blocked - base)[rows, batch.target_position].abs().max()
    assert difference > 1e-4
    # Causality: positions before the first label word are unaffected.
    first = min(batch.label_positions(r)[0] for r in range(len(batch)))
    assert torch.equal(blocked[:, :first], base[:, :first])


def score_mask_hooks(model, masks):
    """The official pre-softmax mask, independent of anchor_flow.analysis.blocking: finfo.min on
    scores."""
    adapter = adapt(model)

    def make(mask):
        def hook(scores, hook):
            return scores.masked_fill(mask[:, None], torch.finfo(scores.dtype).min)

        return hook

    return [(adapter.scores_hook_name(layer), make(mask)) for layer, mask in masks.items()]


@pytest.mark.parametrize(
    "which", ["label isolation", "target <- label", "text -> label, two layers"]
)
def test_renormalised_blocking_equals_the_score_mask(tl_model, batch, which):
    if which == "label isolation":
        masks = {0: isolation_mask(batch, label_rows(batch))}
    elif which == "target <- label":
        masks = {1: role_pair_mask(batch, Role.TARGET, Role.LABEL)}
    else:
        mask = role_pair_mask(batch, Role.LABEL, Role.TEXT)
        masks = {0: mask, 1: mask}
    ours = logits(tl_model, batch, blocking_hooks(tl_model, masks))
    oracle = logits(tl_model, batch, score_mask_hooks(tl_model, masks))
    base = logits(tl_model, batch)
    assert (oracle - base).abs().max() > 1e-4, "the oracle intervention did nothing"
    assert torch.allclose(ours, oracle, atol=1e-5, rtol=1e-5), float((ours - oracle).abs().max())


def test_zero_mode_zeroes_blocked_entries_and_leaves_other_rows_untouched(tl_model, batch):
    adapter = adapt(tl_model)
    name = adapter.pattern_hook_name(0)
    seen = {}

    def keep(key):
        def hook(pattern, hook):
            seen[key] = pattern.detach().clone()

        return hook

    mask = isolation_mask(batch, label_rows(batch))
    logits(tl_model, batch, [(name, keep("base"))])
    logits(tl_model, batch, [*block_edges_hooks(tl_model, mask, [0], mode="zero"),
                             (name, keep("zero"))])  # fmt: skip
    base, zero = seen["base"], seen["zero"]
    rows = mask.any(-1)[:, None].expand_as(base[..., 0])
    assert torch.equal(zero[~rows], base[~rows]), "unblocked rows must be bitwise unchanged"
    blocked = mask[:, None].expand_as(base)
    assert bool((zero[blocked] == 0).all())
    assert torch.equal(zero[~blocked], base[~blocked])  # kept entries, not renormalised
    assert bool((zero.sum(-1)[rows] < 1 - 1e-6).all())


def test_run_icl_batch_hooks_get_original_rows_and_compose(tl_model, batch):
    calls = []

    def record(rows, part):
        calls.append((rows.tolist(), part))
        return isolation_hooks(tl_model, part, [0], prompt_ids=rows)

    blocked = run_icl(tl_model, batch, batch_size=3, batch_hooks=record, progress=False)
    assert sorted(r for rows, _ in calls for r in rows) == list(range(len(batch)))
    for rows, part in calls:
        assert torch.equal(part.tokens, batch.select(rows).tokens)
    per_example = run_icl(tl_model, batch, batch_size=1, batch_hooks=record, progress=False)
    assert torch.allclose(blocked.label_probs, per_example.label_probs, atol=1e-6)
    base = run_icl(tl_model, batch, progress=False)
    assert not torch.allclose(blocked.label_probs, base.label_probs)
    assert_no_hooks(tl_model)


def test_no_hooks_left_after_an_exception_in_a_batch(tl_model, batch):
    def failing(rows, part):
        def hook(pattern, hook):
            raise RuntimeError("boom")

        return [(adapt(tl_model).pattern_hook_name(1), hook)]

    with pytest.raises(RuntimeError, match="boom"):
        run_icl(tl_model, batch, batch_hooks=failing, progress=False)
    assert_no_hooks(tl_model)


def test_a_mask_for_another_batch_is_refused_at_run_time(tl_model, batch):
    hooks = isolation_hooks(tl_model, batch.select([0]), [0])
    with pytest.raises(BlockingError, match="does not fit the blocking mask"):
        logits(tl_model, batch, hooks)
    assert_no_hooks(tl_model)


def test_bad_requests_name_the_problem(tl_model, batch):
    mask = isolation_mask(batch, label_rows(batch))
    with pytest.raises(BlockingError, match="mode='soft'; expected one of"):
        inspect.unwrap(blocking_hooks)(tl_model, {0: mask}, mode="soft")
    with pytest.raises(BlockingError, match="expected a bool tensor"):
        inspect.unwrap(blocking_hooks)(tl_model, {0: mask.float()})
    everything = torch.ones_like(mask)
    with pytest.raises(BlockingError, match="blocks every causal key of some row"):
        blocking_hooks(tl_model, {0: everything})
    assert len(blocking_hooks(tl_model, {0: everything}, mode="zero")) == 1
    with pytest.raises(BlockingError, match="control='all'"):
        inspect.unwrap(isolation_hooks)(tl_model, batch, [0], control="all")


def test_renormalising_a_row_whose_kept_mass_underflowed_is_refused(tl_model, batch):
    adapter = adapt(tl_model)
    name = adapter.pattern_hook_name(0)

    def all_mass_on_the_first_token(pattern, hook):
        # As if the softmax had underflowed every entry but position 0 (then blocked).
        edited = torch.zeros_like(pattern)
        edited[..., 0] = 1.0
        return edited

    hooks = [(name, all_mass_on_the_first_token), *isolation_hooks(tl_model, batch, [0])]
    with pytest.raises(BlockingError, match="underflowed to 0, so the row cannot be renormalised"):
        logits(tl_model, batch, hooks)
    zero_mode = [(name, all_mass_on_the_first_token)]
    zero_mode += isolation_hooks(tl_model, batch, [0], mode="zero")
    assert torch.isfinite(logits(tl_model, batch, zero_mode)).all()
    assert_no_hooks(tl_model)
