"""
bench/model.py: our GPT (model.py) against a nanoGPT-architecture baseline, side by side in one run.

    python bench/model.py                        # sections 1-3, ~20 min on 2 quiet CPU cores (7 quality runs)
    python bench/model.py --sections speed --compile   # add the torch.compile rows (~1 min more)
    python bench/model.py --sections tricks      # section 4 (~3 min)

1. speed: training tokens/s (forward + backward + AdamW step) at darija_small's shape
   (4 layers x 256, context 256, batch 16, vocab 8,192) for ours with each MLP and for the
   baseline; the figure that matters is the ratio in the same run. One more row gives ours nanoGPT's
   loss (all the logits + F.cross_entropy) instead of the chunked loss: the architecture's share alone.
2. quality: validation bits per byte of ours and the baseline after the same number of training
   tokens, same data, tokenizer, batches and schedule, on ../shared/data/darija/pretrain (lower is
   better): the baseline with AdamW, ours with AdamW and with Muon, each at 3 learning rates; and the
   tokens and time each needs to reach the baseline's final figure. The tokenized data is cached in
   bench/results/.
3. generate: tokens/s generating 64 tokens after 512 tokens of context, with the KV cache vs
   recomputing the whole context for every token (nanoGPT's generate).
4. tricks: the step time of model.py as it trains on a CPU, without its one speed trick (the chunked
   head loss), and with each of three tricks left out of model.py put back (rebuilt here).

The baseline is written here, not imported: learned positions, LayerNorm, GELU MLP (4x),
fused qkv projection, tied embeddings, no biases, F.scaled_dot_product_attention.
"""
import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bpe import Tokenizer  # noqa: E402
import model as model_py  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data", "darija", "pretrain")
RESULTS = os.path.join(ROOT, "bench", "results")


# --- the baseline: nanoGPT's architecture --------------------------------------------------------

class BaselineBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.n_head = c.n_head
        self.ln_1, self.ln_2 = nn.LayerNorm(c.n_embd, bias=False), nn.LayerNorm(c.n_embd, bias=False)
        self.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd, bias=False)
        self.attn_proj = nn.Linear(c.n_embd, c.n_embd, bias=False)
        self.c_fc = nn.Linear(c.n_embd, 4 * c.n_embd, bias=False)
        self.mlp_proj = nn.Linear(4 * c.n_embd, c.n_embd, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.attn_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class Baseline(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(c.vocab_size, c.n_embd), nn.Embedding(c.block_size, c.n_embd)
        self.blocks = nn.ModuleList(BaselineBlock(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd, bias=False)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * c.n_layer) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, mean=0.0, std=std)

    def forward(self, idx, targets=None):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = None if targets is None else F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        params = list(self.parameters())
        return torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                                 lr=learning_rate, betas=betas)


def build(kind, **shape):
    """The baseline, or our GPT with an MLP kind, trained as pretrain.py trains on a CPU (the chunked
    head loss) unless the kind ends with "+plain loss" (all the logits, then F.cross_entropy, as nanoGPT)."""
    torch.manual_seed(0)
    if kind == "baseline":
        return Baseline(GPTConfig(**shape))
    model = GPT(GPTConfig(mlp=kind.split("+")[0], **shape))
    model.chunked_loss = not kind.endswith("+plain loss")
    return model


# --- 1. speed ------------------------------------------------------------------------------------

