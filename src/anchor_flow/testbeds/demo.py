"""The trained demo model's synthetic ICL task, its word-level tokenizer and its shipped folder.

The task is TOY_NOTES' "recipe B": per prompt, K classes each get a random prototype of two
content tokens (disjoint within the prompt) and a random label word from a pool of 16, so the
class -> label-word mapping must be read from the demonstrations. A demonstration is three
content tokens (each from its class prototype with probability 0.9, else uniform), then
``:`` and the label word, demonstrations joined by ``\\n``::

    <bos> w22 w3 w26 : L5
    w20 w20 w20 : L2
    w20 w13 w13 :          -> L2

As anchor_flow prompts this is ``Template.from_format("{text} :{label}")`` (an empty input
prefix) with label words ``" L5"``; the word-level tokenizer ignores spaces, so the tokens are
exactly recipe B's. The checkpoint itself is trained by ``scripts/train_demo.py`` and shipped
in ``anchor_flow/data/demo``; :func:`write_demo_folder` copies it (no training at load time).

Deliberately not here: training (the script), evaluation and analysis (the library's own
``run_icl`` / ``run_saliency``).
"""

from __future__ import annotations

import functools
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anchor_flow.errors import ModelLoadError, PromptError
from anchor_flow.icl.prompts import Example, ICLPrompt, Template

__all__ = [
    "DEMO_FOLDER",
    "DEMO_SHAPES",
    "DEMO_TEMPLATE",
    "DemoEpisode",
    "DemoTaskConfig",
    "build_demo_tokenizer",
    "demo_prompts",
    "episode_token_ids",
    "sample_episode",
    "write_demo_folder",
]

DEMO_FOLDER = Path(__file__).parents[1] / "data" / "demo"
DEMO_TEMPLATE = Template(input_prefix="", label_prefix=" :", separator="\n", text_lead="")
#: (classes K, demonstrations per class) of recipe B; one shape per batch.
DEMO_SHAPES: tuple[tuple[int, int], ...] = ((2, 1), (2, 2), (2, 3), (3, 1), (3, 2), (4, 1))

BOS, PAD, UNK, SEP, NEWLINE = "<bos>", "<pad>", "<unk>", ":", "\n"


@dataclass(frozen=True)
class DemoTaskConfig:
    """The synthetic task's sizes (recipe B's defaults)."""

    n_content: int = 32
    n_label_words: int = 16
    prototype_length: int = 2
    text_length: int = 3
    prototype_probability: float = 0.9

    def content_words(self) -> tuple[str, ...]:
        return tuple(f"w{i}" for i in range(self.n_content))

    def label_words(self) -> tuple[str, ...]:
        return tuple(f"L{i}" for i in range(self.n_label_words))

    def vocabulary(self) -> tuple[str, ...]:
        """Token strings in id order: specials, ``:``, ``\\n``, label words, content words."""
        return (BOS, PAD, UNK, SEP, NEWLINE, *self.label_words(), *self.content_words())


@dataclass(frozen=True)
class DemoEpisode:
    """One prompt of the task as indices: content tokens per text, class per demonstration,
    the pool index of each class's label word, and the query."""

    label_word_indices: tuple[int, ...]
    demonstration_texts: tuple[tuple[int, ...], ...]
    demonstration_classes: tuple[int, ...]
    query_text: tuple[int, ...]
    query_class: int


def sample_episode(
    rng: random.Random, k: int, shots_per_class: int, task: DemoTaskConfig = DemoTaskConfig()
) -> DemoEpisode:
    """Draw one prompt: prototypes, label words, a class-balanced shuffled order, a query.

    Example:
        >>> episode = sample_episode(random.Random(0), k=2, shots_per_class=1)
        >>> len(episode.demonstration_texts), len(episode.query_text)
        (2, 3)
    """
    if not 2 <= k <= task.n_label_words or k * task.prototype_length > task.n_content:
        raise PromptError(
            f"k={k} classes does not fit the demo task ({task.n_label_words} label words, "
            f"{task.n_content} content tokens, prototypes of {task.prototype_length})"
        )
    if shots_per_class < 1:
        raise PromptError(f"shots_per_class={shots_per_class}; expected >= 1")
    drawn = rng.sample(range(task.n_content), k * task.prototype_length)
    m = task.prototype_length
    prototypes = [drawn[c * m : (c + 1) * m] for c in range(k)]
    label_words = tuple(rng.sample(range(task.n_label_words), k))

    def text(c: int) -> tuple[int, ...]:
        return tuple(
            rng.choice(prototypes[c])
            if rng.random() < task.prototype_probability
            else rng.randrange(task.n_content)
            for _ in range(task.text_length)
        )

    order = [c for c in range(k) for _ in range(shots_per_class)]
    rng.shuffle(order)
    texts = tuple(text(c) for c in order)
    query_class = rng.randrange(k)
    return DemoEpisode(label_words, texts, tuple(order), text(query_class), query_class)


