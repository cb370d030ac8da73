"""Vanilla ICL evaluation on tiny models: oracle, batching, top-k, identity/effect, hygiene."""

from __future__ import annotations

import inspect
import re

import pytest
import torch

from anchor_flow.errors import AnchorFlowError, DeadAttentionHooksError, ResultsError
from anchor_flow.icl.evaluation import ICLResult, run_icl
from anchor_flow.icl.prompts import Example, ICLPrompt, Template, tokenize_prompts
from anchor_flow.models.tl_adapter import adapt
from anchor_flow.testbeds.toy import toy_prompts
from conftest import assert_no_hooks


@pytest.fixture(scope="module")
def prompts() -> list[ICLPrompt]:
    # Different demonstration counts -> different lengths -> padding inside a batch.
    short = toy_prompts(3, seed=1)
    long = toy_prompts(3, shots_per_class=2, seed=2)
    return [short[0], long[0], short[1], long[1], short[2], long[2]]


def full_forward_oracle(model, prompts):
    """Label-restricted probabilities and full softmax at the target, one unpadded prompt at a
    time through the model's own full forward (no final_logits, no batching)."""
    tokenizer = adapt(model).tokenizer
    label_probs, full_probs = [], []
    with torch.no_grad():
        for prompt in prompts:
            batch = tokenize_prompts([prompt], tokenizer)
            logits = model(batch.tokens, return_type="logits")[0, batch.target_position[0]]
            label = logits[batch.label_token_ids[0]]
            label_probs.append(label.double().softmax(-1))
            full_probs.append(logits.double().softmax(-1))
    return torch.stack(label_probs), torch.stack(full_probs)


def test_label_probs_equal_a_full_forward_oracle(tl_model, prompts):
    result = run_icl(tl_model, prompts, batch_size=4, progress=False)
    expected, _ = full_forward_oracle(tl_model, prompts)
    assert torch.allclose(result.label_probs.double(), expected, atol=1e-5)
    assert torch.equal(result.predictions, result.label_probs.argmax(-1))
    assert result.gold.tolist() == [p.query.label for p in prompts]


def test_top_k_matches_torch_topk_of_the_full_softmax(tl_model, prompts):
    result = run_icl(tl_model, prompts, top_k=5, progress=False)
    _, full = full_forward_oracle(tl_model, prompts)
    expected = full.topk(5, dim=-1)
    assert result.top_tokens.shape == (len(prompts), 5)
    assert torch.allclose(result.top_probs.double(), expected.values, atol=1e-6)
    # Ties aside, the same tokens in the same (descending) order.
    assert torch.equal(result.top_tokens, expected.indices)
    assert bool((result.top_probs[:, :-1] >= result.top_probs[:, 1:]).all())


def test_batched_equals_per_example_with_padding(tl_model, prompts):
    batch = tokenize_prompts(prompts, adapt(tl_model).tokenizer)
    assert len(set(batch.lengths.tolist())) > 1, "the prompts must need padding"
    batched = run_icl(tl_model, batch, batch_size=6, progress=False)
    single = run_icl(tl_model, batch, batch_size=1, progress=False)
    assert torch.allclose(batched.label_probs, single.label_probs, atol=1e-6)
    assert torch.allclose(batched.top_probs, single.top_probs, atol=1e-6)
    assert torch.equal(batched.top_tokens, single.top_tokens)


def test_identity_a_neutral_extra_hook_changes_nothing(tl_model, prompts):
    adapter = adapt(tl_model)
    calls = []

    def neutral(pattern, hook):
        calls.append(hook.name)
        return pattern

    hooks = [(adapter.pattern_hook_name(layer), neutral) for layer in range(adapter.n_layers)]
    base = run_icl(tl_model, prompts, progress=False)
    same = run_icl(tl_model, prompts, extra_hooks=hooks, progress=False)
    assert calls, "the neutral hook never ran"
    assert torch.equal(base.label_probs, same.label_probs)
    assert torch.equal(base.top_tokens, same.top_tokens)
    assert same.settings["n_extra_hooks"] == adapter.n_layers


def test_effect_editing_the_last_layers_pattern_changes_label_probs(tl_model, prompts):
    adapter = adapt(tl_model)
    last = adapter.pattern_hook_name(adapter.n_layers - 1)

    def attend_to_self(pattern, hook):
        return torch.eye(pattern.shape[-1], dtype=pattern.dtype, device=pattern.device).expand_as(
            pattern
        )

    base = run_icl(tl_model, prompts, progress=False)
    edited = run_icl(tl_model, prompts, extra_hooks=[(last, attend_to_self)], progress=False)
    assert float((base.label_probs - edited.label_probs).abs().max()) > 1e-4
    # A filter function works as a hook key too, as in TransformerLens.
    by_filter = run_icl(
        tl_model, prompts, extra_hooks=[(lambda name: name == last, attend_to_self)], progress=False
    )
    assert torch.equal(by_filter.label_probs, edited.label_probs)
    assert_no_hooks(tl_model)


