"""Cost of per-head flows (issue 24): one saliency pass with ``head_flows=True`` vs without.

Runs, on the shipped demo model (or ``--model``), the same prompts through ``run_saliency``
alternately with and without per-head flows, ``--repeats`` times each after one warm-up of
each, and prints the median wall times and their ratio (goal: at most 1.1 on the CPU for the
demo model). Then states the memory the per-head sums take: ``2 (signed, absolute) x layers x
heads x 27 fine groups x 4 bytes`` per prompt, for this model and for a GPT-2-XL shape (48
layers x 25 heads), next to what the layer sums take and what per-head *maps* would take at
a given prompt length (``--length``).

    python benchmarks/heads.py
    python benchmarks/heads.py --n-prompts 64 --repeats 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.3f} MiB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:.1f} KiB"


def memory_lines(name: str, layers: int, heads: int, length: int) -> list[str]:
    from anchor_flow.analysis.edges import FINE_GROUPS

    groups = len(FINE_GROUPS)
    head_sums = 2 * layers * heads * groups * 4
    layer_sums = layers * groups * 4
    head_maps = layers * heads * length * length * 4
    return [
        f"{name} ({layers} layers x {heads} heads, {groups} fine groups), per prompt:",
        f"  per-head sums (signed + absolute, float32): {_mib(head_sums)}",
        f"  per-layer sums (today's result):            {_mib(layer_sums)}",
        f"  per-head maps at T={length} (keep_head_maps): {_mib(head_maps)}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--task", default="demo-k3")
    parser.add_argument("--n-prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--length", type=int, default=512, help="T for the per-head maps line")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from anchor_flow import load_model, load_task_data, run_saliency, task_prompts
    from anchor_flow.icl.tasks import get_task
    from anchor_flow.models.tl_adapter import adapt

    model = load_model(args.model)
    task = get_task(args.task)
    data = load_task_data(task)
    prompts = task_prompts(task, data.train, data.test, seed=42, n_examples=args.n_prompts,
                           shots_per_class=1, scheme="per_example")  # fmt: skip

    def once(head_flows: bool) -> float:
        start = time.perf_counter()
        run_saliency(model, prompts, batch_size=args.batch_size, head_flows=head_flows,
                     label_token_policy=task.label_token_policy, progress=False)  # fmt: skip
        return time.perf_counter() - start

    once(False), once(True)  # warm-up
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeats):  # alternating, so drifts in machine load hit both alike
        for flag in (False, True):
            times[flag].append(once(flag))
    plain, heads = statistics.median(times[False]), statistics.median(times[True])
    adapter = adapt(model)
    print(f"model {args.model} ({adapter.n_layers} layers x {adapter.n_heads} heads), "
          f"{args.n_prompts} prompts of task {args.task}, batch {args.batch_size}, "
          f"{torch.get_num_threads()} thread(s), device {adapter.device}, "
          f"median of {args.repeats}")  # fmt: skip
    print(f"  saliency pass:                  {plain * 1000:8.1f} ms")
    print(f"  saliency pass + per-head flows: {heads * 1000:8.1f} ms")
    print(f"  ratio: {heads / plain:.3f} (goal <= 1.1)")
    for line in memory_lines(args.model, adapter.n_layers, adapter.n_heads, args.length):
        print(line)
    for line in memory_lines("GPT-2-XL shape", 48, 25, args.length):
        print(line)


if __name__ == "__main__":
    main()
