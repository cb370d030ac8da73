"""The whole paper for one task: ``run_experiments`` with the paper's protocol, timed.

A random-weight GPT-2-shaped model (speed does not depend on the weights) with the offline toy
byte-level BPE tokenizer runs every experiment of ``anchor-flow run`` (saliency, isolation,
deep layers, re-weighting, compression with its Table-3 speed cells, diagnosis) on SST-2-shaped
synthetic text: the task ``sst2`` (its template and label words) read from a local folder of
generated reviews, each about 19 tokens long (the paper's Table 3 length L_x for SST-2).
Prints the wall time of each experiment and in total, test prompts per second (the seeds'
prompts over the total time) and the peak memory (CUDA: allocated; CPU: resident).

Settings (``--setting``):

* ``paper`` (the GPU measurement): the GPT2-XL shape (48 layers, d_model 1600), 1000 test
  prompts x 5 seeds, every experiment, the library's defaults (batch 8, 20 Hidden_random-top
  trials, 10 re-weighting epochs). Goal (issue 18): at most 15 minutes on one H200.
* ``quick`` (CPU checks, a minute or two): the ``tiny`` shape (4 layers, d_model 256, the toy
  tokenizer's 600-token vocabulary), 4 prompts x 1 seed, 2 re-weighting epochs, 2
  Hidden_random-top trials, 2 speed queries, 3 diagnosis components.

Each flag overrides its setting's value. The results folder is a fresh temporary one unless
``--out`` is given.

    python benchmarks/protocol.py                                   # quick, CPU
    python benchmarks/protocol.py --setting paper --device cuda     # the paper's scale
    python benchmarks/protocol.py --setting paper --device cuda --n-examples 100 --seeds 42
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# name: (layers, d_model, heads, vocab); tiny has the toy tokenizer's vocabulary
SHAPES = {"tiny": (4, 256, 4, 600), "small": (12, 768, 12, 50257), "xl": (48, 1600, 25, 50257)}
SETTINGS = {
    "paper": {"shape": "xl", "n_examples": 1000, "seeds": "42,43,44,45,46", "batch_size": 8,
              "reweighting_epochs": 10, "top_trials": 20, "speed_queries": 8, "n_components": 10,
              "device": "cuda"},
    "quick": {"shape": "tiny", "n_examples": 4, "seeds": "42", "batch_size": 8,
              "reweighting_epochs": 2, "top_trials": 2, "speed_queries": 2, "n_components": 3,
              "device": "cpu"},
}  # fmt: skip
QUERY_TOKENS = 19  # SST-2's L_x in the paper's Table 3


def write_sst2_folder(folder: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """SST-2-shaped synthetic reviews (``sentence``, ``label``) as train/test JSONL files."""
    from anchor_flow.testbeds.toy import TOY_NEGATIVE, TOY_POSITIVE, build_toy_tokenizer

    tokenizer = build_toy_tokenizer()
    words = [sorted({w for s in phrases for w in s.replace(",", "").split()})
             for phrases in (TOY_NEGATIVE, TOY_POSITIVE)]  # fmt: skip
    rng = random.Random(seed)

    def review(label: int) -> str:
        text: list[str] = []
        while len(tokenizer(" " + " ".join(text))["input_ids"]) < QUERY_TOKENS:
            text.append(rng.choice(words[label]))
        return " ".join(text)

    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n_train), ("test", n_test)):
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as handle:
            for i in range(count):
                label = i % 2
                handle.write(json.dumps({"sentence": review(label), "label": label}) + "\n")


def build(shape: str, device: str, dtype: str):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from anchor_flow.models.loading import from_hf_model
    from anchor_flow.models.tl_adapter import hooked_transformer_class
    from anchor_flow.testbeds.toy import build_toy_tokenizer

    n_layer, d_model, n_head, vocab = SHAPES[shape]
    torch.manual_seed(0)
    config = GPT2Config(n_layer=n_layer, n_embd=d_model, n_head=n_head, vocab_size=vocab,
                        n_positions=1024, attn_implementation="eager", bos_token_id=0,
                        eos_token_id=0, pad_token_id=0)  # fmt: skip
    with torch.device(device):  # initialised where it runs: seconds, not minutes, for XL
        hf_model = GPT2LMHeadModel(config).to(getattr(torch, dtype)).eval()
    tl_class = "hooked" if hooked_transformer_class() is not None else "bridge"
    return from_hf_model(hf_model, build_toy_tokenizer(), tl_class=tl_class).to(device)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--setting", default="quick", choices=list(SETTINGS))
    parser.add_argument("--shape", choices=list(SHAPES), default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--n-examples", type=int, default=None, help="test prompts per seed")
    parser.add_argument("--seeds", default=None, help="comma list (paper: 42,43,44,45,46)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--reweighting-epochs", type=int, default=None)
    parser.add_argument("--top-trials", type=int, default=None)
    parser.add_argument("--speed-queries", type=int, default=None)
    parser.add_argument("--n-components", type=int, default=None, help="diagnosis PCA (<= prompts)")
    parser.add_argument("--experiments", default=None, help="comma list (default: every one)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (CPU only)")
    parser.add_argument("--out", default=None, help="results folder (default: a temporary one)")
    args = parser.parse_args()
    chosen = {**SETTINGS[args.setting]}
    for key in chosen:
        value = getattr(args, key, None)
        if value is not None:
            chosen[key] = value

    import torch

    from anchor_flow.run.config import EXPERIMENTS, RunConfig
    from anchor_flow.run.pipeline import run_experiments

    device = chosen["device"]
    if device == "cpu":
        torch.set_num_threads(args.threads)
    seeds = tuple(int(s) for s in str(chosen["seeds"]).split(","))
    experiments = tuple(args.experiments.split(",")) if args.experiments else EXPERIMENTS
    config = RunConfig(
        task="sst2", seeds=seeds, n_examples=chosen["n_examples"],
        batch_size=chosen["batch_size"], experiments=experiments,
        reweighting_epochs=chosen["reweighting_epochs"], top_trials=chosen["top_trials"],
        speed_queries=chosen["speed_queries"], n_components=chosen["n_components"],
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = Path(scratch) / "sst2"
        write_sst2_folder(data_dir, n_train=max(200, 2 * config.n_examples),
                          n_test=config.n_examples)  # fmt: skip
        config = RunConfig(**{**config.__dict__, "data_dir": str(data_dir)})
        start = time.perf_counter()
        model = build(chosen["shape"], device, args.dtype)
        build_s = time.perf_counter() - start
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        marks: list[tuple[float, str]] = []
        out = Path(args.out) if args.out else Path(scratch) / "run"
        start = time.perf_counter()

        def mark(line: str) -> None:
            marks.append((time.perf_counter(), line))
            print(f"[{marks[-1][0] - start:7.1f} s] {line}", flush=True)

        run_experiments(model, out, config, progress=False, restart=True, on_event=mark)
        total_s = time.perf_counter() - start
    started = {line.split(":")[0]: t for t, line in marks if line.endswith(": running")}
    finished = {line.split(":")[0]: t for t, line in marks if ": done in" in line}
    # The step's own seconds, as run_experiments reports them (the wall time also holds writing
    # results.json and re-rendering report.html after the step).
    own = {line.split(":")[0]: float(line.split("done in ")[1].split()[0])
           for _, line in marks if ": done in" in line}  # fmt: skip
    if device.startswith("cuda"):
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB allocated (CUDA)"
    else:
        peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB resident"
    n_prompts = config.n_examples * len(seeds)
    n_layer, d_model, _, _ = SHAPES[chosen["shape"]]
    print(f"setting={args.setting} shape={chosen['shape']} ({n_layer} layers, d_model {d_model}) "
          f"device={device} {args.dtype} task=sst2 (synthetic, L_x~{QUERY_TOKENS}) "
          f"test prompts={config.n_examples} x {len(seeds)} seeds, batch {config.batch_size}, "
          f"re-weighting epochs {config.reweighting_epochs}, top trials {config.top_trials}, "
          f"model build {build_s:.1f} s")  # fmt: skip
    print(f"{'experiment':12} {'wall s':>9} {'step s':>9} {'share':>6}")
    for name in experiments:
        seconds = finished.get(name, float("nan")) - started.get(name, float("nan"))
        step = own.get(name, float("nan"))
        print(f"{name:12} {seconds:9.1f} {step:9.1f} {seconds / total_s:6.1%}")
    print(f"{'total':12} {total_s:9.1f} {sum(own.values()):9.1f} {1:6.1%}")
    print(f"prompts per second: {n_prompts / total_s:.2f} ({n_prompts} test prompts, every "
          f"experiment); peak memory: {peak}")  # fmt: skip


if __name__ == "__main__":
    main()
