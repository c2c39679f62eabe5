"""
pretrain.py: pre-train the GPT of model.py on data/NAME/{train,val}.bin (written by prepare.py).

    python pretrain.py config/darija_small.py                     # one process (CPU, one GPU, MPS)
    python pretrain.py config/darija_small.py --init_from=resume  # continue out/NAME/last.pt exactly
    torchrun --standalone --nproc_per_node=8 pretrain.py config/darija_base.py   # DDP

What happens, top to bottom, and why:
- settings (below), overridden by a config file and --key=value (configurator.py); prepare.py's data settings too:
  prepare.py runs first, on every start, with the same command line less --force (here: "start training over"): it
  builds data/NAME when missing, does nothing when it is up to date, and refuses when built with other settings.
- out_dir is this run's alone (out_dir.lock beside it, while the run lasts) and holds only what pretrain.py writes: a
  folder with anything else in it is refused, --force or not.
- batches are random windows of block_size + 1 tokens read through np.memmap (the .bin never has to fit in memory).
  The windows of optimizer step `it` come from a generator seeded with (seed, it): a resumed run sees the very same
  batches, and N DDP processes split exactly one process's global batch (each takes its share of the micro-batches).
- AdamW (decay on matrices only), or Muon for the blocks' matrices (model.py); linear warmup then cosine decay to
  min_lr (or "wsd": warmup, stable, then a linear decay over the last decay_frac), gradient clipping, gradient
  accumulation (grad_accum_steps is the global count, split across processes).
- CUDA: bf16 autocast (fp16 + GradScaler below compute capability 8.0: T4, V100), TF32 matmuls, torch.compile. CPU:
  float32, compile off by default (a few % faster after ~30 s of compiling).
- every eval_interval steps: train/val loss on fixed windows, validation bits per byte (val nats per token x tokens
  per byte of the val split / ln 2: comparable across tokenizers), a short sample, then out/NAME/last.pt (and best.pt
  when val loss improved), written atomically. Over 4 passes over the data, the run stops once val has not improved
  for `patience` evaluations. Several machines: out_dir must be one folder they share (rank 0 writes, all resume).
- Ctrl-C / SIGTERM: finish the current step, save last.pt, exit. A NaN/inf loss stops the run and saves nothing: the
  last good checkpoint stays intact. Resuming refuses data tokenized otherwise and cuts log.jsonl back to its step.
- logs: a console line (loss, lr, tokens/s and MFU per GPU, ETA; see the training loop), out/NAME/log.jsonl,
  optional wandb, and out/NAME/loss.png when matplotlib is installed.
"""
import gc
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict

import numpy as np
import torch

from model import (GPT, GPTConfig, estimate_mfu, learning_rate_at, load_checkpoint, peak_flops, save_checkpoint,
                   training_precision)

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
optimizer = "adamw"             # or "muon": Muon for the blocks' matrices at muon_lr (model.py), AdamW for the rest
muon_lr = 0.02
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
patience = 3                    # > 4 passes over the data: stop after this many evaluations without a better val
log_interval = 10
sample_tokens = 48              # length of the sample printed at each evaluation (0: none)
wandb_log = False
wandb_project = "darija-gpt"
# system
device = "auto"                 # "auto", "cuda", "cuda:1", "mps", "cpu"
dtype = "auto"                  # "auto" (CUDA: bf16 from compute capability 8.0, fp16 below; fp32 elsewhere),
                                # "bfloat16", "float16", "float32"
compile = None                  # None: on for CUDA, off elsewhere

from configurator import claim, configure, plain_name  # noqa: E402
settings = configure(globals(), also_from=("prepare.py",))  # the final values, saved in checkpoints
ROOT = os.path.dirname(os.path.abspath(__file__))
plain_name("dataset", dataset)  # data/NAME and out/NAME must not reach elsewhere (--dataset=../../x)
out_dir = out_dir or os.path.join("out", dataset)
for name, allowed in (("init_from", ("scratch", "resume")), ("lr_schedule", ("cosine", "wsd")),
                      ("optimizer", ("adamw", "muon")), ("dtype", ("auto", "bfloat16", "float16", "float32"))):
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
if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", device):
    sys.exit(f"device must be auto, cpu, cuda, cuda:N or mps; got {device!r}")
