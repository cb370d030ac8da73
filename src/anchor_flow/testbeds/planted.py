"""Planted circuits: two-layer attention-only GPT-2s whose weights are set by hand (issue 4).

They solve the synthetic task of :mod:`anchor_flow.testbeds.synthetic` by a known mechanism, so the
library's experiments can be checked against ground truth:

* ``planted-anchor`` makes the paper's hypothesis (§2, Fig. 1) exact. Layer 0, head 0: each
  label word averages its own demonstration's text tokens and writes that bag of words into
  subspace ``S_label`` (information aggregation into the anchor: S_wp). Head 1: every
  ``Sentiment:`` (the target among them) averages its own slot's text into ``S_query``.
  Layer 1, head 0: a ``Sentiment:`` position scores each label word by
  ``gamma * S_query . S_label + alpha`` (the best-matching demonstration wins sharply), copies
  that label word's identity into ``OUT``, and the unembedding turns ``OUT`` into label-word
  logits (the target reads its prediction from the anchors: S_pq).
* ``planted-formatting`` (the control) solves the same task with the summary stored at the
  separator ``\\n`` after each label: layer 0, head 0 writes the newline's demonstration text
  into ``S_label``, head 2 copies the demonstration's label identity into ``CARRIED``, and
  layer 1 matches the target against the newlines and copies ``CARRIED``. Label words are
  not anchors there: isolating them changes nothing.

Construction (all else zero). Every weight reads and writes named one-hot subspaces of the
residual stream (:class:`Layout`). MLPs are all zeros. LayerNorm is made an identity: epsilon
``1e6`` with weight ``sqrt(1e6)`` and bias 0, and every vector written to the residual stream
(token and position embeddings, head outputs) has mean 0 across ``d_model`` because a
never-read ``balance`` dimension holds minus the sum of the others; LN then only rescales by
``1 / sqrt(1 + var / 1e6)``, a relative error below 1e-5. Queries are multiplied by
``sqrt(d_head)`` to undo GPT-2's attention scaling. Position ``p >= 1`` is in slot
``(p - 1) // (n + 5)`` at offset ``(p - 1) % (n + 5)``
(:func:`anchor_flow.testbeds.synthetic.layout_of`); position embeddings hold a one-hot of the slot
in a subspace chosen by the offset (text, ``Sentiment:``, label, separator), a ``null-key`` flag at
position 0 and a constant 1. A reader head gives score ``beta = 30`` to the text (or label) of its
own slot; every other query position gives ``beta`` to ``<bos>``, whose value is 0 (a no-op "null"
attention, so non-readers get no saliency). The target is not known to the position embedding (it
depends on the number of demonstrations), so every ``Sentiment:`` position runs the layer-1 match;
only the target's logits are ever read.

Sizes (defaults): vocabulary 37 (``<bos>``, ``<unk>``, 3 format tokens, 8 label words, 24
content tokens), ``d_model = 192`` (3 heads of ``d_head = 64``; 168 dims used), 2 layers,
``n_ctx = 1 + 17 * 11 = 188`` (up to 16 demonstrations of 6 text tokens), ``d_mlp = 768`` (all
zero: TransformerLens 3.9 ignores GPT-2's ``n_inner``), 940,416 parameters of which 1,970
(anchor) or 2,047 (formatting) are nonzero (LayerNorm weights included).

One extra path exists for TransformerLens' hook-liveness probe, which runs 4 arbitrary tokens
and needs logits that depend on layer 0's pattern: head 0 of layer 0 also writes its
attention to ``<bos>`` into a ``probe`` dimension that only the ``<unk>`` logit reads. No
label-word logit reads it, so label-restricted predictions and saliency are unaffected.

Deliberately not here: training (these models have none), the task
(:mod:`anchor_flow.testbeds.synthetic`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from anchor_flow.testbeds.synthetic import (
    DEFAULT_SPEC,
    UNK_TOKEN,
    SyntheticError,
    SyntheticSpec,
    build_synthetic_tokenizer,
)

__all__ = [
    "PLANTED_KINDS",
    "Layout",
    "PlantedSettings",
    "build_planted_model",
    "construction_tag",
    "write_planted_folder",
    "writer",
]

PLANTED_KINDS: tuple[str, ...] = ("anchor", "formatting")


@dataclass(frozen=True)
class PlantedSettings:
    """Free constants of the construction.

    Attributes:
        beta: score of a reader's own-slot keys and of a non-reader's ``<bos>`` key (layer 0,
            and layer 1's null attention); ``exp(-beta)`` is the leak to other positions.
        gamma: layer-1 weight of the bag-of-words overlap ``S_query . S_label`` (each shared
            token pair adds ``gamma / n**2``, about 4.2 for n = 6: a sharp best match).
        alpha: layer-1 bonus of the summary positions (label words or separators) over the
            ~50-200 other keys.
        logit_scale: logit of label word i per unit of ``OUT_i`` (not saturating gradients).
        other_logit: logit of every token that is not a label word.
        max_demonstrations: demonstrations the position embeddings cover (sets ``n_ctx``).
        d_head, n_heads: head size and count (``d_model = n_heads * d_head``).
    """

    beta: float = 30.0
    gamma: float = 150.0
    alpha: float = 20.0
    logit_scale: float = 5.0
    other_logit: float = -10.0
    max_demonstrations: int = 16
    d_head: int = 64
    n_heads: int = 3


@dataclass(frozen=True)
class Layout:
    """Named subspaces of the residual stream: ``layout.index[name]`` is a list of dims.

    Example:
        >>> layout = Layout.build(DEFAULT_SPEC, PlantedSettings())
        >>> layout.d_model, len(layout.index["text_slot"])
        (192, 17)
    """

    index: dict[str, list[int]]
    d_model: int
    n_slots: int

    @classmethod
    def build(cls, spec: SyntheticSpec, settings: PlantedSettings) -> Layout:
        n_slots = settings.max_demonstrations + 1
        sizes = {
            "content": spec.n_content,  # token identity of content words
            "label_word": spec.n_label_words,  # token identity of label words
            "const": 1,
            "null_key": 1,  # position 0 (<bos>)
            "text_slot": n_slots,  # slot one-hot at text positions
            "sentiment_slot": n_slots,  # ... at "Sentiment:" positions
            "label_slot": n_slots,  # ... at label-word positions
            "separator_slot": n_slots,  # ... at separator "\n" positions
            "s_label": spec.n_content,  # bag of words of a demonstration (at its summary)
            "s_query": spec.n_content,  # bag of words of a slot, at its "Sentiment:"
            "carried": spec.n_label_words,  # label identity carried to the separator
            "out": spec.n_label_words,  # the copied label word (read by the unembedding)
            "probe": 1,  # layer 0's attention to <bos>, read only by the <unk> logit
            "balance": 1,  # minus the sum of all others: LayerNorm's mean is 0
        }
        index, start = {}, 0
        for name, size in sizes.items():
            index[name] = list(range(start, start + size))
            start += size
        d_model = settings.n_heads * settings.d_head
        if start > d_model:
            raise SyntheticError(
                f"the planted layout needs d_model >= {start} but n_heads * d_head = {d_model}; "
                "increase PlantedSettings.d_head or shrink the task"
            )
        return cls(index=index, d_model=d_model, n_slots=n_slots)


def _balanced(rows: torch.Tensor, balance: int) -> torch.Tensor:
    """Set the balance dim of every row (last axis = d_model) to minus the row's sum."""
    rows = rows.clone()
    rows[..., balance] = 0.0
    rows[..., balance] = -rows.sum(-1)
    return rows


def _embeddings(
    spec: SyntheticSpec, layout: Layout, vocab: list[str], n_ctx: int
) -> tuple[torch.Tensor, torch.Tensor]:
    ix, bal = layout.index, layout.index["balance"][0]
    wte = torch.zeros(len(vocab), layout.d_model)
    for token_id, token in enumerate(vocab):
        if token.startswith(" w"):
            wte[token_id, ix["content"][int(token[2:])]] = 1.0
        elif token.startswith(" L"):
            wte[token_id, ix["label_word"][int(token[2:])]] = 1.0
    wpe = torch.zeros(n_ctx, layout.d_model)
    wpe[:, ix["const"][0]] = 1.0
    wpe[0, ix["null_key"][0]] = 1.0
    n = spec.text_length
    offset_subspace = {n + 2: "sentiment_slot", n + 3: "label_slot", n + 4: "separator_slot"}
    for position in range(1, n_ctx):
        slot, offset = divmod(position - 1, spec.demonstration_length)
        name = "text_slot" if 1 <= offset <= n else offset_subspace.get(offset)
        if name is not None and slot < layout.n_slots:
            wpe[position, ix[name][slot]] = 1.0
    return _balanced(wte, bal), _balanced(wpe, bal)


@dataclass
class _Head:
    """One head's maps from the residual stream (rows) to its d_head coordinates."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor  # [d_head, d_model]


def _empty_head(layout: Layout, d_head: int) -> _Head:
    d = layout.d_model
    return _Head(
        q=torch.zeros(d, d_head),
        k=torch.zeros(d, d_head),
        v=torch.zeros(d, d_head),
        o=torch.zeros(d_head, d),
    )


def _reader(layout: Layout, settings: PlantedSettings, reader: str, keys: str) -> _Head:
    """Positions with a ``reader`` slot attend uniformly to ``keys`` of their own slot; all
    other positions attend to ``<bos>`` (null)."""
    head, ix, beta = _empty_head(layout, settings.d_head), layout.index, settings.beta
    null = layout.n_slots  # the d_head coordinate of the null match
    for slot in range(layout.n_slots):
        head.q[ix[reader][slot], slot] = beta
        head.q[ix[reader][slot], null] = -beta  # a reader does not look at <bos>
        head.k[ix[keys][slot], slot] = 1.0
    head.q[ix["const"][0], null] = beta
    head.k[ix["null_key"][0], null] = 1.0
    return head


def _copy(head: _Head, layout: Layout, source: str, target: str) -> None:
    """V reads subspace ``source``, O writes it into ``target`` (same size)."""
    for i, (src, dst) in enumerate(zip(layout.index[source], layout.index[target], strict=True)):
        head.v[src, i] = 1.0
        head.o[i, dst] = 1.0


def _matcher(layout: Layout, settings: PlantedSettings, summary: str, carried: str) -> _Head:
    """Layer 1: ``Sentiment:`` positions score summary positions by bag overlap + alpha and
    copy their ``carried`` subspace into ``out``; other positions attend to ``<bos>``."""
    head, ix = _empty_head(layout, settings.d_head), layout.index
    for c, (query_dim, key_dim) in enumerate(zip(ix["s_query"], ix["s_label"], strict=True)):
        head.q[query_dim, c] = settings.gamma
        head.k[key_dim, c] = 1.0
    bonus, null = len(ix["s_query"]), len(ix["s_query"]) + 1
    for slot in range(layout.n_slots):
        head.q[ix["sentiment_slot"][slot], bonus] = settings.alpha
        head.q[ix["sentiment_slot"][slot], null] = -settings.beta
        head.k[ix[summary][slot], bonus] = 1.0
    head.q[ix["const"][0], null] = settings.beta
    head.k[ix["null_key"][0], null] = 1.0
    _copy(head, layout, carried, "out")
    return head


def _heads(kind: str, layout: Layout, settings: PlantedSettings) -> list[list[_Head]]:
    layer0 = [_empty_head(layout, settings.d_head) for _ in range(settings.n_heads)]
    layer1 = [_empty_head(layout, settings.d_head) for _ in range(settings.n_heads)]
    summary = "label_slot" if kind == "anchor" else "separator_slot"
    layer0[0] = _reader(layout, settings, summary, "text_slot")
    _copy(layer0[0], layout, "content", "s_label")
    # TL's hook-liveness probe runs 4 arbitrary tokens and needs logits that depend on layer
    # 0's pattern: the <unk> logit reads this head's attention to <bos>. No label-word logit
    # does, so the label-restricted loss (and every saliency) is unchanged.
    probe = len(layout.index["content"])
    layer0[0].v[layout.index["null_key"][0], probe] = 1.0
    layer0[0].o[probe, layout.index["probe"][0]] = 1.0
    layer0[1] = _reader(layout, settings, "sentiment_slot", "text_slot")
    _copy(layer0[1], layout, "content", "s_query")
    if kind == "anchor":
        layer1[0] = _matcher(layout, settings, "label_slot", "label_word")
    else:
        layer0[2] = _reader(layout, settings, "separator_slot", "label_slot")
        _copy(layer0[2], layout, "label_word", "carried")
        layer1[0] = _matcher(layout, settings, "separator_slot", "carried")
    return [layer0, layer1]


def build_planted_model(
    kind: str,
    spec: SyntheticSpec = DEFAULT_SPEC,
    settings: PlantedSettings = PlantedSettings(),  # frozen: a shared default is safe
) -> tuple[Any, Any]:
    """A planted ``GPT2LMHeadModel`` (eval mode) and its tokenizer.

    Example:
        >>> model, tokenizer = build_planted_model("anchor")
        >>> model.config.n_layer, model.config.n_embd
        (2, 192)

    Raises:
        SyntheticError: an unknown ``kind`` or sizes that do not fit ``d_model``.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    if kind not in PLANTED_KINDS:
        raise SyntheticError(f"planted model kind {kind!r}; expected one of {PLANTED_KINDS}")
    layout = Layout.build(spec, settings)
    tokenizer = build_synthetic_tokenizer(spec)
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    n_ctx = 1 + layout.n_slots * spec.demonstration_length
    eps = 1e6
    config = GPT2Config(
        vocab_size=len(vocab), n_positions=n_ctx, n_embd=layout.d_model, n_layer=2,
        n_head=settings.n_heads, n_inner=None, activation_function="gelu_new",
        layer_norm_epsilon=eps, tie_word_embeddings=False, attn_pdrop=0.0, embd_pdrop=0.0,
        resid_pdrop=0.0, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id, attn_implementation="eager",
    )  # type: ignore[call-arg]  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(config)
    bal = layout.index["balance"][0]
    wte, wpe = _embeddings(spec, layout, vocab, n_ctx)
    state = model.state_dict()  # buffers (if any) stay; every parameter starts at zero
    state.update({name: torch.zeros_like(p) for name, p in model.named_parameters()})
    state["transformer.wte.weight"], state["transformer.wpe.weight"] = wte, wpe
    for name in state:
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            state[name] = torch.full_like(state[name], math.sqrt(eps))
    scale = math.sqrt(settings.d_head)  # GPT-2 divides scores by sqrt(d_head)
    for layer, heads in enumerate(_heads(kind, layout, settings)):
        q = torch.cat([h.q * scale for h in heads], dim=1)
        k = torch.cat([h.k for h in heads], dim=1)
        v = torch.cat([h.v for h in heads], dim=1)
        o = torch.cat([h.o for h in heads], dim=0)
        state[f"transformer.h.{layer}.attn.c_attn.weight"] = torch.cat([q, k, v], dim=1)
        state[f"transformer.h.{layer}.attn.c_proj.weight"] = _balanced(o, bal)
    unembed = torch.zeros(len(vocab), layout.d_model)
    unembed[:, layout.index["const"][0]] = settings.other_logit
    for i in range(spec.n_label_words):
        row = vocab.index(f" L{i}")
        unembed[row, layout.index["const"][0]] = 0.0
        unembed[row, layout.index["out"][i]] = settings.logit_scale
    unembed[vocab.index(UNK_TOKEN), layout.index["probe"][0]] = 1.0
    state["lm_head.weight"] = unembed
    model.load_state_dict(state)
    return model.eval(), tokenizer


def write_planted_folder(folder: Path, kind: str) -> None:
    """Save the planted model ``kind`` (default sizes) as a Hugging Face checkpoint folder."""
    model, tokenizer = build_planted_model(kind)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (Path(folder) / "planted.json").write_text(
        json.dumps(
            {"kind": kind, "spec": DEFAULT_SPEC.__dict__, "settings": PlantedSettings().__dict__}
        )
    )


def writer(kind: str) -> Callable[[Path], None]:
    """``write_folder`` for :func:`~anchor_flow.models.loading.register_builtin_model`."""

    def write(folder: Path) -> None:
        write_planted_folder(folder, kind)

    return write


def construction_tag() -> str:
    """A fingerprint of the code that builds the planted models (keys their cache folder).

    Example:
        >>> len(construction_tag())
        12
    """
    import anchor_flow.testbeds.synthetic as synthetic

    digest = hashlib.sha256(Path(__file__).read_bytes() + Path(synthetic.__file__).read_bytes())
    return digest.hexdigest()[:12]
