"""Anchor heads (issue 24): per-head flows against independent computations, the head-level
blocking, the rankings and claim H1 against the planted models' ground truth.

Oracles: Hugging Face eager attention on the same weights (``output_attentions`` and
``retain_grad``) gives ``A_h ⊙ dL/dA_h`` per head; its group sums are taken by masks and by a
plain loop over edges from the roles, never by the code under test's scatter.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from anchor_flow.analysis.blocking import (
    BlockingError,
    blocking_hooks,
    head_mask,
    role_pair_mask,
)
from anchor_flow.analysis.edges import FINE_GROUPS, edge_groups
from anchor_flow.analysis.findings import anchor_heads_frame, causal_heads, claim_layers
from anchor_flow.analysis.heads import (
    HeadBlockingResult,
    HeadFlows,
    random_heads,
    run_head_blocking,
    run_head_flows,
)
from anchor_flow.analysis.saliency.measure import run_saliency
from anchor_flow.errors import AnchorFlowError
from anchor_flow.icl.data import load_task_data
from anchor_flow.icl.prompts import tokenize_prompts
from anchor_flow.icl.roles import Role
from anchor_flow.icl.sampling import task_prompts
from anchor_flow.icl.tasks import get_task
from anchor_flow.models.loading import load_model
from anchor_flow.models.tl_adapter import adapt
from anchor_flow.testbeds.toy import toy_prompts
from conftest import assert_no_hooks, make_tiny_hf_gpt2


@pytest.fixture(scope="module")
def prompts():
    short, long = toy_prompts(3, seed=3), toy_prompts(3, shots_per_class=2, seed=4)
    return [p for pair in zip(short, long, strict=True) for p in pair]  # padded, mixed lengths


def hf_per_head(batch) -> torch.Tensor:
    """[prompt, layer, head, pos, pos] signed A_h * dL/dA_h from HF eager attention."""
    hf_model = make_tiny_hf_gpt2()  # the same seeded weights as tl_model's
    out = hf_model(batch.tokens, output_attentions=True)
    for attention in out.attentions:
        attention.retain_grad()
    final = out.logits[torch.arange(len(batch)), batch.target_position]
    logits = final.gather(1, batch.label_token_ids)
    F.cross_entropy(logits, batch.gold, reduction="sum").backward()
    return torch.stack([a * a.grad for a in out.attentions], 1).detach().double()


def test_per_head_sums_equal_the_autograd_oracle_and_add_up_to_the_layer(tl_model, prompts):
    batch = tokenize_prompts(prompts, adapt(tl_model).tokenizer)
    per_head = hf_per_head(batch)  # [prompt, layer, head, q, k]
    groups = edge_groups(batch)
    masks = torch.stack([groups == g for g in range(len(FINE_GROUPS))], -1).double()
    signed = torch.einsum("plhqk,pqkg->plhg", per_head, masks)
    absolute = torch.einsum("plhqk,pqkg->plhg", per_head.abs(), masks)
    result = run_saliency(tl_model, batch, head_flows=True, progress=False)
    scale = float(absolute.max())
    assert scale > 0
    assert torch.allclose(result.head_sums.double(), signed, atol=1e-4 * scale)
    assert torch.allclose(result.head_abs_sums.double(), absolute, atol=1e-4 * scale)
    # What adds up: the signed per-head sums, over heads, give the signed layer sum
    # sum_e (sum_h A_h G_h)_e, before Eq. 1's absolute value; the layer value (today's
    # group_sums) is sum_e |sum_h A_h G_h|_e.
    layer_signed = torch.einsum("plqk,pqkg->plg", per_head.sum(2), masks)
    layer_value = torch.einsum("plqk,pqkg->plg", per_head.sum(2).abs(), masks)
    assert torch.allclose(result.head_sums.double().sum(2), layer_signed, atol=1e-4 * scale)
    assert torch.allclose(result.group_sums.double(), layer_value, atol=1e-4 * scale)
    # The data tells signed and absolute apart (else "adds up" would be vacuous).
    assert not torch.allclose(layer_signed.abs(), layer_value, atol=1e-4 * scale)


def test_head_flows_leave_the_layer_values_unchanged_and_match_abs_then_sum(tl_model, prompts):
    batch = tokenize_prompts(prompts, adapt(tl_model).tokenizer)
    plain = run_saliency(tl_model, batch, progress=False)
    with_heads = run_saliency(tl_model, batch, head_flows=True, progress=False)
    assert plain.head_sums is None
    assert plain.head_abs_sums is None
    assert torch.equal(plain.group_sums, with_heads.group_sums)
    footnote = run_saliency(tl_model, batch, head_reduction="abs_then_sum", head_flows=True,
                            progress=False)  # fmt: skip
    assert torch.allclose(footnote.head_abs_sums.sum(2), footnote.group_sums, rtol=1e-5,
                          atol=1e-7)  # fmt: skip


def test_kind_sums_equal_a_loop_over_edges(tl_model, prompts):
    batch = tokenize_prompts(prompts, adapt(tl_model).tokenizer)
    per_head = hf_per_head(batch).abs()
    flows = run_head_flows(tl_model, batch, progress=False)
    for kind, (row, column) in {"gathering": (Role.LABEL, Role.TEXT),
                                "reading": (Role.TARGET, Role.LABEL)}.items():  # fmt: skip
        expected = torch.zeros(flows.kind_sums(kind).shape, dtype=torch.float64)
        for b in range(len(batch)):
            roles = batch.roles[b].tolist()
            for i in range(int(batch.lengths[b])):
                for j in range(i):
                    if roles[i] == row and roles[j] == column:
                        expected[b] += per_head[b, :, :, i, j]
        assert float(expected.max()) > 0
        assert torch.allclose(flows.kind_sums(kind), expected, atol=1e-4 * float(expected.max()))
        shares = flows.shares(kind)
        defined = ~shares.isnan().any(-1)
        assert torch.allclose(shares[defined].sum(-1), torch.ones(int(defined.sum()),
                              dtype=torch.float64))  # fmt: skip


def test_head_blocking_touches_only_the_chosen_heads(tl_model, prompts):
    batch = tokenize_prompts(prompts, adapt(tl_model).tokenizer)
    n_heads = adapt(tl_model).n_heads
    edges = role_pair_mask(batch, Role.TARGET, Role.LABEL)
    seen = {}

    def keep(name):
        def hook(pattern, hook):
            seen[name] = pattern.detach().clone()

        return hook

    name = adapt(tl_model).pattern_hook_name(1)
    with tl_model.hooks(fwd_hooks=[(name, keep("base"))]):
        tl_model(batch.tokens)
    hooks = blocking_hooks(tl_model, {1: head_mask(edges, [2], n_heads)})
    with tl_model.hooks(fwd_hooks=[*hooks, (name, keep("blocked"))]):
        tl_model(batch.tokens)
    base, blocked = seen["base"], seen["blocked"]
    others = [h for h in range(n_heads) if h != 2]
    assert torch.equal(base[:, others], blocked[:, others])  # identity elsewhere, bitwise
    target = batch.target_position
    rows = torch.arange(len(batch))
    assert float(base[rows, 2, target][edges[rows, target]].sum()) > 0
    assert float(blocked[rows, 2, target][edges[rows, target]].abs().sum()) == 0.0  # effect
    every = blocking_hooks(tl_model, {1: head_mask(edges, list(range(n_heads)), n_heads)})
    whole = blocking_hooks(tl_model, {1: edges})
    outs = []
    for hooks in (every, whole):
        with tl_model.hooks(fwd_hooks=hooks):
            outs.append(tl_model(batch.tokens))
    assert torch.equal(outs[0], outs[1])  # all heads chosen = the head-less mask


def test_random_heads_are_seeded_per_prompt_and_never_chosen():
    chosen = [(0, 1), (0, 2), (3, 0)]
    drawn = random_heads(chosen, 4, seed=7, prompt_ids=range(50))
    assert drawn.shape == (50, 3)
    assert not bool(torch.isin(drawn[:, :2], torch.tensor([1, 2])).any())
    assert bool((drawn[:, 0] != drawn[:, 1]).all())  # without replacement within a layer
    assert bool((drawn[:, 2] != 0).all())
    assert len(set(drawn[:, 2].tolist())) == 3  # every free head of layer 3 gets drawn
    again = random_heads(chosen, 4, seed=7, prompt_ids=[10, 11])
    assert torch.equal(again, drawn[10:12])  # the same prompt id draws the same heads
    assert not torch.equal(random_heads(chosen, 4, seed=8, prompt_ids=range(50)), drawn)
    with pytest.raises(BlockingError, match="layer 0 has 2 chosen heads but only 1 other"):
        random_heads(chosen, 3, seed=0, prompt_ids=[0])


def _task_prompts(n=30):
    task = get_task("synthetic-k3")
    data = load_task_data(task)
    return task, task_prompts(task, data.train, data.test, seed=42, n_examples=n,
                              shots_per_class=1, scheme="fixed")  # fmt: skip


def _planted(name):
    task, prompts = _task_prompts()
    model = load_model(name)
    flows = run_head_flows(model, prompts, label_token_policy=task.label_token_policy,
                           progress=False)  # fmt: skip
    layers = claim_layers(flows.n_layers)
    gathering = flows.top_heads("gathering", 1, layers.shallow)
    reading = flows.top_heads("reading", 1, layers.deep)
    blocking = run_head_blocking(model, prompts, gathering_heads=gathering,
                                 reading_heads=reading, seed=42, progress=False,
                                 label_token_policy=task.label_token_policy)  # fmt: skip
    assert_no_hooks(model)
    where = {"gathering": layers.shallow, "reading": layers.deep}
    margins = {
        kind: bool(anchor_heads_frame(flows, kind, where[kind])["clears_margin"].any())
        for kind in where
    }
    return flows, blocking, margins, causal_heads(blocking, margins=margins)


def test_planted_anchor_heads_are_found_and_causal():
    flows, blocking, margins, finding = _planted("planted-anchor")
    assert flows.top_heads("gathering", 1) == [(0, 0)]  # over every layer as well
    assert flows.top_heads("reading", 1) == [(1, 0)]
    assert blocking.gathering_heads == ((0, 0),)
    assert blocking.reading_heads == ((1, 0),)
    assert margins == {"gathering": True, "reading": True}
    loyalty = blocking.per_prompt("label_loyalty")
    chance = 1 / 3
    assert abs(float(loyalty[0].mean()) - chance) < 0.15  # to chance (3 classes)
    assert float(loyalty[1].mean()) == 1.0  # random heads of the same layers: nothing
    assert finding.claim == "H1"
    assert finding.verdict == "holds", finding.sentence


def test_planted_formatting_has_no_anchor_heads():
    flows, _blocking, margins, finding = _planted("planted-formatting")
    assert margins == {"gathering": False, "reading": False}
    every = anchor_heads_frame(flows, "gathering")
    assert not bool(every["clears_margin"].any())
    assert finding.verdict == "does not hold", finding.sentence
    assert "no chosen head clears the share margin" in finding.sentence


def test_results_save_load_concat_and_frames(tmp_path):
    task, prompts = _task_prompts(6)
    model = load_model("planted-anchor")
    parts = [run_head_flows(model, prompts[:4], run_name="seed-1", progress=False,
                            label_token_policy=task.label_token_policy),
             run_head_flows(model, prompts[4:], run_name="seed-1", progress=False,
                            label_token_policy=task.label_token_policy)]  # fmt: skip
    joined = HeadFlows.join(parts)
    whole = run_head_flows(model, prompts, run_name="seed-1", progress=False,
                           label_token_policy=task.label_token_policy)  # fmt: skip
    assert torch.allclose(joined.head_sums, whole.head_sums, atol=1e-6)
    joined.save(tmp_path / "flows")
    loaded = HeadFlows.load(tmp_path / "flows")
    assert torch.equal(loaded.head_abs_sums, joined.head_abs_sums)
    frame = loaded.to_frame()
    assert len(frame) == 6 * 2 * 3 * len(FINE_GROUPS)
    assert math.isclose(frame["signed_sum"].sum(), float(loaded.head_sums.double().sum()),
                        rel_tol=1e-6)  # fmt: skip
    ranking = loaded.ranking("gathering")
    assert list(ranking.columns[:7]) == ["kind", "rank", "layer", "head", "share", "ci_low",
                                         "ci_high"]  # fmt: skip
    assert ranking["rank"].tolist() == list(range(1, 7))
    blocking = run_head_blocking(model, prompts, gathering_heads=[(0, 0)],
                                 reading_heads=[(1, 0)], progress=False, seed=3,
                                 label_token_policy=task.label_token_policy)  # fmt: skip
    blocking.save(tmp_path / "blocking")
    again = HeadBlockingResult.load(tmp_path / "blocking")
    assert again.gathering_heads == ((0, 0),)
    assert torch.equal(again.predictions, blocking.predictions)
    summary = again.summary_frame()
    assert list(summary.columns) == ["arm", "metric", "mean", "ci_low", "ci_high", "n_prompts"]
    assert set(summary["arm"]) == {"anchor_heads", "random_heads"}
    pooled = HeadBlockingResult.concat(
        [
            again,
            HeadBlockingResult(
                **{
                    **{k: getattr(again, k) for k in again.__dataclass_fields__},
                    "run_names": ("x",),
                }
            ),
        ]
    )
    assert pooled.n_prompts == 12
    assert pooled.n_runs == 2


def test_bad_inputs_say_what_was_expected():
    _task, prompts = _task_prompts(4)
    model = load_model("planted-anchor")
    plain = run_saliency(model, prompts, progress=False, label_token_policy="single")
    with pytest.raises(AnchorFlowError, match="head_flows=True"):
        HeadFlows.from_saliency(plain)
    with pytest.raises(BlockingError, match=r"heads \[\(0, 5\)\]; expected .* head in 0..2"):
        run_head_blocking(model, prompts, gathering_heads=[(0, 5)], reading_heads=[],
                          progress=False)  # fmt: skip
    with pytest.raises(BlockingError, match="heads none; expected at least one"):
        run_head_blocking(model, prompts, gathering_heads=[], reading_heads=[], progress=False)
    flows = run_head_flows(model, prompts, progress=False)
    with pytest.raises(AnchorFlowError, match="kind='writing'; expected one of gathering"):
        flows.shares("writing")
    with pytest.raises(AnchorFlowError, match="k=0; expected a positive integer"):
        flows.top_heads("gathering", 0)
    with pytest.raises(AnchorFlowError, match=r"layers=\[7\]; expected at least one layer"):
        flows.ranking("gathering", [7])
    with pytest.raises(BlockingError, match=r"heads=\[4\]; expected head indices in 0..2"):
        head_mask(torch.zeros(1, 2, 2, dtype=torch.bool), [4], 3)
    assert_no_hooks(model)


def test_blocking_parts_draw_the_whole_lists_random_heads():
    task, prompts = _task_prompts(9)
    model = load_model("planted-anchor")
    options = {"gathering_heads": [(0, 0)], "reading_heads": [(1, 0)], "seed": 5,
               "progress": False, "label_token_policy": task.label_token_policy}  # fmt: skip
    whole = run_head_blocking(model, prompts, **options)
    parts = [run_head_blocking(model, prompts[:4], **options),
             run_head_blocking(model, prompts[4:], first_prompt_id=4, **options)]  # fmt: skip
    joined = HeadBlockingResult.join(parts)
    for name in ("random_gathering", "random_reading", "predictions", "baseline_predictions"):
        assert torch.equal(getattr(joined, name), getattr(whole, name)), name
    unshifted = run_head_blocking(model, prompts[4:], **options)
    assert not torch.equal(unshifted.random_gathering, whole.random_gathering[4:])
