"""
pretrain.py: pre-train the GPT of model.py on data/NAME/{train,val}.bin (written by prepare.py).

    python pretrain.py config/darija_small.py                     # one process (CPU, one GPU, MPS)
    python pretrain.py config/darija_small.py --init_from=resume  # continue out/NAME/last.pt exactly
    torchrun --standalone --nproc_per_node=8 pretrain.py config/darija_base.py   # DDP

What happens, top to bottom, and why:
- settings (below), overridden by a config file and --key=value (configurator.py). The data
  settings of prepare.py are accepted too: when data/NAME/train.bin is missing, prepare.py runs
  first with the same command line.
- batches are random windows of block_size + 1 tokens read through np.memmap (the .bin never has
  to fit in memory). The windows of optimizer step `it` come from a generator seeded with
  (seed, it): a resumed run sees the very same batches, and N DDP processes split exactly the
  global batch one process would see (each takes its share of the micro-batches).
- AdamW (decay on matrices only), linear warmup then cosine decay to min_lr (or "wsd": warmup,
  stable, then a linear decay over the last decay_frac of training), gradient clipping,
  gradient accumulation (grad_accum_steps is the global count, split across processes).
- CUDA: bf16 autocast (fp16 + GradScaler on GPUs without bf16), TF32 matmuls, torch.compile.
  CPU: float32, compile off by default (a few % faster after ~30 s of compiling: rarely worth it).
- every eval_interval steps: train/val loss on fixed windows, validation bits per byte
  (val nats per token x tokens per byte of the val split / ln 2: comparable across tokenizers),
  a short sample, then out/NAME/last.pt (and best.pt when val loss improved), written atomically.
- Ctrl-C / SIGTERM: finish the current step, save last.pt, exit. A NaN/inf loss stops the run
  with a message and saves nothing, so the last good checkpoint stays intact.
- logs: a console line (loss, lr, tokens/s, MFU on GPU, ETA), out/NAME/log.jsonl, optional
  wandb, and out/NAME/loss.png when matplotlib is installed.
"""
import gc
import json
import math
import os
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict

import numpy as np
import torch

from model import GPT, GPTConfig, estimate_mfu, learning_rate_at, load_checkpoint, peak_flops, save_checkpoint

# --- settings (override with a config file and --key=value) ---
# data and output
dataset = "darija_small"        # reads data/NAME/ (prepare.py's setting of the same name)
out_dir = ""                    # "" means out/NAME
init_from = "scratch"           # "scratch" or "resume" (from out_dir/last.pt)
force = False                   # allow starting from scratch over an existing out_dir/last.pt
# model (vocab_size comes from data/NAME/meta.json)
n_layer = 4
n_head = 4
n_kv_head = 4
n_embd = 256
block_size = 256
mlp = "relu2"                   # or "swiglu"; relu2 measured faster and better here (bench/model.py)
tie_embeddings = True
dropout = 0.0
rope_theta = 10000.0
# optimisation
batch_size = 16                 # sequences per micro-batch per process
grad_accum_steps = 1            # micro-batches per optimizer step, all processes together
max_iters = 1000
learning_rate = 2e-3
min_lr = 2e-4
warmup_iters = 50
lr_schedule = "cosine"          # "cosine" or "wsd" (warmup-stable-decay)
lr_decay_iters = 0              # 0: max_iters (set it to stop early on the same schedule)
decay_frac = 0.2                # wsd: fraction of lr_decay_iters spent decaying
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0                 # 0: off
seed = 1337
# evaluation and logging
eval_interval = 100
eval_iters = 20                 # micro-batches per split per evaluation
log_interval = 10
sample_tokens = 48              # length of the sample printed at each evaluation (0: none)
wandb_log = False
wandb_project = "darija-gpt"
# system
device = "auto"                 # "auto", "cuda", "cuda:1", "mps", "cpu"
dtype = "auto"                  # "auto" (bf16 on CUDA when supported, else fp16; fp32 elsewhere),
                                # "bfloat16", "float16", "float32"