device_type, _, device_index = device.partition(":")
# A device this machine lacks is said here: later it would be a traceback, or a "corrupt checkpoint" when resuming
gpus = torch.cuda.device_count()
if device_type == "cuda" and int(device_index or 0) >= gpus:
    sys.exit(f"device {device!r} asked for, but this machine has {gpus} CUDA GPU(s) that PyTorch can use: "
             "run with --device=cpu (or --device=auto)")
if device_type == "mps" and not torch.backends.mps.is_available():
    sys.exit("device 'mps' asked for, but this machine has no Apple GPU (MPS) that PyTorch can use: "
             "run with --device=cpu (or --device=auto)")

# --- out_dir: this run's alone, and only ever holding pretrain.py's own files ---
OUTPUTS = ("best.pt", "last.pt", "log.jsonl", "loss.png")  # all that pretrain.py writes in out_dir
last_path, best_path = os.path.join(out_dir, "last.pt"), os.path.join(out_dir, "best.pt")
log_path = os.path.join(out_dir, "log.jsonl")


def own_files():
    """The names in out_dir, all pretrain.py's: its outputs, and temporary files (NAME.tmpPID) a killed run
    left. Anything else stops the run, named: that folder is someone else's, not ours to write or clear."""
    names = sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []
    others = []
    for name in names:
        if os.path.isdir(os.path.join(out_dir, name)):
            others.append(name + "/")
        elif name.split(".tmp")[0] not in OUTPUTS:
            others.append(name)
    if others:
        shown = others[:8] + (["..."] if len(others) > 8 else [])
        sys.exit(f"{out_dir} holds files that pretrain.py did not write: {', '.join(shown)}; choose another "
                 "--out_dir (--force starts over only in a folder that holds nothing but pretrain.py's files)")
    return names


if master:  # the one process that writes out_dir
    claim(out_dir)  # until this process exits: a second run on out_dir stops, naming this one
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        sys.exit(f"out_dir {out_dir} is a file, not a folder: choose another --out_dir")
    found = own_files()
    if init_from == "scratch" and not force and ("last.pt" in found or "best.pt" in found):
        resumable = "continue it with --init_from=resume, or " if "last.pt" in found else ""
        sys.exit(f"{out_dir} already holds a run: {resumable}start over with --force (or choose another --out_dir)")

# --- data: prepare.py checks it on every start, so that changed data settings are refused, not ignored ---
data_dir = os.path.join("data", dataset)
# its own arguments (prepare.py takes the data settings among them) less --force: here, "start training over"
prepare_args = [arg for arg in sys.argv[1:] if arg != "--force" and not arg.startswith("--force=")]
prepare_command = shlex.join(["python", "prepare.py", *prepare_args])
if local_rank == 0:  # one process per machine, before the others wait for it (torchrun stops them if it fails)
    if not os.path.exists(os.path.join(data_dir, "train.bin")):
        if ddp:  # building a large dataset here would outlast the other processes' wait for this one
            sys.exit(f"{data_dir}/train.bin not found: run `{prepare_command}` first")
        print(f"{data_dir}/train.bin not found: running prepare.py first", flush=True)
    try:
        prepared = subprocess.run([sys.executable, os.path.join(ROOT, "prepare.py"), *prepare_args])
    except KeyboardInterrupt:  # Ctrl-C reaches prepare.py too, which says what it left
        sys.exit(f"interrupted while prepare.py was checking or building {data_dir}: nothing was trained")
    if prepared.returncode == 1:
        sys.exit(1)  # prepare.py's own error, already said in one line (data built differently, a bad source...)
    if prepared.returncode:
        sys.exit(f"prepare.py failed (exit status {prepared.returncode}, see above); fix that, then run "
                 "pretrain.py again")
