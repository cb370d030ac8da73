"""Train the shipped demo model (``load_model("demo")``) on the recipe-B ICL task.

Reproducible: one fixed seed per attempt, every setting written to ``training_settings.json``.
Gated: the checkpoint is written only if the mean held-out ICL accuracy over the six prompt
shapes reaches ``--gate`` (label-restricted argmax at the final ``:``, like ``run_icl``); a
failing seed is reported and the next ``--seeds`` entry is tried.

Usage (about 8-10 minutes on one CPU core)::

    python scripts/train_demo.py                       # writes src/anchor_flow/data/demo
    python scripts/train_demo.py --out /tmp/demo --steps 20 --layers 1 --no-gate   # smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from anchor_flow.testbeds.demo import (
    DEMO_FOLDER,
    DEMO_SHAPES,
    DemoTaskConfig,
    build_demo_tokenizer,
    episode_token_ids,
    sample_episode,
)

log = logging.getLogger("train_demo")

#: Evaluation episodes come from a seed space disjoint from training's.
EVAL_SEED_OFFSET = 1_000_003


@dataclasses.dataclass
class Settings:
    seed: int = 0
    steps: int = 10000
    batch_size: int = 32
    lr: float = 2e-3
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.01
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine to final_lr_fraction, or "flat_then_cosine"
    flat_steps: int = 0  # only for flat_then_cosine
    final_lr_fraction: float = 0.1
    grad_clip: float = 1.0
    lm_loss_weight: float = 0.5
    first_occurrence_weight: float = 1.0  # label loss weight where a class has no earlier demo
    init_from: str = ""  # fine-tune this checkpoint folder instead of a fresh initialisation
    layers: int = 6
    d_model: int = 64
    heads: int = 4
    d_mlp: int = 256
    max_positions: int = 128
    # TransformerLens' default 0.8 / sqrt(d_model) (recipe B's native model); HF's 0.02 stalls.
    initializer_range: float = 0.1
    eval_every: int = 500
    eval_per_shape: int = 256
    gate: float = 0.85
    threads: int = 1


def build_model(s: Settings, vocab_size: int, tokenizer: Any) -> Any:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(s.seed)
    if s.init_from:
        return GPTNeoXForCausalLM.from_pretrained(s.init_from)

    config = GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=s.d_model,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        intermediate_size=s.d_mlp,
        hidden_act="gelu",
        rotary_pct=1.0,
        max_position_embeddings=s.max_positions,
        initializer_range=s.initializer_range,
        use_parallel_residual=False,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attention_dropout=0.0,
        hidden_dropout=0.0,
    )  # type: ignore[call-arg]
    return GPTNeoXForCausalLM(config)


def batch(
    rng: random.Random, shape: tuple[int, int], size: int, task: DemoTaskConfig, first_weight: float
) -> tuple[Any, Any]:
    """Token ids with the query's answer appended, and the label-loss weight of every ":"."""
    episodes = [sample_episode(rng, shape[0], shape[1], task) for _ in range(size)]
    weights = []
    for e in episodes:
        seen: set[int] = set()
        row = []
        for c in e.demonstration_classes:
            row.append(1.0 if c in seen else first_weight)
            seen.add(c)
        weights.append([*row, 1.0])  # the query's class always has a demonstration
    return torch.tensor([episode_token_ids(e, task) for e in episodes]), torch.tensor(weights)


def lr_at(step: int, s: Settings) -> float:
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    start = s.warmup_steps if s.schedule == "cosine" else max(s.warmup_steps, s.flat_steps)
    if step < start:
        return s.lr
    progress = (step - start) / max(1, s.steps - start)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return s.lr * (s.final_lr_fraction + (1 - s.final_lr_fraction) * cosine)


def loss_fn(model: Any, tokens: Any, weights: Any, sep_id: int, lm_weight: float) -> Any:
    logits = model(tokens).logits[:, :-1]
    nxt = tokens[:, 1:]
    per_token = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), nxt.reshape(-1), reduction="none"
    )
    per_token = per_token.view_as(nxt)
    at_sep = tokens[:, :-1] == sep_id  # every ":" predicts a label word (demos and query)
    label_loss = (per_token[at_sep] * weights.flatten()).sum() / weights.sum()
    return label_loss + lm_weight * per_token.mean()


