"""
model.py: the GPT. A small modern decoder-only Transformer, its generation with a KV cache, and the checkpoint files
every later stage reads (with the tokenizer each names).

The choices, and why: RoPE, not learned positions (relative, and cached keys stay valid as the context grows); RMSNorm
before each sub-layer, no gain (nanochat's); MLP "relu2" (relu(x W)^2, 4 n_embd wide: Primer, modded-nanoGPT; faster
and better here, bench/README.md) or "swiglu" (Llama's, 8/3 n_embd); grouped-query attention when n_kv_head < n_head
(a smaller KV cache); F.scaled_dot_product_attention (flash on CUDA); the embedding tied to the head; no biases; init
N(0, 0.02), residual projections 1/sqrt(2 n_layer) smaller (GPT-2). A CPU training speed trick: model.chunked_loss.
Linear layers: blocks.i.attn.{c_q, c_k, c_v, c_proj}, blocks.i.mlp.{c_fc, c_gate, c_proj}, lm_head.

    model = GPT(GPTConfig(vocab_size=8192, block_size=256, n_layer=4, n_head=4, n_embd=256))
    logits, loss = model(idx, targets)   # (B, T) int64 each; target -1 is ignored; no targets: loss None
    for token in model.generate(ids, max_new_tokens, temperature=0.8, top_k=50): ...
"""
import hashlib
import math
import os
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from bpe import Tokenizer
from configurator import atomic_write, plain


@dataclass
class GPTConfig:
    vocab_size: int = 8192
    block_size: int = 256       # longest context: training windows and the KV cache
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 4          # < n_head: grouped-query attention; must divide n_head
    n_embd: int = 256
    mlp: str = "swiglu"         # "swiglu" or "relu2"
    mlp_hidden: int = 0         # 0: 8/3 n_embd (swiglu, rounded up to 64) or 4 n_embd (relu2)
    tie_embeddings: bool = True
    dropout: float = 0.0
    rope_theta: float = 10000.0

    def __post_init__(self):
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(f"n_embd ({self.n_embd}) must be n_head ({self.n_head}) x an even head size")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_kv_head ({self.n_kv_head}) must divide n_head ({self.n_head})")
        if self.mlp not in ("swiglu", "relu2"):
            raise ValueError(f"mlp must be 'swiglu' or 'relu2', got {self.mlp!r}")
        if not self.mlp_hidden:
            self.mlp_hidden = 64 * math.ceil(8 * self.n_embd / 3 / 64) if self.mlp == "swiglu" else 4 * self.n_embd


class ContextFullError(ValueError):
    """More tokens than block_size: the caller should drop old tokens and try again."""


def norm(x):  # RMSNorm without a gain: x / sqrt(mean(x^2) + eps) over the features
    return F.rms_norm(x, (x.size(-1),), eps=1e-6)


