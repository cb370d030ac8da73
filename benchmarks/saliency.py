"""Cost of the saliency pass on a GPT-2-small-shaped model built from a config.

Prints, per (sequence length T, batch size B), the wall time of
  (a) a plain forward pass (full logits, no autograd),
  (b) a forward + backward pass with frozen parameters (graph from the embeddings, full
      logits, cross-entropy at the target) -- what any gradient method pays,
  (c) ``run_saliency`` (one forward + one backward, logits only at the target),
and the ratios (c)/(a) and (c)/(b), plus the peak resident memory of (b) and (c). Each
measurement runs in a fresh subprocess so the peak memory is its own.
Goal (issue 2): (c)/(a) <= 1.8 at T=512 and peak(c) <= peak(b).

    python benchmarks/saliency.py                 # T in {128, 512}, B in {1, 8}
    python benchmarks/saliency.py --lengths 128 --batches 1 --repeats 1   # quick look
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


def build_model(tl_class: str, device: str):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from anchor_flow.models.loading import from_hf_model

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=12, n_head=12, n_embd=768, vocab_size=50257, n_positions=1024,
        attn_implementation="eager",
    )  # fmt: skip
    model = from_hf_model(GPT2LMHeadModel(config).eval(), None, tl_class=tl_class)
    return model.to(device)


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


def measure(mode: str, length: int, batch: int, repeats: int, tl_class: str, device: str) -> dict:
    import torch

    from anchor_flow.analysis.saliency.measure import run_saliency
    from anchor_flow.models.guards import frozen
    from anchor_flow.models.tl_adapter import adapt

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    model = build_model(tl_class, device)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="128,512")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tl-class", default="auto", choices=["auto", "hooked", "bridge"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", nargs=3, metavar=("MODE", "T", "B"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        mode, length, batch = args.one[0], int(args.one[1]), int(args.one[2])
        result = measure(mode, length, batch, args.repeats, args.tl_class, args.device)
        print(json.dumps(result))
        return

    from anchor_flow.models.tl_adapter import tl_version

    print(f"transformer-lens {tl_version()}, class {args.tl_class}, device {args.device}")
    print("GPT-2-small shape (12 layers, d_model 768, vocab 50257), median of", args.repeats)
    header = (
        f"{'T':>5} {'B':>3} {'fwd s':>8} {'fwd+bwd s':>10} {'saliency s':>11} "
        f"{'sal/fwd':>8} {'sal/fwd+bwd':>12} {'peak fwd+bwd GiB':>17} {'peak sal GiB':>13}"
    )
    print(header)
    for length in [int(x) for x in args.lengths.split(",")]:
        for batch in [int(x) for x in args.batches.split(",")]:
            cells = {}
            for mode in ("plain", "forward_backward", "saliency"):
                command = [
                    sys.executable, __file__, "--one", mode, str(length), str(batch),
                    "--repeats", str(args.repeats), "--tl-class", args.tl_class,
                    "--device", args.device,
                ]  # fmt: skip
                output = subprocess.run(command, capture_output=True, text=True, check=True)
                cells[mode] = json.loads(output.stdout.strip().splitlines()[-1])
            plain, fb, sal = cells["plain"], cells["forward_backward"], cells["saliency"]
            print(
                f"{length:>5} {batch:>3} {plain['seconds']:>8.3f} {fb['seconds']:>10.3f} "
                f"{sal['seconds']:>11.3f} {sal['seconds'] / plain['seconds']:>8.2f} "
                f"{sal['seconds'] / fb['seconds']:>12.2f} {fb['peak_gib']:>17.2f} "
                f"{sal['peak_gib']:>13.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