def test_hygiene_after_an_exception_and_modes_restored(tl_model, prompts):
    adapter = adapt(tl_model)
    tl_model.train()
    flags = [p.requires_grad for p in tl_model.parameters()]

    def boom(pattern, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_icl(tl_model, prompts, extra_hooks=[(adapter.pattern_hook_name(0), boom)])
    assert_no_hooks(tl_model)
    assert tl_model.training
    assert [p.requires_grad for p in tl_model.parameters()] == flags
    tl_model.eval()


def test_dropout_is_off_during_evaluation(tl_model, prompts):
    # The bridge runs Hugging Face modules with dropout; HookedTransformer has none (no-op).
    eval_result = run_icl(tl_model, prompts, progress=False)
    tl_model.train()
    try:
        train_result = run_icl(tl_model, prompts, progress=False)
    finally:
        tl_model.eval()
    assert torch.equal(eval_result.label_probs, train_result.label_probs)


def test_dead_attention_hooks_are_refused(tl_model, prompts, monkeypatch):
    from anchor_flow.models import guards

    adapter = adapt(tl_model)
    monkeypatch.setitem(guards._LIVENESS, adapter.model, "edit check failed: simulated")
    neutral = [(adapter.pattern_hook_name(0), lambda p, hook: p)]
    with pytest.raises(DeadAttentionHooksError, match="edit check failed: simulated"):
        run_icl(tl_model, prompts, extra_hooks=neutral, progress=False)
    # Hooks elsewhere than on attention patterns do not need live attention hooks.
    residual = [("blocks.0.hook_resid_post", lambda x, hook: x)]
    assert run_icl(tl_model, prompts, extra_hooks=residual, progress=False).n_prompts == 6


def test_accuracy_and_frame(tl_model, prompts):
    result = run_icl(tl_model, prompts, progress=False)
    correct = (result.predictions == result.gold).double().mean()
    assert result.accuracy() == pytest.approx(float(correct))
    frame = result.to_frame()
    assert len(frame) == len(prompts) * 2
    assert list(frame.columns) == ["prompt", "class", "label_prob", "gold", "prediction"]
    assert frame.groupby("prompt")["label_prob"].sum().tolist() == pytest.approx([1.0] * 6)


def test_unlabelled_queries(tl_model):
    unlabelled = ICLPrompt(
        Template(),
        (" Negative", " Positive"),
        (Example("a dull film", 0), Example("a great film", 1)),
        Example("a fine film"),
    )
    result = run_icl(tl_model, [unlabelled], progress=False)
    assert result.gold.tolist() == [-1]
    with pytest.raises(AnchorFlowError, match=re.escape("accuracy needs query labels")):
        result.accuracy()


def test_result_round_trip(tl_model, prompts, tmp_path):
    result = run_icl(tl_model, prompts, top_k=3, progress=False)
    result.save(tmp_path / "icl")
    loaded = ICLResult.load(tmp_path / "icl")
    for name in ("label_probs", "gold", "top_tokens", "top_probs"):
        assert torch.equal(getattr(loaded, name), getattr(result, name))
    assert loaded.settings == result.settings
    assert sorted(p.name for p in (tmp_path / "icl").iterdir()) == ["icl.npz", "icl_meta.json"]


def test_load_errors(tmp_path):
    with pytest.raises(ResultsError, match="cannot read an ICL result from"):
        ICLResult.load(tmp_path / "missing")
    result = ICLResult(
        torch.tensor([[0.5, 0.5]]), torch.tensor([0]), torch.tensor([[1]]), torch.tensor([[0.1]])
    )
    result.save(tmp_path / "r")
    (tmp_path / "r" / "icl_meta.json").write_text('{"schema": "other/1", "settings": {}}')
    with pytest.raises(
        ResultsError, match=re.escape("holds schema 'other/1'; expected 'anchor_flow.icl/1'")
    ):
        ICLResult.load(tmp_path / "r")


def unchecked_result(*tensors):
    """ICLResult.__post_init__ on fields that the runtime type checker pytest switches on would
    refuse first: the library's own validation, which users see, is what is tested."""
    result = object.__new__(ICLResult)
    names = ("label_probs", "gold", "top_tokens", "top_probs")
    for name, value in zip(names, tensors, strict=True):
        object.__setattr__(result, name, value)
    object.__setattr__(result, "settings", {})
    result.__post_init__()
    return result


def test_result_validation():
    probs, gold = torch.tensor([[0.5, 0.5]]), torch.tensor([0])
    with pytest.raises(
        AnchorFlowError, match=re.escape("label_probs has 1 prompts but {'gold': 2}")
    ):
        unchecked_result(probs, torch.tensor([0, 1]), torch.tensor([[1]]), torch.tensor([[0.1]]))
    with pytest.raises(AnchorFlowError, match=re.escape("top_probs has shape (1, 2)")):
        unchecked_result(probs, gold, torch.tensor([[1]]), torch.tensor([[0.1, 0.2]]))
    with pytest.raises(AnchorFlowError, match=re.escape("got shapes (2,), (1,), (1, 1)")):
        unchecked_result(probs[0], gold, torch.tensor([[1]]), torch.tensor([[0.1]]))
    assert unchecked_result(probs, gold, torch.tensor([[1]]), torch.tensor([[0.1]])).n_classes == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size=0; expected a positive integer"),
        ({"top_k": 0}, "top_k=0; expected a positive integer"),
        ({"top_k": 601}, "top_k=601 is larger than the vocabulary (600 tokens)"),
    ],
)
def test_bad_arguments(tl_model, prompts, kwargs, message):
    with pytest.raises(AnchorFlowError, match=re.escape(message)):
        run_icl(tl_model, prompts, progress=False, **kwargs)


def test_no_prompts(tl_model):
    # Past the runtime type checker pytest switches on: the library's own message.
    with pytest.raises(AnchorFlowError, match="run_icl got no prompts"):
        inspect.unwrap(run_icl)(tl_model, [], progress=False)