if ddp:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    if device_type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    dist.barrier()  # the other processes start reading data/NAME only once local rank 0 has checked it
    if world > int(os.environ.get("LOCAL_WORLD_SIZE", world)):  # several machines: must share out_dir
        lock = os.path.normpath(out_dir) + ".lock"  # rank 0's (configurator.claim), as this machine sees it
        seen = open(lock, encoding="utf-8").read() if os.path.isfile(lock) else None
        first = [seen]
        dist.broadcast_object_list(first)  # rank 0's
        unshared = torch.tensor(float(local_rank == 0 and seen != first[0]), device=device)
        dist.all_reduce(unshared)
        if unshared:  # rank 0 alone writes checkpoints, yet every process resumes from them
            sys.exit(f"out_dir {out_dir} is not one folder shared by all machines (another machine does not see the "
                     f"first one's {lock}): put it on a shared file system" if master else 1)
if grad_accum_steps % world:
    sys.exit(f"grad_accum_steps ({grad_accum_steps}) must be a multiple of the number of processes ({world})")
local_accum = grad_accum_steps // world
dtype, autocast, scaler = training_precision(device, dtype)  # the GradScaler does nothing unless float16
if device_type == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
compile = device_type == "cuda" if compile is None else compile
log = print if master else (lambda *a, **k: None)

# --- data: memory-mapped, once checked against meta.json ---
if not os.path.exists(os.path.join(data_dir, "train.bin")):
    sys.exit(f"prepare.py finished but {data_dir}/train.bin is still missing: check its dataset setting")
rebuild = f"{prepare_command} --force"  # what to run for damaged data
meta_path = os.path.join(data_dir, "meta.json")
try:
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    data_dtype = np.dtype(meta["dtype"])
    promised = {split: meta[split]["tokens"] for split in ("train", "val")}  # each .bin's length
    missing = [key for key in ("vocab_size", "eot_id") if key not in meta]
    if missing:
        raise KeyError(", ".join(missing))
except (OSError, ValueError, KeyError, TypeError) as e:  # missing, not JSON, a key missing or of the wrong type
    sys.exit(f"{meta_path} is missing or damaged ({type(e).__name__}: {e}); rebuild the data with `{rebuild}`")


def split_tokens(split):  # a fresh memmap per batch: a long-lived one keeps growing the process's memory (nanoGPT)
    return np.memmap(os.path.join(data_dir, f"{split}.bin"), dtype=data_dtype, mode="r")


for split in ("train", "val"):
    path = os.path.join(data_dir, f"{split}.bin")
    if not os.path.isfile(path):
        sys.exit(f"{path} is missing; rebuild the data with `{rebuild}`")
    # by size, before np.memmap (it cannot map an empty file); shorter than meta.json says: cut short (a full disk)
    tokens = os.path.getsize(path) // data_dtype.itemsize
    if tokens != promised[split]:
        sys.exit(f"{path} holds {tokens} tokens, not the {promised[split]} of {meta_path}: it is damaged; "
                 f"rebuild the data with `{rebuild}`")
    if tokens <= block_size + 1:
        sys.exit(f"{path} holds {tokens} tokens: fewer than one window of block_size + 1 = "
                 f"{block_size + 1}; use more data or a smaller block_size")


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


def eval_windows(split):  # the same windows at every evaluation: differences between evaluations are the model's
    rng = np.random.default_rng([seed, 1, 0 if split == "train" else 1])
    return rng.integers(0, len(split_tokens(split)) - block_size - 1, size=(eval_iters, batch_size))


# --- model, optimizer, and resuming ---
torch.manual_seed(seed)
config = GPTConfig(vocab_size=meta["vocab_size"], block_size=block_size, n_layer=n_layer, n_head=n_head,
                   n_kv_head=n_kv_head, n_embd=n_embd, mlp=mlp, tie_embeddings=tie_embeddings,
                   dropout=dropout, rope_theta=rope_theta)
model = GPT(config).to(device)
model.chunked_loss = device_type == "cpu" and dtype == "float32"  # model.py's speed trick for CPU training
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type,
                                       muon_lr=muon_lr if optimizer == "muon" else 0.0)  # the setting, then the object
