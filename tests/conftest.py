"""Shared fixtures: the toy tokenizer, a tiny random GPT-2, TL models of each class, hygiene."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from typing import Any

import pytest
import torch

from anchor_flow.models import tl_adapter
from anchor_flow.testbeds.toy import build_toy_tokenizer

# One intra-op thread per test process (and for the processes the tests start), as a run does
# for small models (anchor_flow.run.threads): every model here is tiny and pytest-xdist already
# gives each core a worker (with two busy processes beside it, the 4.x suite took 392 s instead
# of 405 s; benchmarks/logs/ci_time.txt). A user who set OMP_NUM_THREADS keeps their choice.
if "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# --- Test tiers (markers given by path; see docs/development.md "Test tiers") -------------
# unit        tests/unit/**: no TransformerLens model; the same on every TL line. The quick loop.
# model       tests/model/**: builds TL models, runs experiments, the CLI, notebooks.
# acceptance  tests/acceptance/**: real checkpoints (skipped when they are not cached).
# package     tests/package/**: the built wheel, the docs site, the repository's files.
# doctest     every docstring example in src/anchor_flow.
# tl_line     what can differ between TransformerLens lines: every model, acceptance and
#             doctest item, unless marked ``same_on_tl_lines``; a unit test that does depend
#             on the line opts in with ``@pytest.mark.tl_line``. .ci/run runs
#             ``-m tl_line`` again under TransformerLens 3.9.
TIERS = ("unit", "model", "acceptance", "package")
TL_LINE_TIERS = ("model", "acceptance", "doctest")


def _tier(item: pytest.Item) -> str | None:
    if isinstance(item, pytest.DoctestItem):
        return "doctest"
    parts = item.path.parts
    for tier in TIERS:
        if "tests" in parts and tier in parts[parts.index("tests") + 1 :][:1]:
            return tier
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = _tier(item)
        if tier is None:
            continue
        item.add_marker(tier)
        if tier in TL_LINE_TIERS and item.get_closest_marker("same_on_tl_lines") is None:
            item.add_marker("tl_line")


TL_CLASSES = tuple(
    kind
    for kind, cls in (
        ("hooked", tl_adapter.hooked_transformer_class()),
        ("bridge", tl_adapter.transformer_bridge_class()),
    )
    if cls is not None
)


@pytest.fixture(scope="session")
def toy_tokenizer() -> Any:
    """The offline 600-token byte-level BPE tokenizer (anchor_flow.testbeds.toy)."""
    return build_toy_tokenizer()


def make_tiny_hf_gpt2(n_layer: int = 2, seed: int = 0) -> Any:
    """A seeded random GPT2LMHeadModel (eager attention, eval) with nonzero random biases,
    so that folding the value biases is detectable."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        n_layer=n_layer,
        n_head=4,
        n_embd=32,
        n_positions=128,
        vocab_size=600,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        attn_implementation="eager",
        # Larger than GPT-2's 0.02 so that attention matters and saliency is far from 0.
        initializer_range=0.1,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("bias"):
                    param.normal_(0.0, 0.2)
    return model.eval()


@pytest.fixture
def tiny_hf_gpt2() -> Any:
    """A fresh tiny GPT-2 per test (a bridge wraps the HF model in place)."""
    return make_tiny_hf_gpt2()


@pytest.fixture(params=TL_CLASSES)
def tl_model(request: pytest.FixtureRequest, tiny_hf_gpt2: Any, toy_tokenizer: Any) -> Any:
    """A fresh TL model of each class the installed TransformerLens offers."""
    from anchor_flow.models.loading import from_hf_model

    model = from_hf_model(tiny_hf_gpt2, toy_tokenizer, tl_class=request.param)
    yield model
    assert_no_hooks(model)


def assert_no_hooks(model: Any) -> None:
    """Hygiene: no temporary forward/backward hook remains on any hook point of ``model``.

    Permanent TL hooks (``add_perma_hook``; the OPT bridge installs some itself) are allowed;
    raw torch hooks not registered through TL are not.
    """
    model = tl_adapter.adapt(model).model
    left = {}
    for name, point in model.hook_dict.items():
        handles = [*getattr(point, "fwd_hooks", ()), *getattr(point, "bwd_hooks", ())]
        temporary = sum(not h.is_permanent for h in handles)
        raw = len(point._forward_hooks) + len(point._backward_hooks) - len(handles)
        if temporary or raw > 0:
            left[name] = (temporary, raw)
    assert not left, f"hooks left on the model (temporary TL hooks, raw torch hooks): {left}"


def fold_value_biases(model: Any) -> None:
    """Process a HookedTransformer (TL 3.x) with fold_value_biases only, in place."""
    model.load_and_process_state_dict(
        model.state_dict(),
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=True,
    )


def sentencepiece_tokenizer(
    variant: str = "metaspace", extra: list | None = None, model_max_length: int | None = None
):
    """A Llama-2-style fast tokenizer: byte-fallback BPE, "▁" added on every call, BOS <s>.

    ``variant``: ``"metaspace"`` (a Metaspace pre-tokenizer, prepend "always") or
    ``"llama2-normalizer"`` (Llama-2's ``Prepend("▁")`` + ``Replace(" ", "▁")`` normalizer);
    ``extra``: normalizers to run first.
    """
    import json

    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    from anchor_flow.testbeds.toy import TOY_NEGATIVE, TOY_POSITIVE

    trainer_tok = Tokenizer(models.BPE())
    # Trained like SentencePiece: pieces never contain a space except a leading "▁".
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always", split=True)
    lines = ["Review: Sentiment: Negative Positive"] * 20 + list(TOY_POSITIVE + TOY_NEGATIVE) * 2
    trainer = trainers.BpeTrainer(vocab_size=300, min_frequency=1, show_progress=False)
    trainer_tok.train_from_iterator(lines, trainer=trainer)
    trained = json.loads(trainer_tok.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{b:02X}>": 3 + b for b in range(256)}
    for piece in sorted(trained["vocab"], key=trained["vocab"].get):
        vocab.setdefault(piece, len(vocab))  # "\n" is not in it: <0x0A>, as in Llama-2
    merges = [tuple(m) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    if variant == "metaspace":
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always", split=False)
        steps = []
    else:  # Llama-2's tokenizer.json
        steps = [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    if steps or extra:
        tok.normalizer = normalizers.Sequence([*(extra or []), *steps])
    strip = decoders.Strip(" ", 1, 0)  # the "▁" the tokenizer added
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), strip]
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    limit = {} if model_max_length is None else {"model_max_length": model_max_length}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", **limit
    )
