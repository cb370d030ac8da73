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
from pathlib import Path

from anchor_flow.errors import PromptError
from anchor_flow.icl.prompts import Example, ICLPrompt, Template

__all__ = [
    "TOY_NEGATIVE",
    "TOY_POSITIVE",
    "build_toy_tokenizer",
    "toy_prompts",
    "toy_sentiment_data",
    "toy_sentiment_examples",
    "write_toy_gpt2_folder",
]

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


def toy_prompts(n: int, *, shots_per_class: int = 1, seed: int = 0) -> list[ICLPrompt]:
    """``n`` SST-2-style prompts over the offline toy sentences, reproducible from ``seed``.

    Like the paper's §2.1 code, each query gets its own demonstrations (``shots_per_class`` per
    class, never the query's own sentence), and one class order drawn per seed is used for all.

    Example:
        >>> toy_prompts(1)[0].text().endswith("\\nSentiment:")
        True
    """
    most = min(len(TOY_NEGATIVE), len(TOY_POSITIVE)) - 1  # the query's own sentence is excluded
    if n < 0 or not 1 <= shots_per_class <= most:
        raise PromptError(
            f"toy_prompts needs n >= 0 and 1 <= shots_per_class <= {most}, got n={n}, "
            f"shots_per_class={shots_per_class}"
        )
    pools = (TOY_NEGATIVE, TOY_POSITIVE)
    rng = random.Random(seed)
    order = [c for c in range(len(pools)) for _ in range(shots_per_class)]
    rng.shuffle(order)
    prompts = []
    for text, label in toy_sentiment_examples(n, seed=seed):
        draws = {
            c: rng.sample([s for s in pools[c] if s != text], shots_per_class) for c in range(2)
        }
        demos = tuple(Example(draws[c].pop(), c) for c in order)
        prompts.append(
            ICLPrompt(Template(), (" Negative", " Positive"), demos, Example(text, label))
        )
    return prompts


def write_toy_gpt2_folder(folder: Path) -> None:
    """Save ``toy-gpt2`` (4 layers, 4 heads, d_model 64, seeded random weights, the toy
    tokenizer) as a Hugging Face checkpoint folder."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = build_toy_tokenizer()
    config = GPT2Config(
        n_layer=4,
        n_head=4,
        n_embd=64,
        n_positions=256,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="eager",
    )  # type: ignore[call-arg]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def toy_sentiment_data() -> tuple[list[Example], list[Example]]:
    """The ``toy-sentiment`` task's train and test examples: all 24 toy sentences, both."""
    examples = [Example(t, 0) for t in TOY_NEGATIVE] + [Example(t, 1) for t in TOY_POSITIVE]
    return examples, examples
