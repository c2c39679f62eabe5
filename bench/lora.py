"""
bench/lora.py: LoRA (lora.py) against full fine-tuning (sft.py) on the same base checkpoint, the
same SFT data, the same number of steps, batch, context and seed. Prints one table:
- trainable parameters (count and share of the base's);
- peak memory and time per training step, each variant measured in a fresh process on the same
  batch shape (CUDA: peak allocated; CPU: peak resident memory of the process, which includes
  torch itself: the difference between the two is what counts);
- best val loss on assistant tokens (step reached, steps run: early stopping);
- chrF of greedy answers on held-out items of the two tasks, and LoRA's share of full SFT's.

The full SFT run is bench/sft.py's (out/bench_sft): its settings are read back from its
checkpoint, so LoRA runs with exactly the same ones; it is run first when missing or older than
the base. It needs the base pre-trained on the shared corpus (see bench/sft.py):
    python bench/lora.py      # ~10-20 min on 2 cores (the LoRA run) + 3 min of step costs;
                              # reruns only what is stale (the SFT run too, if missing: as long again)
    python bench/lora.py --rank=3 --task_token_rows=24   # extra --key=value go to lora.py
    python bench/lora.py --sft_out=out/x --lora_out=out/y    # other run folders
"""
import json
import os
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from lora import add_lora, load_adapter  # noqa: E402
from model import load_checkpoint, model_from_checkpoint, sha256_of, training_precision  # noqa: E402

SFT_OUT, LORA_OUT = "out/bench_sft", "out/bench_lora"
# sft.py settings that LoRA must share to be comparable. The learning rate is not one of them:
# LoRA's is higher (12x bench/sft.py's 5e-4 here): only the low-rank directions move, B from zero.
SHARED = ["init_from", "sft_dataset", "batch_size", "block_size", "max_iters", "eval_interval", "eval_iters",
          "patience", "warmup_iters", "seed", "metric_items", "max_new_tokens"]
LORA = {"learning_rate": 6e-3, "min_lr": 6e-4, "rank": 2, "alpha": 10.0, "embedding_rank": 2,
        "targets": ["c_q", "c_k", "c_v", "c_proj", "c_fc"], "chat_token_rows": True, "task_token_rows": 195}