def bench_speed(args):
    shape = dict(vocab_size=8192, block_size=256, n_layer=4, n_head=4, n_kv_head=4, n_embd=256)
    kinds = ("baseline", "swiglu", "relu2", "relu2+plain loss")
    rows = [("eager", kind) for kind in kinds] + [("compiled", kind) for kind in kinds if args.compile]
    x = torch.randint(0, 8192, (16, 256))
    runs = {}
    for mode, kind in rows:
        model = build(kind, **shape)
        opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
        runs[(mode, kind)] = (torch.compile(model) if mode == "compiled" else model, opt, [])

    def step(model, opt):
        model(x, x)[1].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for model, opt, _ in runs.values():  # warm-up (and compilation), not timed
        step(model, opt)
    # One step of each model in turn, many times: load from other processes hits every row alike.
    # Each row is the median step, what a run sustains; the CPU time of this process is counted too:
    # on a shared machine it is the steadier measure of the work a step takes.
    for _ in range(args.speed_steps):
        for model, opt, times in runs.values():
            t0, c0 = time.perf_counter(), time.process_time()
            step(model, opt)
            times.append((time.perf_counter() - t0, time.process_time() - c0))
    print(f"\n## 1. training tokens/s, 4 x 256, context 256, batch 16, vocab 8,192 "
          f"(median of {args.speed_steps} interleaved steps)")
    print("| mode | model | params | tokens/s | ratio to baseline | ratio by CPU time |\n"
          "|---|---|---|---|---|---|")
    for mode, kind in rows:
        wall, cpu = (statistics.median(t[i] for t in runs[(mode, kind)][2]) for i in (0, 1))
        base_wall, base_cpu = (statistics.median(t[i] for t in runs[(mode, "baseline")][2]) for i in (0, 1))
        params = sum(p.numel() for p in runs[(mode, kind)][0].parameters())
        name = "nanoGPT baseline" if kind == "baseline" else f"ours, {kind.replace('+plain loss', ', plain loss')}"
        print(f"| {mode} | {name} | {params / 1e6:.2f}M | {16 * 256 / wall:,.0f} | {base_wall / wall:.2f} | "
              f"{base_cpu / cpu:.2f} |", flush=True)


# --- 2. quality ----------------------------------------------------------------------------------

def load_data(vocab_size, max_bytes, seed=1337):
    """Train/val token ids (split by document) and the val bytes, tokenized once and cached."""
    cache = os.path.join(RESULTS, f"model_data_{vocab_size}_{max_bytes}.npz")
    if os.path.exists(cache):
        d = np.load(cache)
        return d["train"], d["val"], int(d["val_bytes"])
    if not os.path.isdir(SHARED):
        sys.exit(f"quality needs {SHARED} (the shared Darija corpus); it is not here")
    docs = []
    for name in sorted(os.listdir(SHARED)):
        with open(os.path.join(SHARED, name), encoding="utf-8") as f:
            docs += [json.loads(line)["text"] for line in f]
    rng = np.random.default_rng(seed)
    docs = [docs[i] for i in rng.permutation(len(docs))]
    val, train, size = docs[:2000], [], 0
    for doc in docs[2000:]:
        if size > max_bytes:
            break
        train.append(doc)
        size += len(doc.encode())
    print(f"training a {vocab_size}-token tokenizer on {size / 1e6:.1f} MB and encoding (cached afterwards)...")
    tok = Tokenizer.train(train[:len(train) // 2], vocab_size)
    enc, eot = tok.to_tiktoken(), tok.eot_id

    def encode(texts):
        return np.array([t for ids in enc.encode_ordinary_batch(texts) for t in [eot, *ids]], dtype=np.uint16)

    os.makedirs(RESULTS, exist_ok=True)
    val_bytes = sum(len(d.encode()) for d in val)
    np.savez(cache, train=encode(train), val=encode(val), val_bytes=val_bytes)
    return load_data(vocab_size, max_bytes, seed)


def val_bits_per_byte(model, val, block, val_bytes):
    """All non-overlapping windows of val: nats per token x tokens per byte / ln 2."""
    model.eval()
    n = (len(val) - 1) // block
    x = torch.from_numpy(val[:n * block].astype(np.int64)).view(n, block)
    y = torch.from_numpy(val[1:n * block + 1].astype(np.int64)).view(n, block)
    with torch.no_grad():
        loss = sum(model(x[i:i + 16], y[i:i + 16])[1].item() * len(x[i:i + 16]) for i in range(0, n, 16)) / n
    model.train()
    return loss * len(val) / val_bytes / math.log(2)


def train_for_quality(kind, optimizer, lr, muon_lr, train, val, val_bytes, args):
    """One quality run: val bits/byte along the way -> [(tokens, wall s, CPU s, bpb)], optimizer step seconds."""
    block, batch, steps = args.quality_block, 16, args.quality_steps
    model = build(kind, vocab_size=8192, block_size=block, n_layer=4, n_head=4, n_kv_head=4, n_embd=args.quality_embd)
    muon = {"muon_lr": muon_lr} if optimizer == "muon" else {}  # (the baseline knows AdamW only)
    opt = model.configure_optimizers(0.1, lr, (0.9, 0.95), "cpu", **muon)
    rng = np.random.default_rng(0)  # the very same batches for every run
    curve, wall, cpu, opt_time = [], 0.0, 0.0, 0.0
    for it in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        rate = lr * min(1.0, (it + 1) / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * it / steps)))
        for g in opt.param_groups:
            g["lr"] = rate * g.get("lr_scale", 1.0)  # Muon's group: muon_lr on the same schedule
        starts = rng.integers(0, len(train) - block - 1, size=batch)
        rows = torch.from_numpy(np.stack([train[s:s + block + 1] for s in starts]).astype(np.int64))
        loss = model(rows[:, :-1], rows[:, 1:])[1]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        t1 = time.perf_counter()
        opt.step()
        opt_time += time.perf_counter() - t1
        opt.zero_grad(set_to_none=True)
        wall, cpu = wall + time.perf_counter() - t0, cpu + time.process_time() - c0  # evaluation not counted
        if (it + 1) % args.eval_every == 0 or it + 1 == steps:
            curve.append(((it + 1) * batch * block, wall, cpu, val_bits_per_byte(model, val, block, val_bytes)))
    return curve, opt_time / steps


