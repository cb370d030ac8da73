"""Saliency (paper Eq. 1) on tiny models: oracles, batching, options, identity/effect, hygiene."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from anchor_flow.analysis.edges import FINE_GROUPS, edge_groups
from anchor_flow.analysis.saliency.measure import run_saliency
from anchor_flow.errors import AnchorFlowError, DeadAttentionHooksError
from anchor_flow.icl.prompts import Example, ICLPrompt, Template, tokenize_prompts
from anchor_flow.models.loading import from_hf_model
from anchor_flow.models.tl_adapter import adapt
from anchor_flow.models.tl_build import warn_if_value_biases_folded
from anchor_flow.testbeds.toy import toy_prompts
from conftest import TL_CLASSES, assert_no_hooks, fold_value_biases, make_tiny_hf_gpt2


@pytest.fixture(scope="module")
def prompts() -> list[ICLPrompt]:
    # Different demonstration counts -> different lengths -> padding inside a batch.
    short = toy_prompts(3, seed=1)
    long = toy_prompts(3, shots_per_class=2, seed=2)
    return [short[0], long[0], short[1], long[1], short[2], long[2]]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> None:
    """Relative agreement, with an absolute floor at rtol x the largest expected value."""
    actual, expected = actual.double(), expected.double()
    floor = rtol * float(expected.abs().max())
    assert float(expected.abs().max()) > 0, "the oracle is all zeros: nothing is compared"
    assert torch.allclose(actual, expected, rtol=rtol, atol=floor), float(
        (actual - expected).abs().max()
    )


def brute_force_group_sums(maps: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """[prompt, layer, group] by looping over every edge (independent of scatter_add)."""
    n_prompts, n_layers, n_pos, _ = maps.shape
    out = torch.zeros(n_prompts, n_layers, len(FINE_GROUPS), dtype=torch.float64)
    for p in range(n_prompts):
        for i in range(n_pos):
            for j in range(n_pos):
                g = int(groups[p, i, j])
                if g >= 0:
                    out[p, :, g] += maps[p, :, i, j].double()
    return out


def reference_maps(model, batch, mode: str) -> torch.Tensor:
    """I_l from autograd directly: 'retain_grad' on the pattern or a 'ones' multiplier."""
    adapter = adapt(model)
    kept: dict[int, torch.Tensor] = {}

    def hook(pattern, hook):
        layer = adapter.layer_of_hook(hook.name)
        if layer == 0:
            pattern = pattern.detach().requires_grad_(True)
        if mode == "retain_grad":
            pattern.retain_grad()
            kept[layer] = pattern
            return pattern
        ones = torch.ones_like(pattern, requires_grad=True)
        kept[layer] = ones
        return pattern * ones

    names = [adapter.pattern_hook_name(layer) for layer in range(adapter.n_layers)]
    with adapter.hooks(fwd_hooks=[(name, hook) for name in names]):
        logits = adapter.forward_logits(batch.tokens)
        final = logits[torch.arange(len(batch)), batch.target_position]
        label = final.gather(1, batch.label_token_ids)
        F.cross_entropy(label, batch.gold, reduction="sum").backward()
    maps = []
    for layer in range(adapter.n_layers):
        tensor = kept[layer]
        contribution = tensor * tensor.grad if mode == "retain_grad" else tensor.grad
        maps.append(contribution.sum(1).abs())
    return torch.stack(maps, dim=1).detach()


@pytest.mark.parametrize("mode", ["retain_grad", "ones"])
def test_saliency_equals_autograd_oracles(tl_model, prompts, mode):
    batch = tokenize_prompts(prompts, adapt(tl_model).tokenizer)
    result = run_saliency(tl_model, batch, keep_maps=True, batch_size=3, progress=False)
    expected = reference_maps(tl_model, batch, mode)
    assert result.maps is not None
    assert_close(result.maps, expected)
    assert_close(result.group_sums, brute_force_group_sums(expected, edge_groups(batch)))
    assert_no_hooks(tl_model)


def test_saliency_equals_hugging_face_eager_attention(tl_model, prompts):
    # The same seeded weights as tl_model's (a bridge rewires its own HF model in place).
    hf_model = make_tiny_hf_gpt2()
    batch = tokenize_prompts(prompts, adapt(tl_model).tokenizer)
    out = hf_model(batch.tokens, output_attentions=True)
    for attention in out.attentions:
        attention.retain_grad()
    final = out.logits[torch.arange(len(batch)), batch.target_position]
    F.cross_entropy(final.gather(1, batch.label_token_ids), batch.gold, reduction="sum").backward()
    hf_maps = torch.stack([(a * a.grad).sum(1).abs() for a in out.attentions], 1).detach()
    result = run_saliency(tl_model, batch, keep_maps=True, progress=False)
    assert_close(result.maps, hf_maps)


def test_batched_equals_per_example_with_padding(tl_model, prompts):
    batched = run_saliency(tl_model, prompts, batch_size=6, keep_maps=True, progress=False)
    single = run_saliency(tl_model, prompts, batch_size=1, keep_maps=True, progress=False)
    assert len({len(t) for t in batched.str_tokens}) > 1, "the prompts must need padding"
    assert_close(batched.group_sums, single.group_sums)
    assert_close(batched.maps, single.maps)
    assert_close(batched.label_probs, single.label_probs)
    assert torch.equal(batched.group_counts, single.group_counts)


def test_no_parameter_gradients_and_flags_restored(tl_model, prompts):
    parameters = list(tl_model.parameters())
    before = [p.requires_grad for p in parameters]
    was_training = tl_model.training
    run_saliency(tl_model, prompts, progress=False)
    assert all(p.grad is None for p in parameters), "parameter gradients were computed"
    assert [p.requires_grad for p in parameters] == before
    assert tl_model.training == was_training
    assert_no_hooks(tl_model)


def test_hygiene_after_an_exception(tl_model, prompts):
    parameters = list(tl_model.parameters())
    before = [p.requires_grad for p in parameters]

    def failing_metric(logits, batch):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_saliency(tl_model, prompts, metric=failing_metric, progress=False)
    assert [p.requires_grad for p in parameters] == before
    assert_no_hooks(tl_model)


def test_identity_a_neutral_extra_hook_changes_nothing(tl_model, prompts):
    adapter = adapt(tl_model)
    neutral = [(adapter.pattern_hook_name(layer), lambda p, hook: p) for layer in range(2)]
    base = run_saliency(tl_model, prompts, progress=False)
    same = run_saliency(tl_model, prompts, extra_hooks=neutral, progress=False)
    assert torch.equal(base.group_sums, same.group_sums)


def test_effect_blocking_target_to_labels_changes_saliency(tl_model, prompts):
    adapter = adapt(tl_model)
    last = adapter.n_layers - 1
    for prompt in prompts[:2]:
        batch = tokenize_prompts([prompt], adapter.tokenizer)
        calls = []

        def block(pattern, hook, batch=batch, calls=calls):
            # Renormalised removal of the target -> label-word edges.
            mask = torch.ones_like(pattern)
            mask[0, :, int(batch.target_position[0]), batch.label_positions(0)] = 0
            calls.append(hook.name)
            edited = pattern * mask
            return edited / edited.sum(-1, keepdim=True)

        base = run_saliency(tl_model, batch, progress=False)
        blocked = run_saliency(
            tl_model, batch, extra_hooks=[(adapter.pattern_hook_name(last), block)], progress=False
        )
        assert calls, "the blocking hook never ran"
        # The blocked edges carry no attention, hence no saliency; unblocked they do.
        assert float(base.flows().values[0, 1, last]) > 0
        assert float(blocked.flows().values[0, 1, last]) == 0
        assert float((base.label_probs - blocked.label_probs).abs().max()) > 1e-4


def test_head_reductions_and_per_head_maps(tl_model, prompts):
    kw = dict(keep_maps=True, progress=False)
    eq1 = run_saliency(tl_model, prompts, **kw)
    footnote = run_saliency(
        tl_model, prompts, head_reduction="abs_then_sum", keep_head_maps=True, **kw
    )
    assert bool((footnote.maps >= eq1.maps - 1e-7).all()), "|sum| <= sum |.| must hold"
    assert not torch.allclose(footnote.maps, eq1.maps)
    assert footnote.head_maps is not None
    assert_close(footnote.head_maps.sum(2), footnote.maps)


def test_scores_gradient_is_the_pre_softmax_gradient(tl_model, prompts):
    adapter = adapt(tl_model)
    batch = tokenize_prompts(prompts[:2], adapter.tokenizer)
    kept: dict[int, torch.Tensor] = {}

    def pattern_leaf(pattern, hook):
        # Differentiate w.r.t. softmax inputs: recompute the pattern from a leaf of the scores.
        scores = torch.log(pattern.detach().clamp_min(1e-30)).requires_grad_(True)
        kept[adapter.layer_of_hook(hook.name)] = scores
        return torch.softmax(scores, -1)

    def later(pattern, hook):
        scores = torch.log(pattern.clamp_min(1e-30))
        scores.retain_grad()
        kept[adapter.layer_of_hook(hook.name)] = scores
        return torch.softmax(scores, -1)

    hooks = [(adapter.pattern_hook_name(0), pattern_leaf)] + [
        (adapter.pattern_hook_name(layer), later) for layer in range(1, adapter.n_layers)
    ]
    with adapter.hooks(fwd_hooks=hooks):
        logits = adapter.forward_logits(batch.tokens)
        final = logits[torch.arange(len(batch)), batch.target_position]
        F.cross_entropy(
            final.gather(1, batch.label_token_ids), batch.gold, reduction="sum"
        ).backward()
    expected = torch.stack([kept[i].grad.sum(1).abs() for i in range(adapter.n_layers)], 1)
    result = run_saliency(tl_model, batch, gradient="scores", keep_maps=True, progress=False)
    assert_close(result.maps, expected)


def test_loss_options(tl_model, prompts):
    gold = run_saliency(tl_model, prompts, progress=False)
    predicted = run_saliency(tl_model, prompts, loss="predicted", progress=False)
    wrong = gold.predictions != gold.gold
    same = ~wrong
    assert_close(gold.group_sums[same], predicted.group_sums[same])
    if bool(wrong.any()):
        assert not torch.allclose(gold.group_sums[wrong], predicted.group_sums[wrong])

    def margin(logits, batch):
        label = logits.gather(1, batch.label_token_ids.to(logits.device))
        return label[:, 1] - label[:, 0]

    custom = run_saliency(tl_model, prompts, metric=margin, progress=False)
    assert custom.settings["loss"] == "metric"
    assert not torch.allclose(custom.group_sums, gold.group_sums)


def test_gold_loss_needs_query_labels(tl_model):
    unlabelled = ICLPrompt(
        Template(),
        (" Negative", " Positive"),
        (Example("a dull film", 0), Example("a great film", 1)),
        Example("a fine film"),
    )
    with pytest.raises(AnchorFlowError, match="loss='gold' needs every query's label"):
        run_saliency(tl_model, [unlabelled], progress=False)
    result = run_saliency(tl_model, [unlabelled], loss="predicted", progress=False)
    assert result.n_prompts == 1


def test_detached_pattern_is_refused_not_zero(tl_model, prompts):
    adapter = adapt(tl_model)
    detach = [(adapter.pattern_hook_name(adapter.n_layers - 1), lambda p, hook: p.detach())]
    with pytest.raises(DeadAttentionHooksError, match="no gradient reached hook_pattern"):
        run_saliency(tl_model, prompts, extra_hooks=detach, progress=False)
    assert_no_hooks(tl_model)


def test_bad_batch_size(tl_model, prompts):
    with pytest.raises(AnchorFlowError, match="batch_size=0; expected a positive integer"):
        run_saliency(tl_model, prompts, batch_size=0)


def test_result_round_trip_and_frame(tl_model, prompts, tmp_path):
    result = run_saliency(tl_model, prompts, keep_maps=True, progress=False)
    result.save(tmp_path / "sal")
    loaded = type(result).load(tmp_path / "sal")
    assert torch.equal(loaded.group_sums, result.group_sums)
    assert torch.equal(loaded.maps, result.maps)
    assert loaded.str_tokens == result.str_tokens
    frame = result.to_frame()
    assert len(frame) == result.n_prompts * result.n_layers * len(FINE_GROUPS)
    flows = result.flows()
    assert flows.values.shape == (len(prompts), 3, result.n_layers)


@pytest.mark.hooked
@pytest.mark.skipif(
    "hooked" not in TL_CLASSES, reason="HookedTransformer needs transformer-lens 3.x"
)
def test_scores_gradient_is_invariant_to_folding_value_biases(toy_tokenizer, prompts):
    unprocessed = from_hf_model(make_tiny_hf_gpt2(), toy_tokenizer, tl_class="hooked")
    folded = from_hf_model(make_tiny_hf_gpt2(), toy_tokenizer, tl_class="hooked")
    fold_value_biases(folded)
    kw = dict(keep_maps=True, progress=False)
    with pytest.warns(UserWarning, match="value biases appear folded"):
        assert warn_if_value_biases_folded(folded)
    paper = [run_saliency(m, prompts, **kw) for m in (unprocessed, folded)]
    assert_close(paper[0].label_probs, paper[1].label_probs)  # the same function
    # The paper's A * dL/dA sees the folded bias (TL_NOTES); the scores gradient does not.
    assert not torch.allclose(paper[0].maps, paper[1].maps, rtol=1e-3)
    invariant = [run_saliency(m, prompts, gradient="scores", **kw) for m in (unprocessed, folded)]
    assert_close(invariant[0].maps, invariant[1].maps, rtol=1e-3)
