"""Speed of Hidden_anchor compression (paper §3.2, Table 3; PAPER.md §5.4).

GPT-2-shaped models built from a config (random weights: speed does not depend on them) run
prompts with the paper's Table 3 lengths. Per (shape, task) it times, per query at batch 1
under ``torch.no_grad`` with logits at every position (as the paper's script):

* ``full``: the whole prompt (demonstrations + query);
* ``compressed``: the query against the pre-computed anchor cache, the one-time cache build
  excluded (the paper's measurement);
* ``amortised``: compressed plus the cache build spread over ``--amortise-over`` queries
  (default 1000, the paper's test subsample);

and prints full / compressed next to the paper's GPT2-XL speed-up and the FLOP-ideal ratio
(attention + MLP multiply-adds of the full prompt over those of the query with its cache).

Lengths (Δ Table 3 gives no units): L_demo = tokens of all demonstration texts, L_x = tokens
of the query text; each of the task's C demonstrations adds 8 formatting/label tokens
(``Review:`` 2, ``\\nSentiment:`` 4, label 1, ``\\n`` 1: what Hidden_anchor keeps) and the
query adds 6 (its ``Review:`` and ``\\nSentiment:``). Each shape runs in its own subprocess.

At batch 1 a forward of a few dozen tokens is bound by reading the weights (CPU, and GPU
too), which both runs pay once: the measured speed-up then stays below the FLOP-ideal
ratio. ``--batch 16`` (batched queries, which compressed contexts support) shows the
compute-bound regime where the measured speed-up approaches the ideal.

    python benchmarks/compression.py                          # small + medium on CPU
    python benchmarks/compression.py --device cuda --shapes xl   # the paper's GPT2-XL shape
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHAPES = {"small": (12, 768, 12), "medium": (24, 1024, 16), "xl": (48, 1600, 25)}
# task: (L_demo, L_x, classes, paper's GPT2-XL speed-up)
TASKS = {
    "sst2": (18, 19, 2, 1.1), "trec": (61, 7, 6, 1.5),
    "agnews": (151, 37, 4, 2.5), "emoc": (53, 12, 4, 1.4),
}  # fmt: skip
KEPT_PER_DEMO, QUERY_FORMAT = 8, 6


def lengths(task: str) -> tuple[int, int, int]:
    """(full prompt length, kept context positions, query length) of a task."""
    demo, query, classes, _ = TASKS[task]
    kept = KEPT_PER_DEMO * classes
    return demo + kept + query + QUERY_FORMAT, kept, query + QUERY_FORMAT


def ideal_ratio(shape: str, task: str) -> float:
    """Attention + MLP multiply-adds of the full prompt over the query's with its cache."""
    _, d_model, _ = SHAPES[shape]
    full, kept, query = lengths(task)

    def cost(new: int, past: int) -> float:
        linear = 12 * d_model * d_model * new  # QKV + output projection (4 d^2) + MLP (8 d^2)
        attention = 2 * d_model * sum(past + i + 1 for i in range(new))  # scores + mixing
        return linear + attention

    return cost(full, 0) / cost(query, kept)


def measure(
    shape: str, device: str, tl_class: str, repeats: int, warmup: int, batch: int
) -> list[dict]:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from anchor_flow.compression import compress_context, compressed_logits
    from anchor_flow.loading import from_hf_model
    from anchor_flow.tl_adapter import adapt

    n_layer, d_model, n_head = SHAPES[shape]
    torch.manual_seed(0)
    config = GPT2Config(n_layer=n_layer, n_embd=d_model, n_head=n_head, vocab_size=50257,
                        n_positions=1024, attn_implementation="eager")  # fmt: skip
    with torch.device(device):
        hf = GPT2LMHeadModel(config).eval()
    model = from_hf_model(hf, None, tl_class=tl_class)
    adapter = adapt(model.to(device))

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def timed(fn) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    rows = []
    generator = torch.Generator().manual_seed(0)
    for task in TASKS:
        full_len, kept_len, query_len = lengths(task)
        tokens = torch.randint(0, 50257, (1, full_len), generator=generator).to(device)
        tokens = tokens.expand(batch, -1).contiguous()
        context_len = full_len - query_len
        kept = torch.linspace(0, context_len - 1, kept_len).round().long().unique()
        query = tokens[:, context_len:]
        prefix = tokens[0, :context_len]
        with torch.no_grad():
            t_full = timed(lambda t=tokens: adapter.forward_logits(t))
            t_build = timed(lambda p=prefix, k=kept: compress_context(adapter, p, k))
            context = compress_context(adapter, prefix, kept)
            t_comp = timed(lambda c=context, q=query: compressed_logits(adapter, c, q))
        rows.append({"shape": shape, "task": task, "full_ms": 1e3 * t_full,
                     "compressed_ms": 1e3 * t_comp, "build_ms": 1e3 * t_build,
                     "device": device, "tl_class": adapter.kind})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=None, help="comma list of small,medium,xl")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tl-class", default="auto", choices=["auto", "hooked", "bridge"])
    parser.add_argument("--repeats", type=int, default=None, help="timed queries per cell")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1, help="queries per forward (paper: 1)")
    parser.add_argument("--amortise-over", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (CPU only)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch

        if args.device == "cpu":
            torch.set_num_threads(args.threads)
        tl_class = args.tl_class
        if tl_class == "auto":
            from anchor_flow.tl_adapter import hooked_transformer_class

            tl_class = "hooked" if hooked_transformer_class() is not None else "bridge"
        rows = measure(args.child, args.device, tl_class, args.repeats, args.warmup, args.batch)
        print(json.dumps(rows))
        return
    cuda = args.device.startswith("cuda")
    shapes = (args.shapes or ("xl" if cuda else "small,medium")).split(",")
    repeats = args.repeats or (30 if cuda else 10)
    rows = []
    for shape in shapes:
        command = [sys.executable, __file__, "--child", shape, "--device", args.device,
                   "--tl-class", args.tl_class, "--repeats", str(repeats),
                   "--warmup", str(args.warmup), "--threads", str(args.threads),
                   "--batch", str(args.batch)]  # fmt: skip
        out = subprocess.run(command, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            sys.exit(f"{shape}: measurement failed\n{out.stderr[-3000:]}")
        rows += json.loads(out.stdout.strip().splitlines()[-1])
    print(f"device={args.device} tl_class={rows[0]['tl_class']} repeats={repeats} "
          f"(median per forward, batch {args.batch}); "
          f"amortised over {args.amortise_over} queries")  # fmt: skip
    header = (f"{'shape':7} {'task':7} {'L_full':>6} {'kept':>4} {'L_q':>4} {'full ms':>8} "
              f"{'comp ms':>8} {'build ms':>8} {'speed-up':>8} {'amort.':>7} {'ideal':>6} "
              f"{'paper XL':>8} {'/ideal':>6}")  # fmt: skip
    print(header)
    for r in rows:
        full_len, kept, query = lengths(r["task"])
        speed = r["full_ms"] / r["compressed_ms"]
        amort = r["full_ms"] / (r["compressed_ms"] + r["build_ms"] / args.amortise_over)
        ideal = ideal_ratio(r["shape"], r["task"])
        print(f"{r['shape']:7} {r['task']:7} {full_len:6d} {kept:4d} {query:4d} "
              f"{r['full_ms']:8.2f} {r['compressed_ms']:8.2f} {r['build_ms']:8.2f} "
              f"{speed:7.2f}x {amort:6.2f}x {ideal:5.2f}x {TASKS[r['task']][3]:7.1f}x "
              f"{speed / ideal:6.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
