"""Small things the package builds offline: a byte-level BPE tokenizer and a toy sentiment set.

No pretrained checkpoint or hub dataset can be fetched in CI, so the quick start and the tests
use a GPT-2-style byte-level BPE tokenizer trained here, deterministically, on a built-in
corpus that contains the paper's templates and label words (so ``" Positive"`` etc. are single
tokens, as in GPT-2). The toy sentiment sentences are for exercising the pipeline, not for
drawing scientific conclusions.
"""

from __future__ import annotations

import functools
import random

__all__ = ["TOY_NEGATIVE", "TOY_POSITIVE", "build_toy_tokenizer", "toy_sentiment_examples"]

TOY_POSITIVE: tuple[str, ...] = (
    "a wonderful and moving film",
    "the acting is superb and the story is warm",
    "an absolute delight from start to finish",
    "funny, clever and beautifully shot",
    "i loved every minute of it",
    "a charming movie with a great cast",
    "the best film of the year",
    "smart writing and a joyful score",
    "a touching story told with care",
    "brilliant performances all around",
    "an uplifting and heartfelt picture",
    "great fun for the whole family",
)
TOY_NEGATIVE: tuple[str, ...] = (
    "a dull and lifeless film",
    "the acting is wooden and the plot is a mess",
    "a tedious bore from start to finish",
    "clumsy, stupid and badly shot",
    "i hated every minute of it",
    "a tiresome movie with a weak cast",
    "the worst film of the year",
    "lazy writing and an annoying score",
    "a hollow story told without care",
    "awful performances all around",
    "a depressing and empty picture",
    "no fun for anyone at all",
)

# Templates and label words of the paper's four tasks (PAPER.md §0.3), so that they are
# single tokens for the toy tokenizer as they are for GPT-2 (except " Abbreviation").
_TEMPLATE_WORDS = (
    "Review: Sentiment: Negative Positive\n"
    "Article: Answer: World Sports Business Technology\n"
    "Question: Answer Type: Entity Description Person Location Number\n"
    "Dialogue: Emotion: Others Happy Sad Angry\n"
)

EOS_TOKEN = "<|endoftext|>"


@functools.lru_cache(maxsize=1)
def _trained_tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        min_frequency=1,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repetition makes the template words and label words win merges deterministically.
    corpus = [_TEMPLATE_WORDS] * 50 + list(TOY_POSITIVE) * 5 + list(TOY_NEGATIVE) * 5
    corpus += [f"Review: {s}\nSentiment: Positive" for s in TOY_POSITIVE]
    corpus += [f"Review: {s}\nSentiment: Negative" for s in TOY_NEGATIVE]
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return str(tokenizer.to_str())


def build_toy_tokenizer():  # -> transformers.PreTrainedTokenizerFast
    """A GPT-2-style byte-level BPE tokenizer (600 tokens), identical on every machine.

    Example:
        >>> tok = build_toy_tokenizer()
        >>> len(tok(" Positive")["input_ids"])
        1
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_tokenizer_json()),
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=1024,
    )


def toy_sentiment_examples(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """``n`` (text, label) pairs, label 0 = negative, 1 = positive, drawn with ``seed``."""
    rng = random.Random(seed)
    pool = [(s, 0) for s in TOY_NEGATIVE] + [(s, 1) for s in TOY_POSITIVE]
    return [rng.choice(pool) for _ in range(n)]
