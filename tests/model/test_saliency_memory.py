"""Saliency with ``memory="recompute"`` (issue 17 item 4): equal results, less memory, hygiene.

Identity: every field of the result equals ``memory="keep"`` on the built-in models of both
TL classes, with and without the caller's own pattern edits. Effect: the blocks really run
twice, and the peak of torch's CPU allocator falls by at least most of the patterns of the
layers it no longer keeps (a lower bound from the shapes, not from the code). Hygiene: block
forwards and hooks are restored, also after an exception; bad inputs raise with their value.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import warnings
import weakref
from typing import Any

import pytest
import torch

from anchor_flow import load_model
from anchor_flow.analysis.blocking import isolation_hooks
from anchor_flow.analysis.edges import edge_groups
from anchor_flow.analysis.saliency import hooks as saliency_hooks_module
from anchor_flow.analysis.saliency.hooks import saliency_hooks
from anchor_flow.analysis.saliency.measure import run_saliency
from anchor_flow.errors import AnchorFlowError, UnsupportedModelError
from anchor_flow.icl.prompts import tokenize_prompts
from anchor_flow.models.guards import frozen
from anchor_flow.models.recompute import recompute_blocks, recomputing
from anchor_flow.models.tl_adapter import adapt
from anchor_flow.run.config import NOT_IN_RESULTS, RunConfig
from anchor_flow.testbeds.synthetic import synthetic_prompts
from anchor_flow.testbeds.toy import toy_prompts
from conftest import TL_CLASSES, assert_no_hooks

CLASSES = [pytest.param(kind, marks=getattr(pytest.mark, kind)) for kind in TL_CLASSES]
PROMPTS = {
    "toy-gpt2": lambda: toy_prompts(3, seed=1) + toy_prompts(2, shots_per_class=3, seed=2),
    "planted-anchor": lambda: synthetic_prompts(5, k=3, seed=0),
}
FIELDS = ("group_sums", "group_counts", "label_probs", "maps", "head_maps", "text_row_sums")


def _load(name: str, tl_class: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(name, tl_class=tl_class)


def _assert_equal_results(actual: Any, expected: Any, rtol: float = 1e-6) -> None:
    compared = 0
    for name in FIELDS:
        a, e = getattr(actual, name), getattr(expected, name)
        assert (a is None) == (e is None), name
        if e is None:
            continue
        scale = float(e.abs().max())
        assert scale > 0, f"{name} is all zeros: nothing is compared"
        worst = float((a.double() - e.double()).abs().max())
        assert worst <= rtol * scale, f"{name}: max |diff| {worst:.3e} vs max {scale:.3e}"
        compared += 1
    assert compared >= 4


def _blocks_untouched(model: Any) -> bool:
    return all("forward" not in vars(block) for block in adapt(model).model.blocks)


@pytest.mark.parametrize("tl_class", CLASSES)
@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_recompute_equals_keep(name: str, tl_class: str) -> None:
    model = _load(name, tl_class)
    prompts = PROMPTS[name]()
    options = [
        {"keep_maps": True},
        {"gradient": "scores", "head_reduction": "abs_then_sum", "keep_head_maps": True},
        # The caller's own pattern edits run again in the recompute and must still apply.
        {"keep_maps": True, "batch_hooks": lambda rows, part: isolation_hooks(model, part, [0])},
    ]
    for option in options:
        kw: dict[str, Any] = {"batch_size": 2, "progress": False, **option}
        keep = run_saliency(model, prompts, memory="keep", **kw)
        recompute = run_saliency(model, prompts, memory="recompute", **kw)
        _assert_equal_results(recompute, keep)
    # The isolation edit is not a no-op here (else the third case compared nothing new).
    plain = run_saliency(model, prompts, keep_maps=True, batch_size=2, progress=False)
    assert not torch.allclose(plain.group_sums, keep.group_sums, rtol=1e-3)
    assert_no_hooks(model)
    assert _blocks_untouched(model)


@pytest.mark.parametrize("tl_class", CLASSES)
def test_recompute_reruns_every_block_once(tl_class: str) -> None:
    model = _load("toy-gpt2", tl_class)
    adapter = adapt(model)
    calls = {"keep": [0, 0], "recompute": [0, 0]}  # [forward, recompute] pattern-hook calls
    for memory, counter in calls.items():

        def count(pattern: torch.Tensor, hook: Any, counter: list[int] = counter) -> None:
            counter[int(recomputing())] += 1

        hooks = [(adapter.pattern_hook_name(layer), count) for layer in range(adapter.n_layers)]
        run_saliency(model, toy_prompts(2), memory=memory, extra_hooks=hooks, progress=False)
    assert calls["keep"] == [adapter.n_layers, 0]
    assert calls["recompute"] == [adapter.n_layers, adapter.n_layers]


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")  # layer 0 starts the graph
@pytest.mark.parametrize("tl_class", CLASSES)
def test_no_forward_pattern_survives_to_the_backward(tl_class: str) -> None:
    model = _load("toy-gpt2", tl_class)
    adapter = adapt(model)
    batch = tokenize_prompts(toy_prompts(3), adapter.tokenizer)
    alive: dict[str, list[bool]] = {}
    for memory in ("keep", "recompute"):
        refs: list[weakref.ref[torch.Tensor]] = []

        def watch(pattern: torch.Tensor, hook: Any, refs: list[Any] = refs) -> None:
            if not recomputing():
                refs.append(weakref.ref(pattern))

        recorder = saliency_hooks(model, edge_groups(batch), memory=memory)
        start, *remember = recorder.fwd_hooks
        names = [adapter.pattern_hook_name(layer) for layer in range(adapter.n_layers)]
        hooks = [start, *((name, watch) for name in names), *remember]
        scope = recompute_blocks(model) if memory == "recompute" else contextlib.nullcontext()
        with frozen(model), scope, adapter.hooks(fwd_hooks=hooks, bwd_hooks=recorder.bwd_hooks):
            with torch.enable_grad():
                final = adapter.final_logits(batch.tokens, batch.target_position)
            gc.collect()
            alive[memory] = [ref() is not None for ref in refs]  # before the backward
            final.gather(1, batch.label_token_ids).logsumexp(-1).sum().backward()
        recorder.check_complete(adapter.n_layers)
    # keep: every layer's pattern is held (by autograd or the hooks) for the backward;
    # recompute: none is, the backward recomputes them one block at a time.
    assert alive["keep"] == [True] * adapter.n_layers
    assert alive["recompute"] == [False] * adapter.n_layers
    assert_no_hooks(model)


def _cpu_allocator_peak(fn: Any) -> int:
    """Peak bytes of torch's CPU allocator during ``fn()`` above its level at the start."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    level = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        level += event.nbytes()
        peak = max(peak, level)
    return peak