def rotary_angles(head_dim, theta, start, length, device):
    """cos, sin (length, head_dim / 2) of positions start.. : pair i turns by position x theta^(-2i / head_dim)."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=device).float() / head_dim)
    angles = torch.outer(torch.arange(start, start + length, device=device).float(), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x, cos, sin):  # rotate each feature pair (2i, 2i+1) of x (B, T, heads, head_dim) by its angle
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # the even and the odd features
    cos, sin = cos[:, None], sin[:, None]                  # the same angle for every head
    rotated = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return rotated.flatten(-2).type_as(x)


class KVCache:  # keys and values of every layer for the tokens fed so far (their ids in `tokens`)
    def __init__(self, config, batch_size, device, dtype):
        shape = (config.n_layer, 2, batch_size, config.n_kv_head, config.block_size, config.n_embd // config.n_head)
        self.kv = torch.zeros(shape, device=device, dtype=dtype)
        self.tokens, self.pos = [], 0  # the ids held (batch size 1) and how many positions are filled

    def truncate(self, n):  # keep the first n tokens (later positions are overwritten when fed again)
        self.pos, self.tokens = min(self.pos, n), self.tokens[:min(self.pos, n)]

    def update(self, layer, k, v):  # k, v (B, n_kv_head, T, head_dim) after the filled positions; all so far
        end = self.pos + k.size(2)
        self.kv[layer, 0, :, :, self.pos:end], self.kv[layer, 1, :, :, self.pos:end] = k, v
        return self.kv[layer, 0, :, :, :end], self.kv[layer, 1, :, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.layer = layer  # which slot of the KV cache is ours
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        self.head_dim = config.n_embd // config.n_head
        self.c_q = nn.Linear(config.n_embd, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.dropout = config.dropout

    def forward(self, x, cos, sin, cache=None):
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, head_dim)
        past = 0 if cache is None else cache.pos
        k, v = (k, v) if cache is None else cache.update(self.layer, k, v)  # with those of the cached tokens first
        if self.n_kv_head != self.n_head:  # each group of query heads shares one key/value head
            k, v = (t.repeat_interleave(self.n_head // self.n_kv_head, dim=1) for t in (k, v))
        # no cache yet (training, a first prefill): causal; one new token: sees all; T new: token i sees to past + i
        mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(past) if past and T > 1 else None
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=past == 0, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return F.dropout(self.c_proj(y), dropout, self.training)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.kind = config.mlp
        self.c_fc = nn.Linear(config.n_embd, config.mlp_hidden, bias=False)
        if self.kind == "swiglu":
            self.c_gate = nn.Linear(config.n_embd, config.mlp_hidden, bias=False)
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=False)
        self.dropout = config.dropout

    def forward(self, x):
        if self.kind == "swiglu":
            h = F.silu(self.c_gate(x)) * self.c_fc(x)
        else:
            h = F.relu(self.c_fc(x))
            h = h.clamp_max(255.9) if h.dtype == torch.float16 else h  # fp16 ends at 65504: 256^2 would be inf
            h = h * h  # not h.square(): its backward takes torch's generic pow kernel, 3x slower on CPU
        return F.dropout(self.c_proj(h), self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.attn, self.mlp = CausalSelfAttention(config, layer), MLP(config)

    def forward(self, x, cos, sin, cache=None):
        x = x + self.attn(norm(x), cos, sin, cache)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        for name, weight in self.named_parameters():  # residual projections smaller: a flat stream variance
            if name.endswith("c_proj.weight"):
                nn.init.normal_(weight, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        self.chunked_loss = False  # training scripts switch it on for CPU training (see the docstring)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())  # parameters() yields a tied weight once

    def forward(self, idx, targets=None, cache=None):
        """idx (B, T) -> (logits (B, T, vocab), loss). With a cache, idx continues the tokens it holds."""
        x = self.hidden(idx, cache)
        if targets is None:
            return self.lm_head(x), None
        if self.chunked_loss and torch.is_grad_enabled():  # never builds the logits (see below)
            return None, chunked_cross_entropy(x.flatten(0, 1), self.lm_head.weight, targets.flatten())
        logits = self.lm_head(x)
        return logits, F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)

    def hidden(self, idx, cache=None):  # the final normed hidden states (B, T, n_embd); advances the cache
        T = idx.size(1)
        past = cache.pos if cache is not None else 0
        if past + T > self.config.block_size:
            raise ContextFullError(f"context of {past + T} tokens is longer than block_size {self.config.block_size}: "
                                   f"drop old tokens (truncate the cache) and retry")
        cos, sin = rotary_angles(self.config.n_embd // self.config.n_head, self.config.rope_theta, past, T, idx.device)
        x = self.wte(idx)
        for block in self.blocks:
            x = block(x, cos, sin, cache)
        if cache is not None:
            cache.pos += T
        return norm(x)

    @torch.no_grad()
    def mean_loss(self, inputs, targets, batch_size):
        """The mean loss over every counted target (not -1) of fixed rows, a batch at a time: a val loss."""
        total, count = 0.0, 0
        for i in range(0, len(inputs), batch_size):
            counted = int((targets[i:i + batch_size] >= 0).sum())
            if counted:  # a row of padding alone has no loss
                total += self(inputs[i:i + batch_size], targets[i:i + batch_size])[1].item() * counted
                count += counted
        return total / count

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, muon_lr=0.0):
        """AdamW over the trainable parameters; weight decay on matrices only; fused on CUDA. With muon_lr, Muon
        (below) for the blocks' matrices, at learning_rate x their group's lr_scale."""
        params = [p for p in self.parameters() if p.requires_grad]
        hidden = {id(p) for p in self.blocks.parameters() if p.dim() == 2} if muon_lr else set()
        groups = [{"params": [p for p in params if id(p) in hidden], "muon": True, "weight_decay": 0.0, "lr": muon_lr,
                   "lr_scale": muon_lr / learning_rate if muon_lr else 1.0, "momentum": 0.95},
                  {"params": [p for p in params if p.dim() >= 2 and id(p) not in hidden], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
        kind = Muon if muon_lr else torch.optim.AdamW  # Muon unfused: a fused AdamW unscales fp16 gradients itself
        return kind(groups, lr=learning_rate, betas=betas, fused=(device_type == "cuda" and not muon_lr) or None)

    def flops_per_token(self):  # for training: 6 per parameter (forward + backward) + attention
        c = self.config
        n = self.num_params() - (0 if c.tie_embeddings else self.wte.weight.numel())  # a lookup is free
        return 6 * n + 12 * c.n_layer * c.n_embd * c.block_size  # nanoGPT's (PaLM app. B): the MFUs we compare to

    def new_cache(self, batch_size=1):
        return KVCache(self.config, batch_size, self.wte.weight.device, self.wte.weight.dtype)

    @torch.no_grad()
    def generate(self, ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop_ids=(), cache=None):
        """Yield up to max_new_tokens token ids, one by one, continuing the context `ids`. A token in stop_ids is
        yielded, then generation stops; temperature 0 is greedy. The cache may live across calls (chat keeps one per
        conversation): it knows which tokens it holds, and only what follows their common prefix with `ids` is fed.
        Afterwards it holds the context and every yielded token but the last (fed when the next is asked for)."""
        ids = [int(t) for t in ids]
        if not ids:
            raise ValueError("generate() needs at least one context token (e.g. <|endoftext|>)")
        cache = self.new_cache(1) if cache is None else cache
        keep = 0  # the longest common prefix of the cache and ids, short of the last id: fed, for its logits
        while keep < min(len(cache.tokens), len(ids) - 1) and cache.tokens[keep] == ids[keep]:
            keep += 1
        cache.truncate(keep)
        was_training = self.training
        self.eval()
        try:
            feed = ids[keep:]
            for _ in range(max_new_tokens):
                x = self.hidden(torch.tensor([feed], device=self.wte.weight.device), cache)
                cache.tokens += feed
                token = sample(self.lm_head(x[0, -1]).float(), temperature, top_k, top_p)
                yield token
                if token in stop_ids:
                    break
                feed = [token]
        finally:
            self.train(was_training)


def sample(logits, temperature=1.0, top_k=None, top_p=None):  # one token id from (vocab,) logits; temperature 0: greedy
    if temperature == 0:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k:
        kth_largest = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None and top_p < 1.0:  # nucleus: the fewest tokens whose probabilities reach top_p
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        drop_sorted = probs.cumsum(-1) - probs >= top_p  # keeps the token that crosses top_p
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return int(torch.multinomial(logits.softmax(-1), 1))


# --- training helpers: the precision, Muon, the learning-rate schedule, the chunked loss, MFU -----
def training_precision(device, dtype="auto"):
    """(dtype, autocast, GradScaler: a no-op unless float16) to train on device. "auto": bfloat16 on GPUs of compute
    capability >= 8.0; float16 below (T4, V100: bf16 is emulated, ~10x slower, no flash attention); CPU/MPS: float32."""
    kind = torch.device(device).type
    if dtype == "auto" and kind == "cuda":  # compute capability (7, 5): a T4; (8, 0): an A100
        dtype = "bfloat16" if torch.cuda.get_device_capability(device) >= (8, 0) else "float16"
    dtype = "float32" if dtype == "auto" else dtype
    autocast = torch.autocast(kind, dtype=getattr(torch, dtype), enabled=dtype != "float32")
    return dtype, autocast, torch.amp.GradScaler(kind, enabled=dtype == "float16")


# Muon (Keller Jordan, 2024; modded-nanogpt, nanochat): Nesterov momentum, then each of the blocks' matrices moves
# by U V^T of the update's U S V^T: every direction alike, where a raw gradient is nearly low-rank.
def orthogonalise(g, steps=5):
    """~U V^T by a quintic Newton-Schulz iteration on each singular value (Frobenius-normed, all start <= 1),
    its coefficients tuned to pull small ones up fast, not to converge: all end within ~0.7-1.2."""
    x = g / (g.norm() + 1e-7)
    x = x if x.size(0) <= x.size(1) else x.T  # x @ x.T: the smaller of the two products
    for _ in range(steps):
        gram = x @ x.T
        x = 3.4445 * x + (-4.7750 * gram + 2.0315 * gram @ gram) @ x
    return x if x.shape == g.shape else x.T


class Muon(torch.optim.AdamW):
    """AdamW, but the groups with muon=True take Muon's step. Under DDP each process holds the whole all-reduced
    gradients and takes this same step on its own copy: correct with no communication."""
    @torch.no_grad()
    def step(self):
        for group in (g for g in self.param_groups if g.get("muon")):
            for p in (p for p in group["params"] if p.grad is not None):
                state = self.state[p]
                if not state:  # a step count too: AdamW's load_state_dict expects one
                    state.update(step=torch.tensor(0.0), momentum=torch.zeros_like(p))
                state["step"] += 1
                state["momentum"].lerp_(p.grad, 1 - group["momentum"])
                update = orthogonalise(p.grad.lerp(state["momentum"], group["momentum"]))  # Nesterov
                p.add_(update, alpha=-group["lr"] * max(1, p.size(0) / p.size(1)) ** 0.5)  # tall: same RMS
                p.grad = None  # used: AdamW's step, below, passes over a parameter without a gradient
        return super().step()


def learning_rate_at(step, max_lr, min_lr, warmup_iters, decay_iters, schedule="cosine", decay_frac=0.2):
    """Linear warmup, then "cosine" decay to min_lr at decay_iters, or "wsd": flat, then linear over decay_frac."""
    if step < warmup_iters:
        return max_lr * (step + 1) / warmup_iters
    if schedule == "wsd":
        decay_start = decay_iters * (1 - decay_frac)
        left = max(0.0, decay_iters - step) / (decay_iters - decay_start)  # of the decay, from 1 to 0
        return max_lr if step < decay_start else min_lr + (max_lr - min_lr) * left
    progress = min(1.0, (step - warmup_iters) / max(1, decay_iters - warmup_iters))
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (max_lr - min_lr)


# The chunked loss, a CPU speed trick: the mean cross-entropy of the logits h @ weight.T against targets
# (-1: ignored). The head and its loss are ~40% of a small model's training step, passes over logits
# (128 MB at darija_small's shape) far larger than a CPU's cache; a cache-sized chunk of rows at a time,
# its gradient worked out on the spot, trains faster and lighter (bench/README.md).
class ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets):
        counted = targets != -1
        share = counted / counted.sum()  # each row's weight in the mean (NaN if none, like F.cross_entropy)
        rows = max(16, 2 ** 21 // weight.size(0))  # 2M logits a chunk: 8 MB, inside a CPU's L3 cache
        loss, grad_h, grad_weight = h.new_zeros(()), torch.empty_like(h), torch.zeros_like(weight)
        for i in range(0, h.size(0), rows):
            h_chunk, row_share = h[i:i + rows], share[i:i + rows, None]
            target = targets[i:i + rows].clamp_min(0)[:, None]
            logprobs = torch.log_softmax(h_chunk @ weight.t(), dim=-1)
            loss -= (logprobs.gather(1, target) * row_share).sum()
            grad_logits = logprobs.exp_().scatter_add_(1, target, torch.full_like(row_share, -1.0))  # softmax - one-hot
            torch.mm(grad_logits, weight, out=grad_h[i:i + rows]).mul_(row_share)  # scale the thin factor
            grad_weight.addmm_(grad_logits.t(), h_chunk * row_share)
        ctx.save_for_backward(grad_h, grad_weight)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_weight = ctx.saved_tensors
        return grad_h * grad_loss, grad_weight * grad_loss, None


# eager inside compiled graphs: traced, its loop would unroll chunk by chunk
chunked_cross_entropy = torch.compiler.disable(ChunkedCrossEntropy.apply)


# Dense bf16 peaks (T4, V100: fp16, which they train in), by the first key that is whole words of the name
PEAK_FLOPS = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "H200 NVL": 835e12, "H200": 989e12,
              "A100": 312e12, "L40S": 362e12, "L40": 181e12, "L4": 121e12, "A10G": 70e12, "A10": 125e12,
              "4090": 165e12, "3090": 71e12, "V100": 125e12, "T4": 65e12}


def peak_flops(device):  # the peak FLOP/s of a CUDA device (the table above) by its name; 0 when unknown or not CUDA
    if torch.device(device).type != "cuda":
        return 0
    words = f" {torch.cuda.get_device_name(device).replace('-', ' ')} "
    return next((flops for key, flops in PEAK_FLOPS.items() if f" {key} " in words), 0)


def estimate_mfu(model, tokens_per_sec, peak, world=1):  # model FLOPs utilisation of each of `world` GPUs
    return model.flops_per_token() * tokens_per_sec / world / peak


# --- checkpoints (docs/formats.md) ---------------------------------------------------------------
CHECKPOINT_KEYS, CHECKPOINT_KINDS = ("model", "model_config", "kind"), ("base", "sft", "lora_merged")


def unwrap(model):  # the GPT inside a DDP and/or torch.compile wrapper
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_checkpoint(path, model, kind="base", step=0, best_val_loss=None, config=None,
                    tokenizer=None, tokenizer_sha256=None, optimizer=None, scaler=None):
    """Write a checkpoint atomically (kind: base, sft or lora_merged; optimizer and fp16 loss scale for resuming)."""
    if kind not in CHECKPOINT_KINDS:
        raise ValueError(f"checkpoint kind must be one of {', '.join(CHECKPOINT_KINDS)}, got {kind!r}")
    model = unwrap(model)
    ckpt = {"model": model.state_dict(), "model_config": asdict(model.config), "kind": kind,
            "tokenizer": None if tokenizer is None else str(tokenizer), "tokenizer_sha256": tokenizer_sha256,
            "step": int(step), "best_val_loss": None if best_val_loss is None else float(best_val_loss),
            "config": plain(config or {})}  # configurator.plain: what torch.load(weights_only=True) accepts
    if optimizer is not None:  # to resume exactly: and the fp16 loss scale ({} when not training in fp16)
        ckpt["optimizer"], ckpt["scaler"] = optimizer.state_dict(), scaler.state_dict() if scaler else {}
    atomic_save(ckpt, path)


def atomic_save(obj, path):  # torch.save, written whole or not at all (configurator.atomic_write)
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path, map_location="cpu"):  # a checkpoint dict (a folder: its best.pt), clear errors for bad files
    path = os.path.join(path, "best.pt") if os.path.isdir(path) else path
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}: train one first (python pretrain.py config/...)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, a pickle with foreign objects, not a torch file at all
        raise ValueError(f"{path} is not a readable checkpoint (truncated, corrupt or not written by model.py's "
                         f"save_checkpoint): {(str(e).splitlines() or [type(e).__name__])[0][:200]}") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"{path} is not a darija-gpt checkpoint: missing {', '.join(missing)}")
    return ckpt


def load_with_tokenizer(path, map_location="cpu"):
    """A checkpoint and the tokenizer it names, checked (sha256) to be the very file it was trained with
    -> (ckpt, tokenizer, tokenizer path). Every problem is a ValueError or FileNotFoundError saying what to do."""
    ckpt = load_checkpoint(path, map_location)
    tok_path = ckpt.get("tokenizer")
    if not tok_path:
        raise ValueError(f"{path} does not name its tokenizer file (saved without tokenizer=...): re-save it with one")
    in_root = os.path.join(os.path.dirname(os.path.abspath(__file__)), tok_path)  # paths are relative to the root
    tok_path = in_root if not os.path.isfile(tok_path) and os.path.isfile(in_root) else tok_path
    if not os.path.isfile(tok_path):
        raise ValueError(f"{path} was trained with the tokenizer {tok_path}, which does not exist: run from the "
                         f"project root, or rebuild the data (python prepare.py config/NAME.py)")
    if ckpt.get("tokenizer_sha256") and sha256_of(tok_path) != ckpt["tokenizer_sha256"]:
        raise ValueError(f"{tok_path} has changed since {path} was trained (its sha256 differs from the one in the "
                         f"checkpoint): its ids would decode to the wrong text; restore that file or train again")
    return ckpt, Tokenizer.load(tok_path), tok_path


def model_from_checkpoint(ckpt):  # a GPT of a loaded checkpoint's model_config and weights (on their device)
    unknown = sorted(set(ckpt["model_config"]) - {f.name for f in fields(GPTConfig)})
    if unknown:
        raise ValueError(f"checkpoint model_config has unknown keys {unknown}: written by a newer model.py?")
    model = GPT(GPTConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(next(iter(ckpt["model"].values())).device)  # where the weights were loaded


def sha256_of(path):  # what ties a model to its tokenizer, and an adapter to its base
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
