"""A synthetic ICL classification task with a known solution (issue 4; paper §2 hypothesis).

Each prompt has K classes (2-4). Every class gets a random *topic* (``topic_size`` content
tokens, disjoint between the classes of one prompt) and a distinct label word drawn from a
pool, so the class -> label-word mapping is re-drawn per prompt and can only be read from the
demonstrations. A demonstration is ``Review: t1 .. tn\\nSentiment: LABEL\\n``; each text token
is from the class topic with probability ``topic_prob``, else uniform over all content tokens
(one token is weak evidence, the bag is strong). Demonstrations are class-balanced
(``shots_per_class`` per class) in shuffled order; the query ``Review: t1 .. tn\\nSentiment:``
comes from a random class, which is the gold label.

The task is written as ordinary :class:`~anchor_flow.icl.prompts.ICLPrompt` objects with the
paper's SST-2 template, so every experiment runs on it unchanged; it is registered as the
tasks ``synthetic-k2``, ``synthetic-k3``, ``synthetic-k4`` (:mod:`anchor_flow.icl.tasks`). Its
word-level tokenizer makes every piece one token, which fixes the prompt *layout*
(:func:`layout_of`): the planted models of :mod:`anchor_flow.testbeds.planted` rely on it.
:func:`bag_of_words_scores` is the Bayes-like reference rule (the class whose demonstrations
share most tokens with the query), which the planted models implement exactly.

Example:
    >>> prompts = synthetic_prompts(2, k=2, seed=0)
    >>> prompts[0].text().splitlines()[:2]
    ['Review: w11 w2 w22 w6 w3 w13', 'Sentiment: L2']

Deliberately not here: any model (:mod:`anchor_flow.testbeds.planted`), the task registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from anchor_flow.errors import AnchorFlowError
from anchor_flow.icl.prompts import Example, ICLPrompt, Template

__all__ = [
    "BOS_TOKEN",
    "DEFAULT_SPEC",
    "SYNTHETIC_TEMPLATE",
    "SyntheticError",
    "SyntheticSpec",
    "bag_of_words_accuracy",
    "bag_of_words_scores",
    "build_synthetic_tokenizer",
    "layout_of",
    "synthetic_prompts",
    "synthetic_vocabulary",
]

BOS_TOKEN = "<bos>"
UNK_TOKEN = "<unk>"
SYNTHETIC_TEMPLATE = Template(
    input_prefix="Review:", label_prefix="\nSentiment:", separator="\n", text_lead=" "
)
# Offsets inside one demonstration slot: PREFIX, n text tokens, "\n", "Sentiment:", LABEL, "\n".
FORMAT_TOKENS = ("Review:", "\n", "Sentiment:")


class SyntheticError(AnchorFlowError):
    """A synthetic-task size, class count or seed is out of range."""


@dataclass(frozen=True)
class SyntheticSpec:
    """Sizes of the synthetic task (and of the planted models' vocabulary and layout).

    Example:
        >>> SyntheticSpec(text_length=4).demonstration_length
        9

    Attributes:
        n_content: content tokens ``" w0"`` .. (the topics are drawn from them).
        n_label_words: label-word pool ``" L0"`` .. (each prompt draws K distinct ones).
        topic_size: content tokens per class topic (disjoint within a prompt).
        topic_prob: probability that a text token comes from its class topic.
        text_length: text tokens per demonstration and query (fixed: the layout needs it).
    """

    n_content: int = 24
    n_label_words: int = 8
    topic_size: int = 4
    topic_prob: float = 0.7
    text_length: int = 6

    def __post_init__(self) -> None:
        for name in ("n_content", "n_label_words", "topic_size", "text_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SyntheticError(f"SyntheticSpec.{name}={value!r}; expected an integer >= 1")
        if self.n_label_words < 2 or self.n_content < 2 * self.topic_size:
            raise SyntheticError(
                f"SyntheticSpec(n_content={self.n_content}, n_label_words={self.n_label_words}, "
                f"topic_size={self.topic_size}) cannot hold 2 classes; expected n_label_words "
                f">= 2 and n_content >= 2 * topic_size"
            )
        if not 0.0 <= self.topic_prob <= 1.0:
            raise SyntheticError(
                f"SyntheticSpec.topic_prob={self.topic_prob!r}; expected a probability in [0, 1]"
            )

    @property
    def demonstration_length(self) -> int:
        """Tokens per demonstration: prefix, text, ``\\n``, ``Sentiment:``, label, ``\\n``."""
        return self.text_length + 5

    @property
    def max_classes(self) -> int:
        """The largest K the sizes allow (distinct label words, disjoint topics)."""
        return min(self.n_label_words, self.n_content // self.topic_size)

    def check_classes(self, k: Any) -> int:
        """``k`` if it is a class count these sizes allow, else :class:`SyntheticError`."""
        if (
            isinstance(k, bool)
            or not isinstance(k, int | np.integer)
            or not 2 <= k <= (self.max_classes)
        ):
            raise SyntheticError(
                f"k={k!r} classes; expected an integer in 2..{self.max_classes} (n_label_words="
                f"{self.n_label_words}, n_content // topic_size = "
                f"{self.n_content // self.topic_size})"
            )
        return int(k)


DEFAULT_SPEC = SyntheticSpec()


def synthetic_vocabulary(spec: SyntheticSpec = DEFAULT_SPEC) -> list[str]:
    """Token strings by id: ``<bos>``, ``<unk>``, the format tokens, label words, content.

    Example:
        >>> synthetic_vocabulary()[:6]
        ['<bos>', '<unk>', 'Review:', '\\n', 'Sentiment:', ' L0']
    """
    return [
        BOS_TOKEN,
        UNK_TOKEN,
        *FORMAT_TOKENS,
        *(f" L{i}" for i in range(spec.n_label_words)),
        *(f" w{i}" for i in range(spec.n_content)),
    ]


def build_synthetic_tokenizer(spec: SyntheticSpec = DEFAULT_SPEC) -> Any:
    """A word-level tokenizer (``PreTrainedTokenizerFast``) for the synthetic task.

    Every piece (``"Review:"``, ``" w3"``, ``"\\n"``, ``"Sentiment:"``, ``" L2"``) is one
    token; ``add_special_tokens=True`` prepends ``<bos>`` (which is also the pad token).

    Example:
        >>> tok = build_synthetic_tokenizer()
        >>> tok.convert_ids_to_tokens(tok("Review: w3\\nSentiment: L2")["input_ids"])
        ['<bos>', 'Review:', ' w3', '\\n', 'Sentiment:', ' L2']
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(synthetic_vocabulary(spec))}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r" ?[^\s]+|\n"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()  # tokens carry their own spaces
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", special_tokens=[(BOS_TOKEN, vocab[BOS_TOKEN])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        unk_token=UNK_TOKEN,
        pad_token=BOS_TOKEN,
        clean_up_tokenization_spaces=False,
        model_max_length=1024,
    )


