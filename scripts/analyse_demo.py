"""Analysis behind docs/models.md: a demo checkpoint vs the same architecture at random init.

Usage: python scripts/analyse_demo.py src/anchor_flow/data/demo [N_PER_SHAPE]
"""

import json
import sys

import torch
from transformers import AutoConfig, GPTNeoXForCausalLM

torch.set_num_threads(1)
from anchor_flow import FINE_GROUPS, from_hf_model, load_model, run_icl, run_saliency  # noqa: E402
from anchor_flow.icl.prompts import tokenize_prompts  # noqa: E402
from anchor_flow.icl.roles import Role  # noqa: E402
from anchor_flow.models.tl_adapter import adapt  # noqa: E402
from anchor_flow.testbeds.demo import DEMO_SHAPES, build_demo_tokenizer, demo_prompts  # noqa: E402

folder = sys.argv[1]
N = int(sys.argv[2]) if len(sys.argv) > 2 else 256
SEED = 12345  # analysis prompts: a seed not used by the training script's evaluation


def models():
    trained = load_model(folder, tl_class="bridge")
    cfg = AutoConfig.from_pretrained(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        hf = GPTNeoXForCausalLM(cfg)
    hf.config._attn_implementation = "eager"
    rnd = from_hf_model(hf.eval(), build_demo_tokenizer(), tl_class="bridge")
    return {"trained": trained, "random": rnd}


def auc(scores, labels):
    scores, labels = torch.as_tensor(scores, dtype=torch.float64), torch.as_tensor(labels)
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).double().mean()
    ties = (pos[:, None] == neg[None, :]).double().mean()
    return float(greater + 0.5 * ties)


def isolation_hooks(adapter, layer, rows):
    """Zero attention from the given rows to every earlier position (keep the diagonal)."""
    pos = rows.shape[1]
    earlier = torch.tril(torch.ones(pos, pos, dtype=torch.bool), diagonal=-1)
    mask = rows[:, :, None] & earlier[None]  # [batch, q, k]

    def fn(pattern, hook):
        return pattern.masked_fill(mask[:, None].to(pattern.device), 0.0)

    return [(adapter.pattern_hook_name(layer), fn)]