compile = None                  # None: on for CUDA, off elsewhere

from configurator import configure  # noqa: E402
settings = configure(globals(), also_from=("prepare.py",))  # the final values, saved in checkpoints
ROOT = os.path.dirname(os.path.abspath(__file__))
out_dir = out_dir or os.path.join("out", dataset)
for name, allowed in (("init_from", ("scratch", "resume")), ("lr_schedule", ("cosine", "wsd")),
                      ("dtype", ("auto", "bfloat16", "float16", "float32"))):
    if globals()[name] not in allowed:
        sys.exit(f"{name} must be one of {', '.join(allowed)}; got {globals()[name]!r}")

# --- processes and device: torchrun sets RANK/WORLD_SIZE/LOCAL_RANK for DDP ---
ddp = "RANK" in os.environ
rank, world, local_rank = (int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
master = rank == 0
if device == "auto":
    device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
if ddp and device.startswith("cuda"):
    device = f"cuda:{local_rank}"
device_type = device.split(":")[0]
if ddp:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    if device_type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
if grad_accum_steps % world:
    sys.exit(f"grad_accum_steps ({grad_accum_steps}) must be a multiple of the number of processes ({world})")
local_accum = grad_accum_steps // world
if dtype == "auto":
    dtype = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if device_type == "cuda" else "float32"
ptdtype = getattr(torch, dtype)
autocast = nullcontext() if dtype == "float32" else torch.autocast(device_type, dtype=ptdtype)
if device_type == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
compile = device_type == "cuda" if compile is None else compile
log = print if master else (lambda *a, **k: None)

# --- data: prepare it when missing, then memory-map it ---
data_dir = os.path.join("data", dataset)
if not os.path.exists(os.path.join(data_dir, "train.bin")):
    if ddp:
        sys.exit(f"{data_dir}/train.bin not found: run `python prepare.py {' '.join(sys.argv[1:])}` first")
    print(f"{data_dir}/train.bin not found: running prepare.py first", flush=True)
    if subprocess.run([sys.executable, os.path.join(ROOT, "prepare.py"), *sys.argv[1:]]).returncode:
        sys.exit("prepare.py failed (see above); fix that, then run pretrain.py again")
    if not os.path.exists(os.path.join(data_dir, "train.bin")):
        sys.exit(f"prepare.py finished but {data_dir}/train.bin is still missing: check its dataset setting")
with open(os.path.join(data_dir, "meta.json"), encoding="utf-8") as f:
    meta = json.load(f)
data_dtype = np.dtype(meta["dtype"])


def split_tokens(split):
    # A fresh memmap per batch: a long-lived one keeps growing the process's memory (nanoGPT).
    return np.memmap(os.path.join(data_dir, f"{split}.bin"), dtype=data_dtype, mode="r")


for split in ("train", "val"):
    if len(split_tokens(split)) <= block_size + 1:
        sys.exit(f"{data_dir}/{split}.bin holds {len(split_tokens(split))} tokens: fewer than one "
                 f"window of block_size + 1 = {block_size + 1}; use more data or a smaller block_size")


def get_batch(split, windows):
    """Inputs and targets (B, block_size) for the given window start offsets."""
    data = split_tokens(split)
    rows = np.stack([data[i:i + block_size + 1] for i in windows]).astype(np.int64)
    x, y = torch.from_numpy(rows[:, :-1]), torch.from_numpy(rows[:, 1:])
    if device_type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def step_windows(it):
    """Window offsets (local_accum, batch_size) of this process for optimizer step `it`."""
    rng = np.random.default_rng([seed, 0, it])
    starts = rng.integers(0, len(split_tokens("train")) - block_size - 1, size=(grad_accum_steps, batch_size))
    return starts[rank * local_accum:(rank + 1) * local_accum]


def eval_windows(split):
    # The same windows at every evaluation: differences between evaluations are the model's.
    rng = np.random.default_rng([seed, 1, 0 if split == "train" else 1])
    return rng.integers(0, len(split_tokens(split)) - block_size - 1, size=(eval_iters, batch_size))


# --- model, optimizer, and resuming ---
torch.manual_seed(seed)
config = GPTConfig(vocab_size=meta["vocab_size"], block_size=block_size, n_layer=n_layer, n_head=n_head,
                   n_kv_head=n_kv_head, n_embd=n_embd, mlp=mlp, tie_embeddings=tie_embeddings,
                   dropout=dropout, rope_theta=rope_theta)
model = GPT(config).to(device)
model.chunked_loss = device_type == "cpu" and dtype == "float32"  # model.py's speed trick for CPU training
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
start_iter, best_val_loss = 0, None
last_path, best_path = os.path.join(out_dir, "last.pt"), os.path.join(out_dir, "best.pt")
if init_from == "resume":
    try:
        ckpt = load_checkpoint(last_path, map_location=device)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"cannot resume: {e}")
    if ckpt["model_config"] != asdict(config):
        sys.exit(f"{last_path} was trained with model {ckpt['model_config']}, not {asdict(config)}: "
                 "use the same model settings to resume")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    start_iter, best_val_loss = ckpt["step"], ckpt["best_val_loss"]
    log(f"resuming {last_path} at step {start_iter}")
    del ckpt