def first_reaching(curve, target, column):
    """Tokens (column 0), wall (1) or CPU seconds (2) at which the curve first reaches bpb <= target, linearly
    interpolated between evaluations; None if it never does."""
    previous = (0, 0.0, 0.0, float("inf"))
    for point in curve:
        if point[3] <= target:
            if previous[3] == float("inf"):
                return point[column]
            share = (previous[3] - target) / (previous[3] - point[3])
            return previous[column] + share * (point[column] - previous[column])
        previous = point
    return None


def bench_quality(args):
    """The baseline (AdamW at --lr), then ours with AdamW at each of --adamw_lrs, then ours with Muon at each of
    --muon_lrs (its AdamW part, for the embedding and head, at the best AdamW lr): bits/byte at equal tokens,
    and the tokens and time each needs to reach the baseline's final bits/byte."""
    train, val, val_bytes = load_data(8192, args.quality_bytes)
    block, steps = args.quality_block, args.quality_steps
    if args.val_windows:  # a fixed slice of val, measured every eval_every steps, at the split's bytes per token
        kept = min(len(val), args.val_windows * block + 1)
        val_bytes, val = val_bytes * kept / len(val), val[:kept]
    print(f"\n## 2. val bits/byte after {steps * 16 * block:,} training tokens, 4 x {args.quality_embd}, context "
          f"{block}, batch 16 ({len(train):,} train tokens; {len(val) - 1:,} val tokens, "
          f"measured every {args.eval_every} steps; warmup 20, cosine to 0.1 x lr)")
    results = {}

    def run(kind, optimizer, lr, muon_lr):
        curve, opt_step = train_for_quality(kind, optimizer, lr, muon_lr, train, val, val_bytes, args)
        results[(kind, optimizer, lr, muon_lr)] = curve, opt_step
        print(f"  {kind}, {optimizer}, lr {lr:g}" + (f", muon_lr {muon_lr:g}" if muon_lr else "")
              + f": {curve[-1][3]:.3f} bits/byte, {curve[-1][1]:.0f} s", flush=True)

    run("baseline", "adamw", args.lr, 0.0)
    for kind in [kind for kind in args.quality_models.split(",") if kind != "baseline"]:
        for lr in map(float, args.adamw_lrs.split(",")):
            run(kind, "adamw", lr, 0.0)
        best_adamw = min((k for k in results if k[:2] == (kind, "adamw")), key=lambda k: results[k][0][-1][3])
        for muon_lr in [float(lr) for lr in args.muon_lrs.split(",") if lr]:
            run(kind, "muon", best_adamw[2], muon_lr)
    base_curve = results[("baseline", "adamw", args.lr, 0.0)][0]
    target, base_tokens, base_wall, base_cpu = base_curve[-1][3], *base_curve[-1][:3]
    print(f"\nthe baseline's final {target:.3f} bits/byte; to reach it (ratio to the baseline's tokens / time):")
    print("| model | optimizer | lr | val bits/byte at equal tokens | tokens to reach the baseline | "
          "wall time to reach | CPU time to reach | whole run, wall | optimizer step |\n" + "|---" * 9 + "|")
    ours = [key for key in results if key[0] != "baseline"]
    best = {opt: min((k for k in ours if k[1] == opt), key=lambda k: results[k][0][-1][3])  # in bold
            for opt in ("adamw", "muon") if any(k[1] == opt for k in ours)}
    for key, (curve, opt_step) in results.items():
        kind, optimizer, lr, muon_lr = key
        reach = [first_reaching(curve, target, column) for column in (0, 1, 2)]
        shown = [f"{value:,.0f}{unit} ({value / whole:.0%})" if value is not None else "not reached"
                 for value, whole, unit in zip(reach, (base_tokens, base_wall, base_cpu), ("", " s", " s"))]
        name = "nanoGPT baseline" if kind == "baseline" else f"ours, {kind}"
        rate = f"{lr:g}" + (f", Muon {muon_lr:g}" if muon_lr else "")
        bpb = f"{curve[-1][3]:.3f}"
        print(f"| {name} | {optimizer}{' (best)' if best.get(optimizer) == key else ''} | {rate} | "
              f"{f'**{bpb}**' if best.get(optimizer) == key else bpb} | {' | '.join(shown)} | "
              f"{curve[-1][1]:.0f} s | {1000 * opt_step:.0f} ms |", flush=True)


