"""Peak memory of the saliency pass against sequence length, ``memory="keep"`` vs ``"recompute"``.

Issue 17 item 4. A Llama-shaped stack (rotary, RMSNorm, gated MLP; random weights, a few
layers) runs ``run_saliency`` on one synthetic SST-2-shaped prompt of exactly T tokens per
point, with the default ``memory="keep"`` (every layer's attention pattern stays alive from
the forward to the backward) and with ``memory="recompute"`` (each block is re-run in the
backward; see ``anchor_flow.models.recompute``).

Shapes (``--shape``): ``llama7b`` (Llama-2-7B: d_model 4096, 32 heads, MLP 11008, vocab 32000;
``--layers`` of its 32 layers: for CUDA, bf16) and ``llama-small`` (d_model 256, 2 heads of
d_head 128 as Llama's, so that pattern bytes per residual byte, ``h*T/d_model = T/128``, are
Llama-7B's; MLP 688, vocab 32000: for the CPU, float32, because CPUs without AVX512-BF16
emulate bf16 arithmetic slowly).

Peak memory, per point:
  * CUDA: ``torch.cuda.max_memory_allocated()`` during the call minus the bytes allocated
    before it (the weights), all points in one process;
  * CPU: the peak of torch's CPU allocator during the call above its level at the start,
    from ``torch.profiler``'s allocation events (``profile_memory=True``: every allocation
    and free, summed in time order; exact for torch tensors, blind to Python objects), in a
    fresh process per point; and, as a cross-check, the peak resident set size
    (``ru_maxrss``) of that process minus its resident size just before the call.
Time: one call after a warm-up at T=64 (CPU) or 512 (CUDA), without the profiler: wall
seconds on CUDA, this process's CPU seconds on the CPU (robust to other jobs on a shared machine).

The breakdown (``memory="keep"``, one more call per T): the bytes autograd saves for the
backward (unique storages, via ``torch.autograd.graph.saved_tensors_hooks``) and how many of
them are ``[..., T, T]`` attention tensors; the bytes of patterns kept only by the saliency
hooks (not also saved by autograd); the hooks' edge-group tensors (``[batch, T, T]``, int64 and
bool, from their dtypes); and
``B*h*T^2*L`` bytes of the model's dtype for comparison.

    python benchmarks/saliency_memory.py                                    # CPU, a few minutes
    python benchmarks/saliency_memory.py --device cuda --shape llama7b --layers 4 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# name: (d_model, heads, d_mlp, vocab)
SHAPES = {"llama7b": (4096, 32, 11008, 32000), "llama-small": (256, 2, 688, 32000)}
MODES = ("keep", "recompute")
GIB = 2**30


def build_model(shape: str, layers: int, device: str, dtype: str, tl_class: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from anchor_flow.models.loading import from_hf_model
    from anchor_flow.testbeds.toy import build_toy_tokenizer

    width, heads, mlp, vocab = SHAPES[shape]
    config = LlamaConfig(
        num_hidden_layers=layers, hidden_size=width, num_attention_heads=heads,
        num_key_value_heads=heads, intermediate_size=mlp, vocab_size=vocab,
        max_position_embeddings=4096, attn_implementation="eager",
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs
        hf_model = LlamaForCausalLM(config).to(getattr(torch, dtype)).eval()
    # HookedTransformer needs some tokenizer offline; the prompts are token ids anyway.
    return from_hf_model(hf_model, build_toy_tokenizer(), tl_class=tl_class).to(device)


def prompt(length: int, vocab: int):
    from saliency import synthetic_batch  # benchmarks/saliency.py, the same prompt layout

    return synthetic_batch(length, 1, vocab)


def _saliency(model, batch, memory: str):
    from anchor_flow.analysis.saliency.measure import run_saliency

    return run_saliency(model, batch, batch_size=len(batch), memory=memory, progress=False)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_allocator_peak(fn) -> int:
    """Peak bytes held by torch's CPU allocator during ``fn()``, above the level at its start."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    level = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        level += event.nbytes()
        peak = max(peak, level)
    return peak