@torch.no_grad()
def evaluate(model: Any, s: Settings, task: DemoTaskConfig, per_shape: int) -> dict[str, float]:
    """Label-restricted accuracy at the query's ":" per shape (held-out seeds)."""
    model.eval()
    first_label = task.vocabulary().index("L0")
    result = {}
    for k, n in DEMO_SHAPES:
        rng = random.Random(EVAL_SEED_OFFSET + 1000 * k + n)
        episodes = [sample_episode(rng, k, n, task) for _ in range(per_shape)]
        tokens = torch.tensor([episode_token_ids(e, task, with_answer=False) for e in episodes])
        logits = model(tokens).logits[:, -1]
        words = torch.tensor([[first_label + i for i in e.label_word_indices] for e in episodes])
        predicted = logits.gather(1, words).argmax(-1)
        gold = torch.tensor([e.query_class for e in episodes])
        result[f"{k}x{n}"] = float((predicted == gold).float().mean())
    result["mean"] = sum(result.values()) / len(DEMO_SHAPES)
    model.train()
    return result


def train(s: Settings, task: DemoTaskConfig) -> tuple[Any, dict[str, Any]]:
    torch.set_num_threads(s.threads)
    tokenizer = build_demo_tokenizer(task)
    model = build_model(s, len(tokenizer), tokenizer)
    model.config._attn_implementation = "sdpa"  # training speed; saved/loaded as eager
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=s.lr, betas=s.betas, weight_decay=s.weight_decay
    )
    rng = random.Random(s.seed)
    sep_id = task.vocabulary().index(":")
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    model.train()
    for step in range(s.steps):
        for group in optimiser.param_groups:
            group["lr"] = lr_at(step, s)
        tokens, weights = batch(
            rng, rng.choice(DEMO_SHAPES), s.batch_size, task, s.first_occurrence_weight
        )
        loss = loss_fn(model, tokens, weights, sep_id, s.lm_loss_weight)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        optimiser.step()
        if (step + 1) % s.eval_every == 0 or step + 1 == s.steps:
            acc = evaluate(model, s, task, per_shape=64)
            history.append({"step": step + 1, "loss": loss.item(), **acc})
            log.info(
                "seed %d step %d loss %.3f eval-mean(64/shape) %.3f  %.0fs",
                s.seed,
                step + 1,
                loss.item(),
                acc["mean"],
                time.perf_counter() - start,
            )
    seconds = time.perf_counter() - start
    final = evaluate(model, s, task, per_shape=s.eval_per_shape)
    model.config._attn_implementation = "eager"
    return model, {"train_seconds": seconds, "held_out_accuracy": final, "history": history}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEMO_FOLDER)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--no-gate", action="store_true", help="write even below --gate")
    parser.add_argument(
        "--failed-dir", type=Path, help="save attempts below the gate here (never into --out)"
    )
    for field in dataclasses.fields(Settings):
        if field.name in ("seed", "betas"):
            continue
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(Settings)
        if f.name not in ("seed", "betas") and getattr(args, f.name) is not None
    }
    task = DemoTaskConfig()
    attempts = []
    for seed in args.seeds:
        settings = Settings(seed=seed, **overrides)
        model, report = train(settings, task)
        accuracy = report["held_out_accuracy"]
        attempts.append({"seed": seed, "train_seconds": report["train_seconds"], **accuracy})
        log.info("seed %d: held-out %s", seed, json.dumps(accuracy))
        if accuracy["mean"] >= settings.gate or args.no_gate:
            break
        if args.failed_dir is not None:
            write(args.failed_dir / f"seed{seed}", model, task, settings, report, attempts)
        log.warning(
            "seed %d: mean %.3f < gate %.2f; trying the next seed",
            seed,
            accuracy["mean"],
            settings.gate,
        )
    else:
        log.error("no seed reached the gate; nothing written")
        return 1
    write(args.out, model, task, settings, report, attempts)
    return 0


def write(
    out: Path,
    model: Any,
    task: DemoTaskConfig,
    s: Settings,
    report: dict[str, Any],
    attempts: list[dict[str, Any]],
) -> None:
    import transformers

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        build_demo_tokenizer(task).save_pretrained(tmp)
        record = {
            "script": "scripts/train_demo.py",
            "settings": dataclasses.asdict(s),
            "task": dataclasses.asdict(task),
            "shapes": [f"{k}x{n}" for k, n in DEMO_SHAPES],
            "eval_seed_offset": EVAL_SEED_OFFSET,
            "chance": {f"{k}x{n}": 1 / k for k, n in DEMO_SHAPES},
            "parameters": sum(p.numel() for p in model.parameters()),
            "attempts": attempts,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            **report,
        }
        if s.init_from:  # a fine-tune: keep the base checkpoint's own record
            base = Path(s.init_from) / "training_settings.json"
            record["base"] = json.loads(base.read_text()) if base.exists() else None
        (tmp / "training_settings.json").write_text(json.dumps(record, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote %s", out)


if __name__ == "__main__":
    raise SystemExit(main())