# --- 3. generation -------------------------------------------------------------------------------

def bench_generate(args):
    model = build(args.mlp, vocab_size=8192, block_size=1024, n_layer=4, n_head=4, n_kv_head=4, n_embd=256).eval()
    prompt, n = torch.randint(0, 8192, (512,)).tolist(), 64
    t0 = time.perf_counter()
    cached = list(model.generate(prompt, n, temperature=0))
    t_cache = time.perf_counter() - t0
    t0 = time.perf_counter()
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):  # nanoGPT's generate: the whole context again for every new token
            logits = model.lm_head(model.hidden(torch.tensor([ids]))[:, -1])
            ids.append(int(logits.argmax()))
    t_full = time.perf_counter() - t0
    assert ids[512:] == cached, "KV-cache generation differs from recomputation"
    print(f"\n## 3. generation, {n} tokens after 512 tokens of context (greedy, identical tokens)")
    print("| method | tokens/s | speed-up |\n|---|---|---|")
    print(f"| recompute the context (nanoGPT) | {n / t_full:,.0f} | 1.0x |")
    print(f"| KV cache (ours, prefill included) | {n / t_cache:,.0f} | {t_full / t_cache:.1f}x |")


# --- 4. what each CPU speed trick is worth -------------------------------------------------------
# model.py keeps one speed trick, the chunked head loss (model.chunked_loss). Three more were measured
# here and left out of model.py, each worth under ~3% of a training step: they are rebuilt below, on
# top of model.py, so the figure can be measured again.

class RMSNormByHand(torch.autograd.Function):
    """RMSNorm with its backward written out: r (g - y mean(g y)), with y = x r."""

    @staticmethod
    def forward(ctx, x):
        r = torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-6)
        ctx.save_for_backward(x * r, r)
        return x * r

    @staticmethod
    def backward(ctx, grad):
        y, r = ctx.saved_tensors
        return r * (grad - y * (grad * y).mean(-1, keepdim=True))