def breakdown(model, batch) -> dict:
    """What the keep mode holds for the backward (see the module docstring)."""
    import torch

    from anchor_flow.models.tl_adapter import adapt, model_parameters

    adapter = adapt(model)
    length = batch.tokens.shape[1]
    saved: dict[int, tuple[int, bool]] = {}
    patterns: dict[int, int] = {}
    # Weights saved for the backward (x @ W saves W) cost nothing extra: leave them out.
    weights = {p.untyped_storage().data_ptr() for p in model_parameters(model)}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() in weights:
            return tensor
        square = tensor.dim() >= 2 and tuple(tensor.shape[-2:]) == (length, length)
        saved[storage.data_ptr()] = (storage.nbytes(), square)
        return tensor

    def see(pattern, hook):
        storage = pattern.untyped_storage()
        patterns[storage.data_ptr()] = storage.nbytes()

    from anchor_flow.analysis.saliency.measure import run_saliency

    see_hooks = [(adapter.pattern_hook_name(layer), see) for layer in range(adapter.n_layers)]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run_saliency(model, batch, memory="keep", progress=False, extra_hooks=see_hooks)
    element = torch.finfo(adapter.dtype).bits // 8
    return {
        "saved": sum(n for n, _ in saved.values()),
        "saved_square": sum(n for n, square in saved.values() if square),
        "hooks_only": sum(n for ptr, n in patterns.items() if ptr not in saved),
        "groups": len(batch) * length * length * (8 + 1),  # the hooks' int64 index, bool mask
        "h_s2_l": len(batch) * adapter.n_heads * length**2 * adapter.n_layers * element,
    }