def analyse(model, name):
    adapter = adapt(model)
    n_layers = len([1 for _ in range(100) if _try(adapter, _)])
    out = {
        "accuracy": {},
        "flows": [],
        "norm": [],
        "target_label": [],
        "target_other": [],
        "target_groups": [],
        "isolation": {},
        "auc": [],
    }
    gen = torch.Generator().manual_seed(0)
    auc_pairs = {layer: ([], []) for layer in range(n_layers)}
    iso = {}
    for k, n in DEMO_SHAPES:
        prompts = demo_prompts(N, k=k, shots_per_class=n, seed=SEED)
        batch = tokenize_prompts(prompts, model.tokenizer)
        base = run_icl(model, batch, batch_size=N, progress=False)
        out["accuracy"][f"{k}x{n}"] = base.accuracy()
        sal = run_saliency(model, batch, batch_size=64, progress=False)
        flow = sal.flows()
        out["flows"].append(flow.mean())
        gm = sal.group_sums.sum(0) / sal.group_counts.sum(0)[None]  # edge-weighted per layer
        tgt = [i for i, g in enumerate(FINE_GROUPS) if g.startswith("target <- ")]
        lab = [i for i in tgt if "<- label" in FINE_GROUPS[i]]
        oth = [i for i in tgt if i not in lab]
        out["target_label"].append(
            sal.group_sums[:, :, lab].sum((0, 2)) / sal.group_counts[:, lab].sum()
        )
        out["target_other"].append(
            sal.group_sums[:, :, oth].sum((0, 2)) / sal.group_counts[:, oth].sum()
        )
        out["target_groups"].append({FINE_GROUPS[i]: gm[:, i] for i in tgt})
        # attention capture for AUC
        store = {}

        def grab(pattern, hook, store=store):
            store[adapter.layer_of_hook(hook.name)] = pattern.detach().mean(1)  # heads mean

        hooks = [(adapter.pattern_hook_name(layer), grab) for layer in range(n_layers)]
        run_icl(model, batch, batch_size=N, progress=False, extra_hooks=hooks)
        pred = base.predictions
        rows = torch.arange(N)
        for layer in range(n_layers):
            att = store[layer][rows, batch.target_position]  # [batch, key]
            for c in range(k):
                at_c = (batch.label_class == c) & (batch.roles == Role.LABEL)
                score = (att * at_c).sum(-1)
                auc_pairs[layer][0].extend(score.tolist())
                auc_pairs[layer][1].extend((pred == c).long().tolist())
        # isolation: label rows vs random non-label rows (same count), first and last layer
        label_rows = batch.roles == Role.LABEL
        candidates = (
            (batch.roles != Role.LABEL)
            & (batch.roles != Role.BOS)
            & (batch.roles != Role.TARGET)
            & (batch.roles != Role.PAD)
        )
        random_rows = torch.zeros_like(label_rows)
        for i in range(N):
            cand = candidates[i].nonzero().flatten()
            pick = cand[torch.randperm(len(cand), generator=gen)[: int(label_rows[i].sum())]]
            random_rows[i, pick] = True
        for where, layer in (("first", 0), ("last", n_layers - 1)):
            for rows_name, rmask in (("label", label_rows), ("random", random_rows)):
                r = run_icl(
                    model,
                    batch,
                    batch_size=N,
                    progress=False,
                    extra_hooks=isolation_hooks(adapter, layer, rmask),
                )
                loyalty = float((r.predictions == base.predictions).double().mean())
                iso.setdefault(f"{where}/{rows_name}", []).append((loyalty, r.accuracy()))
    out["accuracy"]["mean"] = sum(out["accuracy"].values()) / len(DEMO_SHAPES)
    flows = torch.stack(out["flows"]).mean(0)  # [flow, layer], mean over shapes
    out["flows"] = flows
    out["norm"] = flows / flows.sum(0, keepdim=True)
    out["target_label"] = torch.stack(out["target_label"]).mean(0)
    out["target_other"] = torch.stack(out["target_other"]).mean(0)
    out["target_groups"] = {
        g: torch.stack([d[g] for d in out["target_groups"]]).nanmean(0)
        for g in out["target_groups"][0]
    }
    out["auc"] = [auc(*auc_pairs[layer]) for layer in range(n_layers)]
    out["isolation"] = {
        key: (sum(v[0] for v in vals) / len(vals), sum(v[1] for v in vals) / len(vals))
        for key, vals in iso.items()
    }
    return out


def _try(adapter, layer):
    try:
        adapter.pattern_hook_name(layer)
        return True
    except Exception:
        return False


def fmt(t):
    return " ".join(f"{float(x):.2e}" for x in t)


results = {}
for name, model in models().items():
    r = analyse(model, name)
    results[name] = r
    print(f"=== {name}")
    print("accuracy", json.dumps({k: round(v, 3) for k, v in r["accuracy"].items()}))
    for i, f in enumerate(("S_wp", "S_pq", "S_ww")):
        print(f"{f:5s} raw ", fmt(r["flows"][i]))
    for i, f in enumerate(("S_wp", "S_pq", "S_ww")):
        print(f"{f:5s} norm", " ".join(f"{float(x):.2f}" for x in r["norm"][i]))
    print("target<-label   ", fmt(r["target_label"]))
    print("target<-nonlabel", fmt(r["target_other"]))
    for g, v in r["target_groups"].items():
        print(f"  {g:32s}", fmt(v))
    print(
        "auc (target->label attn vs predicted class, one-vs-rest)",
        " ".join(f"{a:.3f}" for a in r["auc"]),
    )
    for key, (loy, acc) in r["isolation"].items():
        print(f"isolation {key:14s} loyalty {loy:.3f} accuracy {acc:.3f}")
torch.save(results, "/tmp/train_runs/analysis.pt")