start_iter, best_val_loss, best_step = 0, None, 0
if init_from == "resume":
    try:
        ckpt = load_checkpoint(last_path, map_location=device)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"cannot resume: {e}")
    # The data must be tokenized as the checkpoint's was: else its ids mean other text, and the saved
    # checkpoint would name a tokenizer its weights were not trained on (chat.py's check could not tell)
    trained_on = (ckpt.get("tokenizer_sha256"), ckpt["model_config"].get("vocab_size"))
    data_has = (meta.get("tokenizer_sha256"), meta["vocab_size"])
    if trained_on != data_has:
        sys.exit(f"cannot resume: {data_dir} holds data of another tokenizer than {last_path} was trained on "
                 f"(tokenizer sha256 {str(data_has[0])[:12]}..., vocab_size {data_has[1]} in {meta_path}; "
                 f"{str(trained_on[0])[:12]}..., vocab_size {trained_on[1]} in the checkpoint): rebuild the data "
                 "with the settings it was trained on, or start over with --force (or another --out_dir)")
    if ckpt["model_config"] != asdict(config):
        sys.exit(f"{last_path} was trained with model {ckpt['model_config']}, not {asdict(config)}: "
                 "use the same model settings to resume")
    if ckpt["config"].get("optimizer", "adamw") != settings["optimizer"]:  # its state would not fit
        sys.exit(f"{last_path} was trained with --optimizer={ckpt['config'].get('optimizer', 'adamw')}: resume with it")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler"):  # the fp16 loss scale and its growth count: a resumed fp16 run goes on exactly
        scaler.load_state_dict(ckpt["scaler"])
    start_iter, best_val_loss = ckpt["step"], ckpt["best_val_loss"]
    best_step = load_checkpoint(best_path)["step"] if os.path.exists(best_path) else 0  # for the early stop
    log(f"resuming {last_path} at step {start_iter}")
    del ckpt
log(f"model: {model.num_params() / 1e6:.2f}M parameters, {config}")
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
    out["val_bpb"] = out["val_loss"] * meta["val"]["tokens"] / meta["val"]["bytes"] / math.log(2)
    if sample_tokens:
        out["sample"] = decode(list(raw_model.generate([meta["eot_id"]], sample_tokens, temperature=0.8, top_k=50)))
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
                    optimizer=optimizer if path == last_path else None, scaler=scaler)


def write_log(record):
    with open(log_path, "a", encoding="utf-8") as f:
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
    with open(log_path, encoding="utf-8") as f:
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


def keep_log_until(step):
    """Resuming: keep the records up to the checkpoint's step, and only those. A run killed after its last checkpoint
    logged steps that will now run again, and its last line may be cut off: each step must appear once, in order."""
    if not os.path.exists(log_path):
        return
    kept = []
    with open(log_path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:  # a line cut off by the kill
                continue
            if isinstance(record, dict) and isinstance(record.get("iter"), int) and record["iter"] <= step:
                kept.append(json.dumps(record, ensure_ascii=False) + "\n")
    tmp = f"{log_path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
    os.replace(tmp, log_path)


# --- signals: finish the step, save, exit ---
stop = {"requested": False}
for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, lambda received, frame: stop.update(requested=True))
if master:
    os.makedirs(out_dir, exist_ok=True)
    for name in own_files():  # checked at the start: all pretrain.py's
        if init_from == "scratch" or ".tmp" in name:  # starting over: nothing of an earlier run mixes in
            os.remove(os.path.join(out_dir, name))
    if init_from == "resume":
        keep_log_until(start_iter)
    if wandb_log:
        import wandb
        wandb.init(project=wandb_project, name=os.path.basename(out_dir), config=settings)