@pytest.mark.parametrize("tl_class", CLASSES)
def test_recompute_lowers_peak_memory(tl_class: str) -> None:
    model = _load("toy-gpt2", tl_class)
    adapter = adapt(model)
    prompts = toy_prompts(4, shots_per_class=7, seed=3)
    batch = tokenize_prompts(prompts, adapter.tokenizer)
    n_batch, n_pos = batch.tokens.shape
    assert n_pos >= 150, n_pos  # long enough that patterns dominate this tiny model
    peaks = {
        memory: _cpu_allocator_peak(
            lambda memory=memory: run_saliency(
                model, batch, memory=memory, batch_size=n_batch, progress=False
            )
        )
        for memory in ("keep", "recompute")
    }
    # keep holds every layer's float32 pattern when the last layer's backward starts;
    # recompute holds one. At least 3/4 of the other layers' patterns must be saved.
    one_layer = n_batch * adapter.n_heads * n_pos * n_pos * 4
    saved = peaks["keep"] - peaks["recompute"]
    assert saved >= 0.75 * (adapter.n_layers - 1) * one_layer, (peaks, one_layer)


def test_chunked_head_reduction_equals_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _load("toy-gpt2", TL_CLASSES[0])
    prompts = PROMPTS["toy-gpt2"]()
    for option in (
        {"keep_maps": True},
        {"gradient": "scores", "head_reduction": "abs_then_sum", "keep_head_maps": True},
    ):
        kw: dict[str, Any] = {"progress": False, **option}
        whole = run_saliency(model, prompts, **kw)
        with monkeypatch.context() as patch:
            patch.setattr(saliency_hooks_module, "REDUCE_CHUNK_BYTES", 1)  # one head at a time
            chunked = run_saliency(model, prompts, memory="recompute", **kw)
        _assert_equal_results(chunked, whole)


def test_memory_option_refuses_unknown_values() -> None:
    model = _load("toy-gpt2", TL_CLASSES[0])
    groups = edge_groups(tokenize_prompts(toy_prompts(1), adapt(model).tokenizer))
    # Under pytest the runtime type checker refuses the Literal first: unwrap it to reach
    # the check users without one get.
    for function, args in ((run_saliency, (toy_prompts(1),)), (saliency_hooks, (groups,))):
        with pytest.raises(AnchorFlowError, match=r"memory='low'; expected 'keep' or 'recompute'"):
            inspect.unwrap(function)(model, *args, memory="low")
    assert "saliency_memory" in RunConfig().settings()  # recorded; a resume may change it
    assert "saliency_memory" in NOT_IN_RESULTS


@pytest.mark.parametrize("tl_class", CLASSES)
def test_recompute_hooks_without_recompute_blocks_raise(tl_class: str) -> None:
    model = _load("toy-gpt2", tl_class)
    adapter = adapt(model)
    batch = tokenize_prompts(toy_prompts(2), adapter.tokenizer)
    recorder = saliency_hooks(model, edge_groups(batch), memory="recompute")
    with (
        pytest.raises(AnchorFlowError, match=r"layer \d+'s block was not recomputed"),
        adapter.hooks(fwd_hooks=recorder.fwd_hooks, bwd_hooks=recorder.bwd_hooks),
    ):
        adapter.final_logits(batch.tokens, batch.target_position).sum().backward()
    assert_no_hooks(model)


@pytest.mark.parametrize("tl_class", CLASSES)
def test_recompute_blocks_restores_forwards_and_refuses_misuse(tl_class: str) -> None:
    model = _load("toy-gpt2", tl_class)
    adapter = adapt(model)
    tokens = torch.arange(1, 20)[None]
    with torch.no_grad():
        before = adapter.forward_logits(tokens)
    wrapped = []

    def fail() -> None:
        with recompute_blocks(model):
            wrapped.append(not _blocks_untouched(model))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail()
    assert wrapped == [True]
    assert _blocks_untouched(model)
    with recompute_blocks(model):
        nested = recompute_blocks(model)
        with pytest.raises(UnsupportedModelError, match="nested recompute_blocks"):
            nested.__enter__()
        assert not _blocks_untouched(model)  # the outer one still holds
        # A key/value cache would receive every key twice (forward, then recompute).
        with pytest.raises(UnsupportedModelError, match="received a key/value cache"):
            adapter.context_key_values(tokens)
    assert _blocks_untouched(model)
    with torch.no_grad():
        assert torch.equal(adapter.forward_logits(tokens), before)