def measure(kind, base, batch_size, block_size, adapter_path, steps=6):
    """One variant's time per step and peak memory, in this (fresh) process; prints a JSON line.
    LoRA is set up as in the adapter file (rank, alpha, targets, token rows, embedding rank), with fresh weights."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model_from_checkpoint(load_checkpoint(base)).to(device)
    T = block_size or model.config.block_size
    if kind == "lora":
        a = load_adapter(adapter_path)
        add_lora(model, a["rank"], a["alpha"], a["targets"], token_ids=a.get("token_ids", ()),
                 embedding_rank=a.get("embedding_rank", 0))
    dtype, autocast, scaler = training_precision(device)  # as sft.py and lora.py train: their "auto"
    model.chunked_loss = device == "cpu" and dtype == "float32"  # as they train on a CPU
    opt = model.configure_optimizers(0.0, 1e-4, (0.9, 0.95), device)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, model.config.vocab_size, (batch_size, T + 1), generator=g).to(device)
    y = torch.where(torch.rand(batch_size, T, generator=g).to(device) < 0.3, x[:, 1:], -1)  # ~SFT's masking
    times = []
    for i in range(steps + 2):  # two warm-up steps (allocations, Adam state)
        t0 = time.time()
        with autocast:
            _, loss = model(x[:, :-1], y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.time() - t0)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(dict(sec_per_step=sorted(times[2:])[len(times[2:]) // 2], peak_mb=peak, device=f"{device} ({dtype})")))


def run(cmd):
    print("running:", " ".join(cmd), flush=True)
    if subprocess.run(cmd, cwd=ROOT).returncode:
        sys.exit(f"bench/lora.py: {cmd[1]} failed (see above)")


def step_cost(kind, base, s, adapter_path):
    out = subprocess.run([sys.executable, __file__, f"--measure={kind}", base, str(s["batch_size"]),
                          str(s["block_size"]), adapter_path], cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"bench/lora.py: measuring {kind} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith(("--sft_out=", "--lora_out=")))
    extra = [a for a in sys.argv[1:] if not a.startswith(("--sft_out=", "--lora_out="))]
    sft_out, lora_out = args.get("sft_out", SFT_OUT), args.get("lora_out", LORA_OUT)
    sft_ckpt, sft_metrics = (os.path.join(ROOT, sft_out, f) for f in ("best.pt", "metrics.json"))
    base = os.path.join(ROOT, "out", "darija_shared", "best.pt")
    if os.path.isfile(sft_ckpt):
        base = os.path.join(ROOT, load_checkpoint(sft_ckpt)["config"]["init_from"])
        base = os.path.join(base, "best.pt") if os.path.isdir(base) else base
    if not os.path.isfile(base):
        sys.exit(f"bench/lora.py: no base checkpoint at {base}: pre-train it first (see bench/sft.py)")
    if not os.path.isfile(sft_metrics) or os.path.getmtime(sft_metrics) < os.path.getmtime(base):
        print(f"{sft_out} is missing or older than the base {base}: running the full SFT first")
        run([sys.executable, "bench/sft.py", f"--out_dir={sft_out}"])
    s = load_checkpoint(sft_ckpt)["config"]
    # A LoRA run already made on this base with these settings is reused (re-printing is free).
    settings = {**{k: s[k] for k in SHARED}, **LORA}
    lora_metrics, adapter = (os.path.join(ROOT, lora_out, f) for f in ("metrics.json", "adapter.pt"))
    fresh = not extra and os.path.isfile(lora_metrics) and os.path.isfile(adapter)
    if fresh:
        with open(lora_metrics, encoding="utf-8") as f:
            done = load_adapter(adapter)["config"]
            fresh = json.load(f)["base_sha256"] == sha256_of(base) and all(done.get(k) == v for k, v in settings.items())
    if fresh:
        print(f"reusing {lora_out}: same base and settings (pass any lora.py setting to run it again)")
    else:
        lora_args = [f"--{k}={v}" if isinstance(v, str) else f"--{k}={v!r}" for k, v in settings.items()]
        run([sys.executable, "lora.py", *lora_args, f"--out_dir={lora_out}",
             "--sft_config=", "--force", *extra])

    with open(sft_metrics, encoding="utf-8") as f:
        full = json.load(f)
    with open(lora_metrics, encoding="utf-8") as f:
        lora = json.load(f)
    costs = {k: step_cost(k, lora["base"], s, adapter) for k in ("full", "lora")}
    n = lora["base_params"]
    dev = costs["full"]["device"]
    mem = "peak allocated" if dev.startswith("cuda") else "peak RSS"
    print(f"\nbase {lora['base']} ({n:,} parameters, sha256 {lora['base_sha256'][:12]}); data "
          f"data/sft/{lora['sft_dataset']}/ ({lora['train_examples']:,} train conversations); seed {lora['seed']}; "
          f"batch {s['batch_size']} x {s['block_size'] or 'full context'} tokens; up to {s['max_iters']} steps, "
          f"eval every {s['eval_interval']}, patience {s['patience']}; lr full {s['learning_rate']:g}, "
          f"LoRA {lora.get('learning_rate', '-')}; step costs on {dev}")
    rows, task_rows, emb_rank = (lora.get(k, 0) for k in ("token_rows", "task_token_rows", "embedding_rank"))
    print(f"| figure | full SFT | LoRA r={lora['rank']}, alpha={lora['alpha']:g} ({', '.join(lora['targets'])}"
          f"{f'; embedding rows of {rows - task_rows} chat + {task_rows} task tokens' if rows else ''}"
          f"{f'; embedding r={emb_rank}' if emb_rank else ''}) | LoRA / full |")
    print("|---|---|---|---|")
    print(f"| trainable parameters | {n:,} (100%) | {lora['trainable_params']:,} ({lora['trainable_pct']:.2f}%) | "
          f"{lora['trainable_pct']:.2f}% |")
    print(f"| {mem}, one training step | {costs['full']['peak_mb']:,.0f} MiB | {costs['lora']['peak_mb']:,.0f} MiB | "
          f"{costs['lora']['peak_mb'] / costs['full']['peak_mb']:.2f} |")
    print(f"| time per step (median of 6) | {1000 * costs['full']['sec_per_step']:,.0f} ms | "
          f"{1000 * costs['lora']['sec_per_step']:,.0f} ms | {costs['lora']['sec_per_step'] / costs['full']['sec_per_step']:.2f} |")
    print(f"| best val loss, assistant tokens (step / steps run) | {full['best_val_loss']:.3f} ({full['best_step']} / "
          f"{full['steps']}) | {lora['best_val_loss']:.3f} ({lora['best_step']} / {lora['steps']}) | |")
    for task, name in (("lat2ar", "Arabizi -> Arabic script"), ("dar2en", "Darija -> English")):
        if task in lora.get("lora", {}) and task in full.get("sft", {}):
            f_, l_ = full["sft"][task]["chrf"], lora["lora"][task]["chrf"]
            print(f"| chrF {name} ({lora['lora'][task]['items']} items; base few-shot "
                  f"{full['base'][task]['chrf']:.1f}) | {f_:.1f} | {l_:.1f} | {l_ / f_:.0%} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("--measure="):
        kind, base, batch, block, adapter_path = sys.argv[1].split("=", 1)[1], *sys.argv[2:]
        measure(kind, base, int(batch), int(block), adapter_path)
    else:
        main()