def layout_of(position: int, spec: SyntheticSpec = DEFAULT_SPEC) -> tuple[int, int]:
    """``(slot, offset)`` of a token position of a tokenized synthetic prompt (with BOS).

    Position 0 is ``<bos>``: ``(-1, -1)``. Position ``p >= 1`` lies in demonstration slot
    ``(p - 1) // L`` at offset ``(p - 1) % L``, ``L = text_length + 5``: offset 0 is
    ``Review:``, ``1..n`` the text, ``n + 1`` the ``\\n`` of the label prefix, ``n + 2``
    ``Sentiment:`` (the target in the query's slot), ``n + 3`` the label word, ``n + 4`` the
    separator ``\\n``. The query is the slot after the last demonstration.

    Example:
        >>> layout_of(0), layout_of(1), layout_of(12)
        ((-1, -1), (0, 0), (1, 0))
    """
    if isinstance(position, bool) or not isinstance(position, int) or position < 0:
        raise SyntheticError(f"position={position!r}; expected an integer >= 0")
    if position == 0:
        return (-1, -1)
    return divmod(position - 1, spec.demonstration_length)


def _text(rng: np.random.Generator, topic: np.ndarray, spec: SyntheticSpec) -> str:
    """``text_length`` tokens, each from ``topic`` with probability ``topic_prob``."""
    from_topic = rng.random(spec.text_length) < spec.topic_prob
    topical = rng.choice(topic, size=spec.text_length)
    uniform = rng.integers(spec.n_content, size=spec.text_length)
    return " ".join(f"w{t}" for t in np.where(from_topic, topical, uniform))