def measure(model, batch, memory: str, device: str) -> dict:
    """One timed call (peak RSS on the CPU, peak allocated on CUDA), one profiled (CPU)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        _saliency(model, batch, memory)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "peak": torch.cuda.max_memory_allocated() - base}
    rss_before = _rss_bytes()
    start = time.process_time()
    _saliency(model, batch, memory)
    seconds = time.process_time() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    peak = cpu_allocator_peak(lambda: _saliency(model, batch, memory))
    return {"seconds": seconds, "peak": peak, "rss": rss}


def _point(args, model, length: int, memory: str) -> dict:
    batch = prompt(length, SHAPES[args.shape][3])
    cell = measure(model, batch, memory, args.device)
    if memory == "keep" and not args.no_breakdown:
        cell.update(breakdown(model, batch))
    return cell


def _equal_check(model, vocab: int, length: int) -> float:
    batch = prompt(length, vocab)
    keep = _saliency(model, batch, "keep").group_sums
    recompute = _saliency(model, batch, "recompute").group_sums
    return float((keep - recompute).abs().max() / keep.abs().max())


def _gib(value: float) -> str:
    return f"{value / GIB:.3f}"


def header(cpu: bool) -> str:
    text = (f"{'T':>5} {'h*T^2*L GiB':>11} {'saved GiB':>9} {'[T,T] saved':>11} "
            f"{'hooks-only':>10} {'groups':>6} | {'peak keep':>9} {'peak recomp':>11} "
            f"{'keep/recomp':>11} | {'s keep':>7} {'s recomp':>8} {'time x':>6}")  # fmt: skip
    return text + (f" | {'RSS keep':>8} {'RSS recomp':>10}" if cpu else "")


def row(length: int, keep: dict, recompute: dict, cpu: bool) -> str:
    known = "h_s2_l" in keep

    def col(key: str, width: int) -> str:
        return f"{_gib(keep[key]) if known else '-':>{width}}"

    text = (
        f"{length:>5} {col('h_s2_l', 11)} {col('saved', 9)} {col('saved_square', 11)} "
        f"{col('hooks_only', 10)} {col('groups', 6)} | {_gib(keep['peak']):>9} "
        f"{_gib(recompute['peak']):>11} {keep['peak'] / recompute['peak']:>11.2f} | "
        f"{keep['seconds']:>7.2f} {recompute['seconds']:>8.2f} "
        f"{recompute['seconds'] / keep['seconds']:>6.2f}"
    )
    if cpu:
        text += f" | {_gib(keep['rss']):>8} {_gib(recompute['rss']):>10}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--shape", default=None, choices=list(SHAPES),
                        help="default: llama7b on CUDA, llama-small on the CPU")  # fmt: skip
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--lengths", default="512,1024,2048,4096")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                        help="default: bfloat16 on CUDA, float32 on the CPU")  # fmt: skip
    parser.add_argument("--tl-class", default="auto", choices=["auto", "hooked", "bridge"])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch)")
    parser.add_argument("--no-breakdown", action="store_true")
    parser.add_argument("--one", nargs=2, metavar=("T", "MEMORY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    args.shape = args.shape or ("llama7b" if cuda else "llama-small")
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    if args.tl_class == "auto":
        from anchor_flow.models.tl_adapter import hooked_transformer_class

        args.tl_class = "hooked" if hooked_transformer_class() is not None else "bridge"
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    lengths = [int(x) for x in args.lengths.split(",")]
    vocab = SHAPES[args.shape][3]
    if args.one:  # CPU: one point per process, for its own peak RSS
        model = build_model(args.shape, args.layers, args.device, args.dtype, args.tl_class)
        _saliency(model, prompt(64, vocab), args.one[1])  # warm-up
        print(json.dumps(_point(args, model, int(args.one[0]), args.one[1])))
        return

    from anchor_flow.models.tl_adapter import tl_version

    width, heads, mlp, _ = SHAPES[args.shape]
    print(f"transformer-lens {tl_version()}, torch {torch.__version__}, class {args.tl_class}, "
          f"device {args.device}, {args.dtype}, {torch.get_num_threads()} threads")  # fmt: skip
    print(f"{args.shape}: Llama, {args.layers} layers, d_model {width}, {heads} heads, MLP {mlp}, "
          f"vocab {vocab}; batch 1")  # fmt: skip
    print("peak = torch " + ("CUDA allocated" if cuda else "CPU allocator")
          + " bytes above the level before the call; GiB = 2^30 bytes")  # fmt: skip
    if cuda:
        model = build_model(args.shape, args.layers, args.device, args.dtype, args.tl_class)
        for memory in MODES:
            _saliency(model, prompt(512, vocab), memory)  # warm-up
        print(f"recompute vs keep at T={lengths[0]}: relative max |d group sums| = "
              f"{_equal_check(model, vocab, lengths[0]):.2e}", flush=True)  # fmt: skip
        print(header(cpu=False), flush=True)
        for length in lengths:
            keep, recompute = (_point(args, model, length, memory) for memory in MODES)
            print(row(length, keep, recompute, cpu=False), flush=True)
        return
    common = ["--shape", args.shape, "--layers", str(args.layers), "--device", args.device,
              "--dtype", args.dtype, "--tl-class", args.tl_class]  # fmt: skip
    if args.threads:
        common += ["--threads", str(args.threads)]
    if args.no_breakdown:
        common.append("--no-breakdown")
    print(header(cpu=True), flush=True)
    for length in lengths:
        cells = []
        for memory in MODES:
            command = [sys.executable, __file__, "--one", str(length), memory, *common]
            output = subprocess.run(command, capture_output=True, text=True, check=False)
            if output.returncode != 0:
                sys.exit(f"T={length} {memory}: failed\n{output.stderr[-3000:]}")
            cells.append(json.loads(output.stdout.strip().splitlines()[-1]))
        print(row(length, *cells, cpu=True), flush=True)


if __name__ == "__main__":
    main()
