"""Cost of the saliency pass on models of the paper's shapes built from a config (random weights).

Shapes (``--shapes``): ``tiny`` (4 layers, d_model 256: quick CPU checks), ``small`` (GPT-2
small), ``xl`` (GPT2-XL: 48 layers, d_model 1600, the paper's model) and ``llama7b`` (Llama-2-7B:
d_model 4096, 32 heads, MLP 11008, vocab 32000, ``--llama-layers`` of its 32 layers).
Prints, per (shape, sequence length T, batch size B), the wall time of
  (a) a plain forward pass (full logits, no autograd),
  (b) a forward + backward pass with frozen parameters (graph from the embeddings, full
      logits, cross-entropy at the target) -- what any gradient method pays,
  (c) ``run_saliency`` (one forward + one backward, logits only at the target),
and the ratios (c)/(a) and (c)/(b) -- (b) is the floor of any gradient method -- plus the
peak memory of (b) and (c). On the CPU each measurement runs in a fresh subprocess so the
peak resident memory is its own; on CUDA one subprocess per shape runs every cell, with the
peak allocated memory reset between them.
Goals: (c)/(a) <= 1.8 at T=512 and peak(c) <= peak(b) (issue 2); (c)/(b) <= 1.15 at B=8 on the
GPU at the paper's shapes (issue 18).

    python benchmarks/saliency.py                 # small shape, T in {128, 512}, B in {1, 8}
    python benchmarks/saliency.py --shapes tiny --lengths 128 --batches 1,8 --repeats 3
    python benchmarks/saliency.py --device cuda --shapes xl,llama7b   # the paper's scale
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# name: (family, layers, d_model, heads, d_mlp, vocab)
SHAPES = {
    "tiny": ("gpt2", 4, 256, 4, 1024, 50257),
    "small": ("gpt2", 12, 768, 12, 3072, 50257),
    "xl": ("gpt2", 48, 1600, 25, 6400, 50257),
    "llama7b": ("llama", 32, 4096, 32, 11008, 32000),
}


def describe(shape: str, llama_layers: int) -> str:
    family, layers, width, heads, _, vocab = SHAPES[shape]
    layers = llama_layers if family == "llama" else layers
    return f"{shape}: {family}, {layers} layers, d_model {width}, {heads} heads, vocab {vocab}"


def build_model(tl_class: str, device: str, shape: str = "small", llama_layers: int = 8,
                dtype: str = "float32"):  # fmt: skip
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from anchor_flow.models.loading import from_hf_model
    from anchor_flow.testbeds.toy import build_toy_tokenizer

    torch.manual_seed(0)
    family, layers, width, heads, mlp, vocab = SHAPES[shape]
    if family == "gpt2":
        config = GPT2Config(
            n_layer=layers, n_head=heads, n_embd=width, n_inner=mlp, vocab_size=vocab,
            n_positions=1024, attn_implementation="eager",
        )  # fmt: skip
        cls = GPT2LMHeadModel
    else:
        config = LlamaConfig(
            num_hidden_layers=llama_layers, hidden_size=width, num_attention_heads=heads,
            num_key_value_heads=heads, intermediate_size=mlp, vocab_size=vocab,
            max_position_embeddings=4096, attn_implementation="eager",
        )  # fmt: skip
        cls = LlamaForCausalLM
    with torch.device(device):  # initialised where it runs: seconds, not minutes, for XL
        hf_model = cls(config).to(getattr(torch, dtype)).eval()
    # HookedTransformer needs some tokenizer offline (TL 3.9 fetches one from the hub
    # otherwise); the batches are token ids, so any tokenizer serves.
    return from_hf_model(hf_model, build_toy_tokenizer(), tl_class=tl_class).to(device)


def synthetic_batch(length: int, batch: int, vocab: int):
    """Right-padded prompts of exactly ``length`` tokens laid out like 2-class SST-2 ICL."""
    import torch

    from anchor_flow.icl.roles import PromptBatch, Role

    generator = torch.Generator().manual_seed(0)
    demo_text = max(1, (length - 4) // 4 - 7)  # two demos + query share the length
    roles, demo = [], []
    for d in range(3):
        segment = [Role.FORMAT] * 2 + [Role.TEXT] * demo_text + [Role.FORMAT] * 3
        if d < 2:
            segment += [Role.LABEL, Role.FORMAT]
        roles += segment
        demo += [d] * len(segment)
    while len(roles) < length:  # pad the query text to the exact length
        roles.insert(len(roles) - 3, Role.TEXT)
        demo.insert(len(demo) - 3, 2)
    roles[-1] = Role.TARGET
    label_rows = [i for i, r in enumerate(roles) if r == Role.LABEL]
    label_class = [-1] * length
    for c, i in enumerate(label_rows):
        label_class[i] = c
    row = lambda values: torch.tensor(values).repeat(batch, 1)  # noqa: E731
    return PromptBatch(
        tokens=torch.randint(0, vocab, (batch, length), generator=generator),
        roles=row([int(r) for r in roles]),
        demo_index=row(demo),
        label_class=row(label_class),
        target_position=torch.full((batch,), length - 1),
        label_token_ids=torch.tensor([[11, 12]]).repeat(batch, 1),
        gold=torch.zeros(batch, dtype=torch.long),
        str_tokens=tuple(tuple(f"t{i}" for i in range(length)) for _ in range(batch)),
    )


def measure(mode: str, length: int, batch: int, repeats: int, tl_class: str, device: str,
            model=None) -> dict:  # fmt: skip
    import torch

    from anchor_flow.analysis.saliency.measure import run_saliency
    from anchor_flow.models.guards import frozen
    from anchor_flow.models.tl_adapter import adapt

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    model = build_model(tl_class, device) if model is None else model
    adapter = adapt(model)
    prompts = synthetic_batch(length, batch, adapter.d_vocab)
    tokens = prompts.tokens.to(device)
    target = prompts.target_position.to(device)

    def plain() -> None:
        with torch.no_grad():
            adapter.forward_logits(tokens)

    def forward_backward() -> None:
        def leaf(embed, hook):
            return embed.detach().requires_grad_(True)

        with frozen(adapter), adapter.hooks(fwd_hooks=[("hook_embed", leaf)]):
            logits = adapter.forward_logits(tokens)
            final = logits[torch.arange(batch, device=device), target]
            label = final[:, prompts.label_token_ids[0].to(device)]
            torch.nn.functional.cross_entropy(
                label, prompts.gold.to(device), reduction="sum"
            ).backward()

    def saliency() -> None:
        run_saliency(model, prompts, batch_size=batch, progress=False)

    run = {"plain": plain, "forward_backward": forward_backward, "saliency": saliency}[mode]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    run()  # warm-up
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if device.startswith("cuda"):
        peak_gib = torch.cuda.max_memory_allocated() / 2**30
    return {"seconds": statistics.median(times), "peak_gib": peak_gib}


MODES = ("plain", "forward_backward", "saliency")


def _row(shape: str, length: int, batch: int, cells: dict) -> str:
    plain, fb, sal = cells["plain"], cells["forward_backward"], cells["saliency"]
    return (
        f"{shape:>8} {length:>5} {batch:>3} {plain['seconds']:>8.3f} {fb['seconds']:>10.3f} "
        f"{sal['seconds']:>11.3f} {sal['seconds'] / plain['seconds']:>8.2f} "
        f"{sal['seconds'] / fb['seconds']:>12.2f} {fb['peak_gib']:>17.2f} "
        f"{sal['peak_gib']:>13.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--shapes", default="small", help=f"comma list of {','.join(SHAPES)}")
    parser.add_argument("--lengths", default="128,512")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tl-class", default="auto", choices=["auto", "hooked", "bridge"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--llama-layers", type=int, default=8, help="layers of the llama7b shape")
    parser.add_argument("--one", nargs=4, metavar=("SHAPE", "MODE", "T", "B"),
                        help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument("--shape-cells", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    tl_class = args.tl_class
    if tl_class == "auto":
        from anchor_flow.models.tl_adapter import hooked_transformer_class

        tl_class = "hooked" if hooked_transformer_class() is not None else "bridge"
    lengths = [int(x) for x in args.lengths.split(",")]
    batches = [int(x) for x in args.batches.split(",")]
    if args.one:  # CPU: one measurement per process, for its own peak RSS
        shape, mode, length, batch = args.one[0], args.one[1], int(args.one[2]), int(args.one[3])
        model = build_model(tl_class, args.device, shape, args.llama_layers, args.dtype)
        result = measure(mode, length, batch, args.repeats, tl_class, args.device, model)
        print(json.dumps(result))
        return
    if args.shape_cells:  # CUDA: every cell of one shape in one process
        model = build_model(tl_class, args.device, args.shape_cells, args.llama_layers, args.dtype)
        for length in lengths:
            for batch in batches:
                cells = {mode: measure(mode, length, batch, args.repeats, tl_class, args.device,
                                       model) for mode in MODES}  # fmt: skip
                print(json.dumps({"T": length, "B": batch, "cells": cells}), flush=True)
        return

    from anchor_flow.models.tl_adapter import tl_version

    print(f"transformer-lens {tl_version()}, class {tl_class}, device {args.device}, "
          f"{args.dtype}, median of {args.repeats}")  # fmt: skip
    common = ["--repeats", str(args.repeats), "--tl-class", tl_class, "--device", args.device,
              "--dtype", args.dtype, "--llama-layers", str(args.llama_layers),
              "--lengths", args.lengths, "--batches", args.batches]  # fmt: skip
    header = (
        f"{'shape':>8} {'T':>5} {'B':>3} {'fwd s':>8} {'fwd+bwd s':>10} {'saliency s':>11} "
        f"{'sal/fwd':>8} {'sal/fwd+bwd':>12} {'peak fwd+bwd GiB':>17} {'peak sal GiB':>13}"
    )
    for shape in args.shapes.split(","):
        print(describe(shape, args.llama_layers))
        print(header, flush=True)
        if args.device.startswith("cuda"):
            command = [sys.executable, __file__, "--shape-cells", shape, *common]
            output = subprocess.run(command, capture_output=True, text=True, check=False)
            if output.returncode != 0:
                print(f"{shape}: failed\n{output.stderr[-3000:]}", flush=True)
                continue
            for line in output.stdout.strip().splitlines():
                if line.startswith("{"):
                    cell = json.loads(line)
                    print(_row(shape, cell["T"], cell["B"], cell["cells"]), flush=True)
            continue
        for length in lengths:
            for batch in batches:
                cells = {}
                for mode in MODES:
                    command = [sys.executable, __file__, "--one", shape, mode, str(length),
                               str(batch), *common]  # fmt: skip
                    output = subprocess.run(command, capture_output=True, text=True, check=True)
                    cells[mode] = json.loads(output.stdout.strip().splitlines()[-1])
                print(_row(shape, length, batch, cells), flush=True)


if __name__ == "__main__":
    main()