elif os.path.exists(last_path) and not force:
    sys.exit(f"{out_dir} already holds a run: continue it with --init_from=resume, "
             "or start over with --force (or choose another --out_dir)")
log(f"model: {model.num_params() / 1e6:.2f}M parameters, {config}")
scaler = torch.amp.GradScaler(device_type, enabled=dtype == "float16")
raw_model = model
if compile:
    log("compiling the model (a minute or so)...")
    model = torch.compile(model)
train_model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None) if ddp else model
decay_iters = lr_decay_iters or max_iters


@torch.no_grad()
def evaluate():
    """Mean train and val loss over fixed windows, val bits per byte, and a short sample."""
    model.eval()
    out = {}
    for split in ("train", "val"):
        losses = []
        for windows in eval_windows(split):
            with autocast:
                losses.append(model(*get_batch(split, windows))[1].item())
        out[f"{split}_loss"] = sum(losses) / len(losses)
    val = meta["val"]
    out["val_bpb"] = out["val_loss"] * val["tokens"] / val["bytes"] / math.log(2)
    if sample_tokens:
        ids = list(raw_model.generate([meta["eot_id"]], sample_tokens, temperature=0.8, top_k=50))
        out["sample"] = decode(ids)
    model.train()
    return out


def decode(ids):
    """Text of a sample, with the tokenizer of meta.json (token ids when bpe.py is unavailable)."""
    try:
        from bpe import Tokenizer
        path = meta["tokenizer"]
        path = path if os.path.exists(path) else os.path.join(data_dir, os.path.basename(path))
        return Tokenizer.load(path).decode(ids)
    except Exception as e:
        return f"{ids} (not decoded: {e})"


def save(path, step):
    save_checkpoint(path, raw_model, kind="base", step=step, best_val_loss=best_val_loss, config=settings,
                    tokenizer=meta.get("tokenizer"), tokenizer_sha256=meta.get("tokenizer_sha256"),
                    optimizer=optimizer if path == last_path else None)