def rotate_by_complex_multiply(x, cos, sin):
    """RoPE as one complex multiply: each feature pair as a complex number times e^(i angle)."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * torch.complex(cos, sin)[:, None]).flatten(-2).type_as(x)


def attention_with_one_qkv_matmul(self, x, cos, sin, cache=None):
    """model.py's attention (training path), with q, k and v from one matmul of their stacked weights."""
    B, T, C = x.shape
    kv_width = self.n_kv_head * self.head_dim
    q, k, v = F.linear(x, torch.cat([self.c_q.weight, self.c_k.weight, self.c_v.weight])).split(
        [C, kv_width, kv_width], dim=-1)
    q = model_py.apply_rotary(q.view(B, T, self.n_head, self.head_dim), cos, sin)
    k = model_py.apply_rotary(k.view(B, T, self.n_kv_head, self.head_dim), cos, sin)
    v = v.view(B, T, self.n_kv_head, self.head_dim)
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
    return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


TRICKS = {"hand-written RMSNorm backward": (model_py, "norm", RMSNormByHand.apply),
          "RoPE as one complex multiply": (model_py, "apply_rotary", rotate_by_complex_multiply),
          "q, k, v from one matmul": (model_py.CausalSelfAttention, "forward", attention_with_one_qkv_matmul)}


@contextlib.contextmanager
def trick(name):
    """model.py with one left-out trick put back, for the duration (None: model.py as it is)."""
    if name is None:
        yield
        return
    owner, attribute, replacement = TRICKS[name]
    original = getattr(owner, attribute)
    setattr(owner, attribute, replacement)
    try:
        yield
    finally:
        setattr(owner, attribute, original)


def bench_tricks(args):
    shape = dict(vocab_size=8192, block_size=256, n_layer=4, n_head=4, n_kv_head=4, n_embd=256)
    variants = [("model.py (chunked loss)", "relu2", None), ("without the chunked loss", "relu2+plain loss", None)]
    variants += [(f"+ {name}", "relu2", name) for name in TRICKS]
    x = torch.randint(0, 8192, (16, 256))
    runs = []
    for label, kind, name in variants:
        model = build(kind, **shape)
        runs.append((label, name, model, model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu"), []))
    for repeat in range(args.speed_steps + 1):  # one step of each in turn; the first round is a warm-up
        for label, name, model, opt, times in runs:
            with trick(name):
                t0 = time.perf_counter()
                model(x, x)[1].backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if repeat:
                    times.append(time.perf_counter() - t0)
    reference = statistics.median(runs[0][4])
    print(f"\n## 4. what each CPU speed trick is worth: ours, ReLU², eager, 16 x 256 (median of {args.speed_steps} "
          f"interleaved steps)")
    print("| variant | ms per step | step time vs model.py |\n|---|---|---|")
    for label, _, _, _, times in runs:
        median = statistics.median(times)
        print(f"| {label} | {1000 * median:,.0f} | {median / reference - 1:+.1%} |", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sections", default="speed,quality,generate", help="and tricks")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd models (~1 min more)")
    p.add_argument("--speed_steps", type=int, default=16)
    p.add_argument("--quality_steps", type=int, default=100)
    p.add_argument("--quality_bytes", type=int, default=4_000_000)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--mlp", default="relu2", help="our MLP for the generate section")
    p.add_argument("--quality_models", default="relu2", help="quality: ours (swiglu, relu2), each with each optimizer")
    p.add_argument("--quality_embd", type=int, default=256, help="quality: the models' width (4 layers)")
    p.add_argument("--quality_block", type=int, default=256, help="quality: the context")
    p.add_argument("--adamw_lrs", default="1e-3,2e-3,4e-3", help="quality: ours with AdamW at each")
    p.add_argument("--muon_lrs", default="0.01,0.02,0.04", help="quality: ours with Muon at each")
    p.add_argument("--eval_every", type=int, default=10, help="quality: steps between val measurements")
    p.add_argument("--val_windows", type=int, default=32, help="quality: val windows measured (0: all of val)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="1 is faster on a machine others share")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for section in args.sections.split(","):
        {"speed": bench_speed, "quality": bench_quality, "generate": bench_generate, "tricks": bench_tricks}[section](args)