def episode_token_ids(
    episode: DemoEpisode, task: DemoTaskConfig = DemoTaskConfig(), *, with_answer: bool = True
) -> list[int]:
    """Token ids of the episode, ``<bos>`` first; ``with_answer`` appends the query's label
    word (for training). Equal to the tokenizer's ids of the corresponding ICLPrompt."""
    vocab = {word: i for i, word in enumerate(task.vocabulary())}
    first_label, first_content = vocab["L0"], vocab["w0"]
    ids = [vocab[BOS]]
    for text, c in zip(episode.demonstration_texts, episode.demonstration_classes, strict=True):
        ids += [first_content + t for t in text]
        ids += [vocab[SEP], first_label + episode.label_word_indices[c], vocab[NEWLINE]]
    ids += [first_content + t for t in episode.query_text] + [vocab[SEP]]
    if with_answer:
        ids.append(first_label + episode.label_word_indices[episode.query_class])
    return ids


def episode_prompt(episode: DemoEpisode) -> ICLPrompt:
    """The episode as an anchor_flow prompt (template :data:`DEMO_TEMPLATE`)."""

    def words(text: Sequence[int]) -> str:
        return " ".join(f"w{t}" for t in text)

    return ICLPrompt(
        DEMO_TEMPLATE,
        tuple(f" L{i}" for i in episode.label_word_indices),
        tuple(
            Example(words(t), c)
            for t, c in zip(episode.demonstration_texts, episode.demonstration_classes, strict=True)
        ),
        Example(words(episode.query_text), episode.query_class),
    )


def demo_prompts(n: int, *, k: int = 2, shots_per_class: int = 1, seed: int = 0) -> list[ICLPrompt]:
    """``n`` prompts of the demo task with ``k`` classes, reproducible from ``seed``.

    The RNG is seeded with a string of ``seed``, ``k`` and ``shots_per_class``, a stream
    separate from the integer-seeded streams of ``scripts/train_demo.py`` (training and its
    gate evaluation), so these prompts are held out.

    Example:
        >>> print(demo_prompts(1, k=2, seed=0)[0].text())
        w25 w25 w1 : L13
        w23 w4 w4 : L8
        w1 w25 w1 :
    """
    if n < 0:
        raise PromptError(f"demo_prompts needs n >= 0, got n={n}")
    rng = random.Random(f"demo-prompts/{seed}/{k}/{shots_per_class}")
    return [episode_prompt(sample_episode(rng, k, shots_per_class)) for _ in range(n)]


@functools.lru_cache(maxsize=4)
def _tokenizer_json(task: DemoTaskConfig) -> str:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors

    vocab = {word: i for i, word in enumerate(task.vocabulary())}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Words are runs of non-space characters; "\n" is a token; spaces are dropped.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(" ", behavior="removed"),
            pre_tokenizers.Split(Regex(r"\n"), behavior="isolated"),
        ]
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return str(tokenizer.to_str())


def build_demo_tokenizer(task: DemoTaskConfig = DemoTaskConfig()) -> Any:
    """The demo model's word-level tokenizer (``PreTrainedTokenizerFast``; BOS prepended).

    Example:
        >>> tok = build_demo_tokenizer()
        >>> tok.convert_ids_to_tokens(tok("w1 w2 : L3\\nw4")["input_ids"])
        ['<bos>', 'w1', 'w2', ':', 'L3', '\\n', 'w4']
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(task)),
        bos_token=BOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=128,
        padding_side="right",
    )


def write_demo_folder(folder: Path) -> None:
    """Copy the shipped demo checkpoint (trained by ``scripts/train_demo.py``) into ``folder``.

    Raises:
        ModelLoadError: the package was installed without its ``data/demo`` folder.
    """
    if not (DEMO_FOLDER / "config.json").exists():
        raise ModelLoadError(
            f"the demo checkpoint is missing from {DEMO_FOLDER}; reinstall anchor-flow or "
            "run scripts/train_demo.py"
        )
    for path in DEMO_FOLDER.iterdir():
        if path.is_file():
            shutil.copy2(path, Path(folder) / path.name)