peak = peak_flops(device)  # 0 (no MFU printed) off CUDA or on an unknown GPU
tokens_per_step = grad_accum_steps * batch_size * block_size
log(f"{world} process(es) on {device} ({dtype}), {tokens_per_step:,} tokens per step, {max_iters} steps")
passes = max_iters * tokens_per_step / promised["train"]
early_stop = patience > 0 and passes > 4  # many passes over little data: val bottoms out long before the end
log(f"{passes:.1f} passes over the {promised['train']:,} training tokens" + (
    f": more than 4, so training stops once val has not improved for {patience} evaluations" if early_stop else ""))
stalled = early_stop and (start_iter - best_step) // eval_interval >= patience  # a resumed run that had stopped

# --- the training loop ---
# The loss is read (which waits for the GPU) only on steps that log, evaluate or end, and on the first:
# the speed is timed from there on, leaving out the first step's compiling and warming up.
it, nan, synced, dt = start_iter, False, None, None  # synced: (time, step) of the last read
while it < max_iters and not stalled:
    lr = learning_rate_at(it, learning_rate, min_lr, warmup_iters, decay_iters, lr_schedule, decay_frac)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)  # Muon's group: muon_lr on the same schedule
    torch.manual_seed(seed + it)  # dropout masks depend only on the step: resuming is exact
    loss_sum = torch.zeros((), device=device)
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
    it += 1
    read = it % log_interval == 0 or it % eval_interval == 0 or it in (start_iter + 1, max_iters)
    if not read and (ddp or not stop["requested"]):  # DDP: a stop is agreed on at the next read
        continue
    if ddp:  # the loss of the global batch, and a stop requested on any process
        flags = torch.stack([loss_sum, torch.tensor(float(stop["requested"]), device=device)])
        dist.all_reduce(flags)
        loss_sum, stop["requested"] = flags[0] / world, bool(flags[1])
    loss_val = float(loss_sum)
    if not math.isfinite(loss_val):
        log(f"step {it}: the loss is {loss_val}; stopping without saving, so {last_path} keeps the "
            "last good weights. Try a lower learning_rate or a smaller grad_clip.")
        nan = True
        break
    now = time.time()
    if synced and it > synced[1]:  # seconds per step since the last read
        dt = (now - synced[0]) / (it - synced[1])
    synced = (now, it)
    if master and (it % log_interval == 0 or it == max_iters):
        tok_s = tokens_per_step / dt if dt else None  # all processes together; the MFU is each GPU's
        mfu = estimate_mfu(raw_model, tok_s, peak, world) if peak and tok_s else None
        line = f"step {it}/{max_iters} | loss {loss_val:.4f} | lr {lr:.2e}"
        if dt:  # unknown after the first step
            eta = (max_iters - it) * dt
            line += f" | {tok_s:,.0f} tok/s{f' | mfu {mfu:.1%}' if mfu else ''} | eta {eta // 60:.0f}m{eta % 60:02.0f}s"
        log(line, flush=True)
        write_log({"iter": it, "loss": loss_val, "lr": lr, "tokens_per_sec": tok_s, "mfu": mfu})
    if master and (it % eval_interval == 0 or it == max_iters):
        result = evaluate()
        log(f"eval {it}: train {result['train_loss']:.4f} | val {result['val_loss']:.4f} | "
            f"val {result['val_bpb']:.3f} bits/byte\n  sample: {result.get('sample', '')!r}", flush=True)
        write_log({"iter": it, **result})  # before the checkpoint: a kill in between loses no record
        if best_val_loss is None or result["val_loss"] < best_val_loss:
            best_val_loss, best_step = result["val_loss"], it
            save(best_path, it)
        save(last_path, it)
        plot_losses()
        synced = (time.time(), it)  # evaluation time is not training time
    if early_stop and it % eval_interval == 0:  # counted from the best step alone: resuming changes nothing
        if ddp:  # only the master evaluates: the others learn its best step
            best = torch.tensor(best_step, device=device)
            dist.broadcast(best, 0)
            best_step = int(best)
        stalled = (it - best_step) // eval_interval >= patience
        if stalled:
            log(f"stopped early at step {it}: val has not improved for {patience} evaluations; best.pt holds "
                f"step {best_step} (val loss {best_val_loss:.4f})")
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