def _positive(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise SyntheticError(f"{name}={value!r}; expected an integer >= {minimum}")


def synthetic_prompts(
    n: int,
    *,
    k: int,
    shots_per_class: int = 1,
    seed: int,
    spec: SyntheticSpec = DEFAULT_SPEC,
) -> list[ICLPrompt]:
    """``n`` synthetic ICL prompts with ``k`` classes, identical on every machine for a seed.

    Example:
        >>> [p.query.label for p in synthetic_prompts(5, k=3, seed=1)]
        [2, 2, 0, 0, 0]

    Args:
        n: number of prompts (>= 0).
        k: classes per prompt, 2..``spec.max_classes`` (one batch needs one K).
        shots_per_class: demonstrations per class.
        seed: seed of the ``numpy.random.default_rng`` that draws everything.
        spec: the task's sizes.

    Raises:
        SyntheticError: a bad ``n``, ``k``, ``shots_per_class`` or ``seed``.
    """
    _positive("n", n, minimum=0)
    k = spec.check_classes(k)
    _positive("shots_per_class", shots_per_class)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise SyntheticError(f"seed={seed!r}; expected an integer >= 0 such as 42")
    rng = np.random.default_rng(seed)
    prompts = []
    for _ in range(n):
        content = rng.permutation(spec.n_content)
        topics = content[: k * spec.topic_size].reshape(k, spec.topic_size)
        words = rng.choice(spec.n_label_words, size=k, replace=False)
        order = rng.permutation(np.repeat(np.arange(k), shots_per_class))
        demonstrations = tuple(Example(_text(rng, topics[c], spec), int(c)) for c in order)
        query_label = int(rng.integers(k))
        prompts.append(
            ICLPrompt(
                SYNTHETIC_TEMPLATE,
                tuple(f" L{int(w)}" for w in words),
                demonstrations,
                Example(_text(rng, topics[query_label], spec), query_label),
            )
        )
    return prompts


def _bag(text: str, spec: SyntheticSpec) -> np.ndarray:
    counts = np.zeros(spec.n_content)
    for word in text.split():
        if not (word.startswith("w") and word[1:].isdigit() and int(word[1:]) < spec.n_content):
            raise SyntheticError(
                f"text token {word!r} is not a content token w0..w{spec.n_content - 1}; "
                "expected a prompt from synthetic_prompts"
            )
        counts[int(word[1:])] += 1
    return counts


def bag_of_words_scores(prompt: ICLPrompt, spec: SyntheticSpec = DEFAULT_SPEC) -> np.ndarray:
    """Per class, the query's bag of words dotted with the class's demonstrations' bags.

    The planted models compute exactly this overlap (normalised) in their last layer.

    Example:
        >>> bag_of_words_scores(synthetic_prompts(1, k=2, seed=0)[0]).tolist()
        [4.0, 4.0]
    """
    query = _bag(prompt.query.text, spec)
    scores = np.zeros(len(prompt.label_words))
    for demo in prompt.demonstrations:
        scores[int(demo.label)] += float(_bag(demo.text, spec) @ query)  # type: ignore[arg-type]
    return scores


def bag_of_words_accuracy(
    prompts: Sequence[ICLPrompt], spec: SyntheticSpec = DEFAULT_SPEC
) -> float:
    """Expected accuracy of the bag-of-words rule, ties broken uniformly at random.

    Example:
        >>> round(bag_of_words_accuracy(synthetic_prompts(200, k=2, seed=0)), 3)
        0.927
    """
    if len(prompts) == 0:
        raise SyntheticError("bag_of_words_accuracy got no prompts; expected at least one")
    credit = 0.0
    for prompt in prompts:
        if prompt.query.label is None:
            raise SyntheticError("bag_of_words_accuracy needs query labels; got query.label=None")
        scores = bag_of_words_scores(prompt, spec)
        best = np.flatnonzero(scores == scores.max())
        credit += float(prompt.query.label in best) / len(best)
    return credit / len(prompts)