def write_log(record):
    with open(os.path.join(out_dir, "log.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
    if wandb_log:
        wandb.log(record, step=record["iter"])


def plot_losses():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    with open(os.path.join(out_dir, "log.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style in (("loss", "-"), ("val_loss", "o-")):
        points = [(r["iter"], r[key]) for r in records if key in r]
        if points:
            ax.plot(*zip(*points), style, label=key, alpha=0.8)
    ax.set(xlabel="step", ylabel="loss (nats/token)", title=f"pre-training: {dataset}")
    ax.legend()
    fig.savefig(os.path.join(out_dir, "loss.png"), dpi=100)
    plt.close(fig)


# --- signals: finish the step, save, exit ---
stop = {"requested": False}


def request_stop(signum, frame):
    stop["requested"] = True


signal.signal(signal.SIGINT, request_stop)
signal.signal(signal.SIGTERM, request_stop)
if master:
    os.makedirs(out_dir, exist_ok=True)
    if init_from == "scratch" and os.path.exists(os.path.join(out_dir, "log.jsonl")):
        os.remove(os.path.join(out_dir, "log.jsonl"))
    if wandb_log:
        import wandb
        wandb.init(project=wandb_project, name=os.path.basename(out_dir), config=settings)
peak = peak_flops(device)  # 0 (no MFU printed) off CUDA or on an unknown GPU
tokens_per_step = grad_accum_steps * batch_size * block_size
log(f"{world} process(es) on {device} ({dtype}), {tokens_per_step:,} tokens per step, {max_iters} steps")

# --- the training loop ---
it, t0, dt_avg, nan = start_iter, time.time(), None, False
while it < max_iters:
    lr = learning_rate_at(it, learning_rate, min_lr, warmup_iters, decay_iters, lr_schedule, decay_frac)
    for group in optimizer.param_groups:
        group["lr"] = lr
    torch.manual_seed(seed + it)  # dropout masks depend only on the step: resuming is exact
    loss_sum = 0.0
    for micro, windows in enumerate(step_windows(it)):
        x, y = get_batch("train", windows)
        if ddp:  # all-reduce the gradients only on the last micro-batch
            train_model.require_backward_grad_sync = micro == local_accum - 1
        with autocast:
            loss = train_model(x, y)[1] / local_accum
        scaler.scale(loss).backward()
        loss_sum += loss.detach()
    if grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if ddp:  # the loss of the global batch, and a stop requested on any process
        flags = torch.tensor([float(loss_sum), float(stop["requested"])], device=device)
        dist.all_reduce(flags)
        loss_sum, stop["requested"] = flags[0] / world, bool(flags[1])
    loss_val = float(loss_sum)
    it += 1
    if not math.isfinite(loss_val):
        log(f"step {it}: the loss is {loss_val}; stopping without saving, so {last_path} keeps the "
            "last good weights. Try a lower learning_rate or a smaller grad_clip.")
        nan = True
        break
    t1 = time.time()
    dt_avg = t1 - t0 if dt_avg is None else 0.9 * dt_avg + 0.1 * (t1 - t0)
    t0 = t1
    if master and (it % log_interval == 0 or it == max_iters):
        tok_s = tokens_per_step / dt_avg
        mfu = estimate_mfu(raw_model, tok_s, peak) if peak else None
        eta = (max_iters - it) * dt_avg
        log(f"step {it}/{max_iters} | loss {loss_val:.4f} | lr {lr:.2e} | {tok_s:,.0f} tok/s"
            + (f" | mfu {mfu:.1%}" if mfu else "") + f" | eta {eta // 60:.0f}m{eta % 60:02.0f}s", flush=True)
        write_log({"iter": it, "loss": loss_val, "lr": lr, "tokens_per_sec": tok_s, "mfu": mfu})
    if master and (it % eval_interval == 0 or it == max_iters):
        result = evaluate()
        log(f"eval {it}: train {result['train_loss']:.4f} | val {result['val_loss']:.4f} | "
            f"val {result['val_bpb']:.3f} bits/byte\n  sample: {result.get('sample', '')!r}", flush=True)
        if best_val_loss is None or result["val_loss"] < best_val_loss:
            best_val_loss = result["val_loss"]
            save(best_path, it)
        save(last_path, it)
        write_log({"iter": it, **result})
        plot_losses()
        t0 = time.time()  # evaluation time is not training time
    if stop["requested"]:
        if master:
            save(last_path, it)
            log(f"stopped at step {it}: saved {last_path}; continue with --init_from=resume")
        break

# --- teardown: drop DDP before destroying the process group (avoids an abort at exit) ---
if ddp:
    del train_model
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
if wandb_log and master:
    wandb.finish()
if nan:
    sys.exit(1)
