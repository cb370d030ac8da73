"""Speed of Hidden_anchor compression (paper §3.2, Table 3; PAPER.md §5.4).

GPT-2-shaped models built from a config (random weights: speed does not depend on them) run
prompts with the paper's Table 3 lengths. Per (shape, task) it times, per query at batch 1
under ``torch.no_grad`` with logits at every position (as the paper's script), with
:func:`anchor_flow.applications.compression.speed.measure_token_speedup`:

* ``full``: the whole prompt (demonstrations + query);
* ``compressed``: the query against the pre-computed anchor cache, the one-time cache build
  excluded (the paper's measurement);
* ``amortised``: compressed plus the cache build spread over ``--amortise-over`` queries
  (default 1000, the paper's test subsample);
* ``floor``: the query tokens alone, without any context: no cache implementation can beat
  it on this hardware;

and prints full / compressed next to the paper's GPT2-XL speed-up, the FLOP-ideal ratio
(:func:`anchor_flow.applications.compression.speedup_result.flop_ideal_ratio`: attention + MLP
multiply-adds of the full prompt over those of the query with its cache), the floor ratio (full /
floor), the GEMM-bound ratio and the measured speed-up as a share of each (``/ideal``, ``/floor``,
``/gemm``).

The GEMM-bound ratio is what this machine's matrix multiply allows: the time of the
forward's matrix products alone (every layer's Q/K/V, output and MLP weights, and the
unembedding, in a skeleton with fresh weights of the model's shapes and nothing else) at the
full prompt's token count over that at the query's. Matrix products of a few dozen rows run
far below peak throughput (they are bound by reading the weights), so the GEMM-bound ratio
is below the FLOP-ideal one at batch 1: no implementation built on this machine's GEMMs can
exceed it, whatever its cache does.

Lengths (Δ Table 3 gives no units): L_demo = tokens of all demonstration texts, L_x = tokens
of the query text; each of the task's C demonstrations adds 8 formatting/label tokens
(``Review:`` 2, ``\\nSentiment:`` 4, label 1, ``\\n`` 1: what Hidden_anchor keeps) and the
query adds 6 (its ``Review:`` and ``\\nSentiment:``). Each shape runs in its own subprocess.

At batch 1 a forward of a few dozen tokens is bound by per-layer overheads and by reading
the weights (CPU, and GPU too), which both runs pay once: the measured speed-up then stays
near the floor ratio, below the FLOP-ideal one. ``--batch 16`` (batched queries, which
compressed contexts support) shows the compute-bound regime where it approaches the ideal.
``--profile TASK`` adds a torch.profiler and a cProfile summary of one compressed query and
one full forward of that task.

``--engine fast`` times all three runs hook-free (a bridge's own Hugging Face modules,
:class:`anchor_flow.models.fast_forward.FastForward`), ``--cuda-graphs`` replays them from CUDA
graphs (CUDA only). Every run first prints the CPU-checkable proxy of per-module overhead:
Python module calls (``nn.Module`` forwards, counted with a global forward pre-hook) per
batch-1 compressed query and per full forward, on the ``cache`` path and the ``fast`` path.

    python benchmarks/compression.py                          # small + medium on CPU
    python benchmarks/compression.py --device cuda --shapes xl   # the paper's GPT2-XL shape
    python benchmarks/compression.py --shapes small --engine fast --repeats 3  # hook-free
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHAPES = {
    "tiny": (4, 256, 4), "small": (12, 768, 12), "medium": (24, 1024, 16), "xl": (48, 1600, 25),
}  # fmt: skip
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


def build(shape: str, device: str, tl_class: str):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from anchor_flow.models.loading import from_hf_model
    from anchor_flow.models.tl_adapter import adapt

    n_layer, d_model, n_head = SHAPES[shape]
    torch.manual_seed(0)
    config = GPT2Config(n_layer=n_layer, n_embd=d_model, n_head=n_head, vocab_size=50257,
                        n_positions=1024, attn_implementation="eager")  # fmt: skip
    with torch.device(device):
        hf = GPT2LMHeadModel(config).eval()
    return adapt(from_hf_model(hf, None, tl_class=tl_class).to(device))


def task_tokens(task: str, batch: int, generator):
    """(context tokens, kept positions, queries [batch, L_q]) of a task, random ids."""
    import torch

    full_len, kept_len, query_len = lengths(task)
    tokens = torch.randint(0, 50257, (full_len,), generator=generator)
    context_len = full_len - query_len
    kept = torch.linspace(0, context_len - 1, kept_len).round().long().unique()
    return tokens[:context_len], kept, tokens[context_len:].expand(batch, -1).contiguous()


def measure(
    adapter,
    shape: str,
    device: str,
    repeats: int,
    warmup: int,
    batch: int,
    amortise_over: int,
    engine: str = "cache",
    cuda_graphs: bool = False,
) -> list[dict]:
    import torch

    from anchor_flow.applications.compression.speed import measure_token_speedup
    from anchor_flow.applications.compression.speedup_result import SpeedupResult

    generator = torch.Generator().manual_seed(0)
    results = []
    for task, (_, _, classes, _) in TASKS.items():
        context, kept, queries = task_tokens(task, batch, generator)
        results.append(measure_token_speedup(
            adapter, context, kept, queries, name=task, n_demonstrations=classes,
            batch_size=batch, repeats=repeats, warmup=warmup, amortise_over=amortise_over,
            engine=engine, cuda_graphs=cuda_graphs,
        ))  # fmt: skip
    rows = SpeedupResult.concat(results).summary()["rows"]
    gemm_ms = gemm_skeleton(shape, device)
    for row in rows:
        full_len, _, query_len = lengths(row["group"])
        row["gemm_ideal"] = gemm_ms(full_len * batch) / gemm_ms(query_len * batch)
        row["of_gemm"] = row["speedup"] / row["gemm_ideal"]
    return [{**row, "shape": shape, "device": device, "tl_class": adapter.kind} for row in rows]


def module_calls(adapter, device: str, task: str = "trec") -> None:
    """Print nn.Module forward calls per batch-1 compressed query and full forward, per path."""
    import torch

    from anchor_flow.applications.compression.cache import compress_context, compressed_logits
    from anchor_flow.models.fast_forward import FastForward

    context, kept, queries = task_tokens(task, 1, torch.Generator().manual_seed(0))
    context, queries = context.to(device), queries[:1].to(device)
    full = torch.cat([context[None], queries], dim=1)
    calls = [0]

    def count(module, args):
        calls[0] += 1

    def counted(run) -> int:
        calls[0] = 0
        handle = torch.nn.modules.module.register_module_forward_pre_hook(count)
        try:
            run()
        finally:
            handle.remove()
        return calls[0]

    with torch.no_grad():
        fast = FastForward(adapter)
        cache = compress_context(adapter, context, kept)
        runs = {
            "compressed query": (lambda: compressed_logits(adapter, cache, queries),
                                 lambda: compressed_logits(adapter, cache, queries, fast=fast)),
            "full forward": (lambda: adapter.forward_logits(full), lambda: fast.logits(full)),
        }  # fmt: skip
        for name, (old, new) in runs.items():
            print(f"== Python module calls per {name} ({task} lengths, batch 1, "
                  f"{adapter.n_layers} layers, {adapter.kind}): cache path {counted(old)}, "
                  f"fast path {counted(new)}")  # fmt: skip


def gemm_skeleton(shape: str, device: str):
    """A function of a token count: median ms of the model's matrix products alone."""
    import torch

    n_layer, d_model, _ = SHAPES[shape]
    generator = torch.Generator().manual_seed(0)
    shapes = [(d_model, 3 * d_model), (d_model, d_model), (d_model, 4 * d_model),
              (4 * d_model, d_model)]  # fmt: skip
    layers = [[torch.randn(*s, generator=generator).to(device) for s in shapes]
              for _ in range(n_layer)]  # fmt: skip
    unembed = torch.randn(d_model, 50257, generator=generator).to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def forward(x):
        for w_qkv, w_out, w_in, w_mlp_out in layers:
            x = x + (x @ w_qkv)[:, :d_model] @ w_out
            x = x + (x @ w_in) @ w_mlp_out
        return x @ unembed

    def median_ms(tokens: int, repeats: int = 10) -> float:
        x = torch.randn(tokens, d_model, generator=generator).to(device)
        times = []
        with torch.no_grad():
            for i in range(repeats + 2):
                sync()
                start = time.perf_counter()
                forward(x)
                sync()
                if i >= 2:
                    times.append((time.perf_counter() - start) * 1e3)
        return sorted(times)[len(times) // 2]

    return median_ms


def profile(adapter, shape: str, device: str, task: str) -> None:
    """torch.profiler and cProfile summaries of one compressed query vs one full forward."""
    import cProfile
    import io
    import pstats

    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from anchor_flow.applications.compression.cache import compress_context, compressed_logits

    context, kept, queries = task_tokens(task, 1, torch.Generator().manual_seed(0))
    context, queries = context.to(device), queries.to(device)
    full = torch.cat([context[None], queries], dim=1)
    activities = [ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(ProfilerActivity.CUDA)
    with torch.no_grad():
        # A silently empty cache (transformers >= 5.24 with TL 4.3) would be fast and wrong.
        every = compress_context(adapter, context, torch.arange(len(context)))
        delta = (
            compressed_logits(adapter, every, queries)
            - adapter.forward_logits(full)[:, len(context) :]
        )
        print(f"== check: keep-all compressed vs full query logits, max |diff| = "
              f"{delta.abs().max().item():.2e} (float rounding expected; a large value means "
              "the cache was ignored)")  # fmt: skip

        def empty_hook_block() -> None:
            with adapter.hooks():
                pass

        overheads = {"adapter.device": lambda: adapter.device,
                     "empty adapter.hooks() block": empty_hook_block}  # fmt: skip
        for name, call in overheads.items():
            start = time.perf_counter()
            for _ in range(5):
                call()
            print(f"== Python overhead: {name}: {(time.perf_counter() - start) / 5 * 1e3:.2f} "
                  "ms per call")  # fmt: skip
        cache = compress_context(adapter, context, kept)
        runs = {"full forward": lambda: adapter.forward_logits(full),
                "compressed query": lambda: compressed_logits(adapter, cache, queries)}  # fmt: skip
        for _ in range(3):
            for run in runs.values():
                run()
        sort = "device_time_total" if device.startswith("cuda") else "self_cpu_time_total"
        for name, run in runs.items():
            with torch_profile(activities=activities) as prof:
                run()
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
            print(f"== torch.profiler: {shape} {task} batch 1, one {name}")
            try:
                print(prof.key_averages().table(sort_by=sort, row_limit=20))
            except (KeyError, AttributeError, ValueError):  # older torch: cuda_time_total
                print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20))
            python = cProfile.Profile()
            python.enable()
            run()
            python.disable()
            text = io.StringIO()
            pstats.Stats(python, stream=text).sort_stats("cumulative").print_stats(25)
            print(f"== cProfile (Python time): {shape} {task} batch 1, one {name}")
            print(text.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=None, help="comma list of tiny,small,medium,xl")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tl-class", default="auto", choices=["auto", "hooked", "bridge"])
    parser.add_argument("--repeats", type=int, default=None, help="timed queries per cell")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1, help="queries per forward (paper: 1)")
    parser.add_argument("--amortise-over", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (CPU only)")
    parser.add_argument(
        "--engine",
        default="cache",
        choices=["cache", "fast"],
        help="cache: the TL model; fast: hook-free (FastForward)",
    )
    parser.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="with --engine fast on CUDA: replay CUDA graphs (not yet run on a GPU)",
    )
    parser.add_argument(
        "--profile", default=None, choices=list(TASKS),
        help="also profile one batch-1 compressed query and one full forward of this task",
    )  # fmt: skip
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch

        if args.device == "cpu":
            torch.set_num_threads(args.threads)
        tl_class = args.tl_class
        if tl_class == "auto":
            from anchor_flow.models.tl_adapter import hooked_transformer_class

            tl_class = "hooked" if hooked_transformer_class() is not None else "bridge"
        adapter = build(args.child, args.device, tl_class)
        module_calls(adapter, args.device)
        if args.profile:
            profile(adapter, args.child, args.device, args.profile)
        rows = measure(adapter, args.child, args.device, args.repeats, args.warmup, args.batch,
                       args.amortise_over, args.engine, args.cuda_graphs)  # fmt: skip
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
                   "--batch", str(args.batch), "--amortise-over", str(args.amortise_over),
                   "--engine", args.engine, *(["--cuda-graphs"] if args.cuda_graphs else []),
                   *(["--profile", args.profile] if args.profile else [])]  # fmt: skip
        out = subprocess.run(command, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            sys.exit(f"{shape}: measurement failed\n{out.stderr[-3000:]}")
        *profiles, last = out.stdout.strip().splitlines()
        print("\n".join(profiles))
        rows += json.loads(last)
    print(f"device={args.device} tl_class={rows[0]['tl_class']} engine={args.engine}"
          f"{' +cuda-graphs' if args.cuda_graphs else ''} repeats={repeats} "
          f"(median per forward, batch {args.batch}); "
          f"amortised over {args.amortise_over} queries")  # fmt: skip
    header = (f"{'shape':7} {'task':7} {'L_full':>6} {'kept':>4} {'L_q':>4} {'full ms':>8} "
              f"{'comp ms':>8} {'build ms':>8} {'floor ms':>8} {'speed-up':>8} {'amort.':>7} "
              f"{'ideal':>6} {'floor':>6} {'gemm':>6} {'paper XL':>8} {'/ideal':>6} {'/floor':>6} "
              f"{'/gemm':>6}")  # fmt: skip
    print(header)
    for r in rows:
        full_len, kept, query = lengths(r["group"])
        per_forward = {k: r[k] * args.batch for k in ("full_ms", "compressed_ms", "floor_ms")}
        print(f"{r['shape']:7} {r['group']:7} {full_len:6d} {kept:4d} {query:4d} "
              f"{per_forward['full_ms']:8.2f} {per_forward['compressed_ms']:8.2f} "
              f"{r['build_ms']:8.2f} {per_forward['floor_ms']:8.2f} {r['speedup']:7.2f}x "
              f"{r['amortised_speedup']:6.2f}x {r['flop_ideal']:5.2f}x "
              f"{r['floor_ratio']:5.2f}x {r['gemm_ideal']:5.2f}x {TASKS[r['group']][3]:7.1f}x "
              f"{r['of_ideal']:6.2f} {r['of_floor']:6.2f} {r['of_gemm']:6.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
