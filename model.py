"""
The GPT: a small modern decoder-only Transformer, its KV-cached generation, and the
checkpoint format every later stage reads. Shared by pretrain.py, sft.py, lora.py, chat.py.

Architecture (each choice and why):
- token embedding, optionally tied to the output head (tie_embeddings): tying saves
  vocab_size x n_embd parameters, which is most of a small model's budget.
- rotary position embeddings (RoPE) instead of learned positions: relative positions, no
  position table, and a KV cache that stays valid as the context grows. Angles are computed on
  the fly in float32; one complex multiply rotates them (eager, and compiled on the CPU);
  torch.compile on a GPU uses the real form.
- RMSNorm pre-norm with no learnable gain (nanochat): no mean and no parameters. There is no
  native CPU kernel for it, so its backward is written out (RMSNorm below): half the kernels.
- MLP: "swiglu" (Llama: silu(x W_gate) * (x W_fc), hidden 8/3 n_embd so the parameter count
  matches a 4x MLP) or "relu2" (relu(x W_fc)^2, hidden 4 n_embd: Primer / modded-nanoGPT).
- grouped-query attention when n_kv_head < n_head: a smaller KV cache for generation.
- attention through F.scaled_dot_product_attention (flash kernels on CUDA); q, k and v are three
  named nn.Linear layers (adapters can target each) computed with one matmul of their stacked weights.
- no biases anywhere; init N(0, 0.02) with residual projections scaled by 1/sqrt(2 n_layer)
  so the residual stream does not grow with depth (GPT-2).
- the loss: training on the CPU runs the head and cross-entropy a chunk of rows at a time
  (HeadCrossEntropy), never building the (tokens x vocab) logits; elsewhere F.cross_entropy.

API (stable: sft.py, lora.py and chat.py build on it)
    cfg = GPTConfig(vocab_size=8192, block_size=256, n_layer=4, n_head=4, n_embd=256)
    model = GPT(cfg)
    logits, _ = model(idx)               # idx: (B, T) int64 -> logits (B, T, vocab_size)
    _, loss = model(idx, targets)        # targets (B, T), -1 = ignored: loss = mean cross-entropy
                                         # over the others (NaN if every target is -1); logits None
    model.num_params()                   # unique parameters (a tied embedding counted once)
    model.flops_per_token()              # training FLOPs per token (6N + attention), for MFU
    estimate_mfu(model, tokens_per_sec, peak_flops(device))   # peak: dense bf16 FLOP/s of a known GPU
    opt = model.configure_optimizers(weight_decay, learning_rate, betas, device_type)

  Linear layers are plain nn.Linear, named (per block i, prefix "blocks.i."):
    attn.c_q, attn.c_k, attn.c_v, attn.c_proj, mlp.c_fc, mlp.c_gate (swiglu only), mlp.c_proj;
    the head is lm_head (its weight is wte.weight when tied).

  Generation with a KV cache that lives across calls (chat keeps one across turns):
    cache = model.new_cache(batch_size=1)
    for tok in model.generate(ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                              stop_ids=(), cache=cache): ...
    - ids: the whole context as a list of ints (batch size 1). The cache remembers which tokens
      it holds (cache.tokens); generate keeps the longest common prefix of cache.tokens and ids
      and feeds only the rest, so passing the full conversation each turn costs only the new part.
    - yields ints one at a time; a token in stop_ids is yielded, then generation stops.
      temperature=0 means greedy.
    - when generation ends the cache holds the context and every yielded token EXCEPT the last
      one (a token is fed only when the next one is asked for). len(cache) == len(cache.tokens)
      is its length; cache.truncate(n) keeps the first n tokens; cache.reset() empties it.
    - the cache holds at most block_size tokens. Feeding more raises ContextFullError (a
      ValueError) before anything is changed; RoPE positions are baked into the cached keys, so
      to drop old turns, call generate again with the shorter context: the cache is rebuilt.

  Checkpoints (README "Checkpoints"):
    save_checkpoint(path, model, kind="base", step=0, best_val_loss=None, config=None,
                    tokenizer=None, tokenizer_sha256=None, optimizer=None)  # atomic
    ckpt = load_checkpoint(path_or_dir, map_location="cpu")   # a directory means its best.pt
    model = model_from_checkpoint(ckpt)                        # a GPT with the weights loaded
"""
import math
import os
import warnings
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    vocab_size: int = 8192
    block_size: int = 256       # longest context (training windows and the KV cache)
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
    pass


class RMSNorm(torch.autograd.Function):
    """x / sqrt(mean(x^2) + eps) over the last dim, with its backward written out: autograd's
    version of the same formula (or F.rms_norm) runs ~2x more kernels on CPU and is 2x slower."""

    @staticmethod
    def forward(ctx, x):
        r = torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-6)
        y = x * r
        ctx.save_for_backward(y, r)
        return y

    @staticmethod
    def backward(ctx, grad):  # d/dx of x r: r (g - y mean(g y)), y = x r
        y, r = ctx.saved_tensors
        return r * (grad - y * (grad * y).mean(-1, keepdim=True))


def norm(x):
    return RMSNorm.apply(x)


# On the CPU the complex multiply below runs inside compiled graphs as one eager kernel, which is
# what makes it faster there; inductor warns that it generates no code for complex ops.
warnings.filterwarnings("ignore", message="Torchinductor does not support code generation for complex")


def apply_rotary(x, cos, sin):
    # x: (B, T, H, D). Each pair of features (2i, 2i+1) is rotated by the angle position x theta^(-2i/D).
    # Inductor has no GPU kernels for complex numbers, so compiled off the CPU the real form runs; on
    # the CPU the complex multiply is faster, eager and compiled (a training step 5% faster compiled).
    if torch.compiler.is_compiling() and x.device.type != "cpu":
        return rotate_real(x, cos, sin)
    return rotate_complex(x, cos, sin)


def rotate_complex(x, cos, sin):  # the pair as a complex number times e^(i angle): one multiply
    rotated = torch.view_as_complex(x.float().unflatten(-1, (-1, 2))) * torch.complex(cos, sin)[:, None]
    return torch.view_as_real(rotated).flatten(-2).type_as(x)


def rotate_real(x, cos, sin):  # the same rotation written out, which inductor fuses on GPUs
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[:, None], sin[:, None]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2).type_as(x)


class KVCache:
    """Keys and values of every layer for the tokens fed so far, preallocated to block_size."""

    def __init__(self, config, batch_size, device, dtype):
        shape = (config.n_layer, 2, batch_size, config.n_kv_head, config.block_size, config.n_embd // config.n_head)
        self.kv = torch.zeros(shape, device=device, dtype=dtype)
        self.block_size = config.block_size
        self.tokens = []   # the token ids held (batch size 1; generate() keeps it)
        self.pos = 0       # how many positions are filled

    def __len__(self):
        return self.pos

    def reset(self):
        self.truncate(0)

    def truncate(self, n):
        """Keep the first n tokens (later positions are simply overwritten when fed again)."""
        self.pos = min(self.pos, n)
        self.tokens = self.tokens[:self.pos]

    def update(self, layer, k, v):
        """Store k, v (B, Hkv, T, D) at the current position; return all keys/values so far."""
        t = k.size(2)
        self.kv[layer, 0, :, :, self.pos:self.pos + t] = k
        self.kv[layer, 1, :, :, self.pos:self.pos + t] = v
        return self.kv[layer, 0, :, :, :self.pos + t], self.kv[layer, 1, :, :, :self.pos + t]


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        self.head_dim = config.n_embd // config.n_head
        self.c_q = nn.Linear(config.n_embd, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.dropout = config.dropout

    def forward(self, x, cos, sin, cache):
        B, T, C = x.shape
        if type(self.c_q) is type(self.c_k) is type(self.c_v) is nn.Linear:
            # One matmul for q, k and v together: on CPU three small matmuls cost far more than one.
            qkv = F.linear(x, torch.cat([self.c_q.weight, self.c_k.weight, self.c_v.weight]))
        else:  # wrapped layers (LoRA adapters) are called one by one
            qkv = torch.cat([self.c_q(x), self.c_k(x), self.c_v(x)], -1)
        qk, v = qkv.view(B, T, self.n_head + 2 * self.n_kv_head, self.head_dim).split(
            [self.n_head + self.n_kv_head, self.n_kv_head], 2)
        q, k = apply_rotary(qk, cos, sin).split([self.n_head, self.n_kv_head], 2)  # one rotation for both
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        past = 0
        if cache is not None:
            past = cache.pos
            k, v = cache.update(self.layer, k, v)
        if self.n_kv_head != self.n_head:  # each group of query heads shares one key/value head
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        dropout = self.dropout if self.training else 0.0
        if past == 0:       # training or a first prefill: plain causal attention
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        elif T == 1:        # one new token attends to everything cached
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        else:               # T new tokens after `past` cached ones: query i sees keys <= past + i
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
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
            h = h * h  # not .square(): its backward takes the generic pow kernel, 3x slower on CPU
        return F.dropout(self.c_proj(h), self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, cache):
        x = x + self.attn(norm(x), cos, sin, cache)
        return x + self.mlp(norm(x))


class HeadCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of the logits h W^T against targets (-1: ignored), for float32 on the CPU,
    computed a cache-sized chunk of rows at a time with its gradient (softmax - one-hot) worked
    out on the spot: the (tokens x vocab) logits, their log-softmax and its gradient are never
    all in memory, which makes the head and loss ~20% faster than logits + F.cross_entropy
    (the head is ~40% of darija_small's step). Backward only scales the saved gradients."""

    @staticmethod
    def forward(ctx, h, weight, targets):
        valid = targets != -1
        share = valid / valid.sum()  # each counted row's weight in the mean (NaN if none: as F.cross_entropy)
        rows = max(16, 2 ** 21 // weight.size(0))  # 2M logits a chunk: 8 MB, inside a CPU's L3 cache
        loss, grad_h, grad_w = h.new_zeros(()), torch.empty_like(h), torch.zeros_like(weight)
        for i in range(0, h.size(0), rows):
            hc, tc, sc = h[i:i + rows], targets[i:i + rows].clamp_min(0)[:, None], share[i:i + rows, None]
            logprobs = torch.log_softmax(hc @ weight.t(), -1)
            loss -= (logprobs.gather(1, tc) * sc).sum()
            dlogits = logprobs.exp_().scatter_add_(1, tc, torch.full_like(sc, -1.0))  # softmax - one-hot
            torch.mm(dlogits, weight, out=grad_h[i:i + rows]).mul_(sc)  # scaling the thin factors, not dlogits
            grad_w.addmm_(dlogits.t(), hc * sc)
        ctx.save_for_backward(grad_h, grad_w)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_loss, grad_w * grad_loss, None


@torch.compiler.disable  # runs eagerly inside compiled graphs: its loop would be unrolled, chunk by chunk
def chunked_cross_entropy(h, weight, targets):
    return HeadCrossEntropy.apply(h, weight, targets)


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # residual projections: keep the stream's variance flat
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())  # parameters() yields a tied weight once

    def forward(self, idx, targets=None, cache=None):
        """idx (B, T) -> (logits (B, T, vocab), None), or with targets (None, loss): training needs
        only the loss, and on the CPU the logits are never built whole. With a cache, idx follows
        its tokens."""
        h = self.hidden(idx, cache)
        if targets is None:
            return self.lm_head(h), None
        h, targets = h.reshape(-1, h.size(-1)), targets.reshape(-1)
        head = self.lm_head
        if (h.device.type == "cpu" and torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
                and hasattr(head, "weight") and h.dtype == head.weight.dtype == torch.float32):
            return None, chunked_cross_entropy(h, head.weight, targets)  # (a LoRALinear head has no .weight)
        return None, F.cross_entropy(head(h).float(), targets, ignore_index=-1)

    def hidden(self, idx, cache=None):
        """The final normed hidden states (B, T, n_embd); advances the cache when given one."""
        B, T = idx.shape
        past = cache.pos if cache is not None else 0
        if past + T > self.config.block_size:
            raise ContextFullError(f"context of {past + T} tokens is longer than block_size "
                                   f"{self.config.block_size}: drop old tokens (reset the cache) and retry")
        x = self.wte(idx)
        cos, sin = self.rotary_angles(past, T, idx.device)
        for block in self.blocks:
            x = block(x, cos, sin, cache)
        if cache is not None:
            cache.pos += T
        return norm(x)

    def rotary_angles(self, start, T, device):
        """cos and sin (T, head_dim/2) of the RoPE angles of positions start..start+T-1. Computed on
        the fly in float32 (a few thousand numbers): no buffer that a cast to bf16 could degrade."""
        head_dim = self.config.n_embd // self.config.n_head
        inv_freq = self.config.rope_theta ** (-torch.arange(0, head_dim, 2, device=device).float() / head_dim)
        angles = torch.outer(torch.arange(start, start + T, device=device).float(), inv_freq)
        return angles.cos(), angles.sin()

    def new_cache(self, batch_size=1):
        p = self.lm_head.weight
        return KVCache(self.config, batch_size, p.device, p.dtype)

    @torch.no_grad()
    def generate(self, ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop_ids=(), cache=None):
        """Yield up to max_new_tokens sampled token ids after `ids` (see the module docstring)."""
        ids = [int(t) for t in ids]
        if not ids:
            raise ValueError("generate() needs at least one context token (e.g. <|endoftext|>)")
        cache = self.new_cache(1) if cache is None else cache
        keep = 0  # longest common prefix of what is cached and the new context
        while keep < min(len(cache.tokens), len(ids)) and cache.tokens[keep] == ids[keep]:
            keep += 1
        keep = min(keep, len(ids) - 1)  # feed at least one token: its logits give the next token
        if len(ids) > self.config.block_size:
            raise ContextFullError(f"context of {len(ids)} tokens is longer than block_size "
                                   f"{self.config.block_size}: drop old tokens and retry")
        cache.truncate(keep)
        device = self.lm_head.weight.device
        was_training = self.training
        self.eval()
        try:
            feed = ids[keep:]
            for _ in range(max_new_tokens):
                h = self.hidden(torch.tensor([feed], device=device), cache)
                cache.tokens += feed
                logits = self.lm_head(h[0, -1]).float()
                token = sample(logits, temperature, top_k, top_p)
                yield token
                if token in stop_ids:
                    break
                feed = [token]
        finally:
            self.train(was_training)

    def flops_per_token(self):
        """Training FLOPs per token: 6 per parameter (forward + backward) + attention (PaLM appendix B)."""
        c = self.config
        n = self.num_params() - (0 if c.tie_embeddings else self.wte.weight.numel())  # lookup is free
        return 6 * n + 6 * c.n_layer * c.n_embd * c.block_size  # 12·L·H·Q·T with causal half-masking

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """AdamW; weight decay on matrices (linear and embedding weights) only; fused on CUDA."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
        fused = device_type == "cuda"
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused or None)


def sample(logits, temperature=1.0, top_k=None, top_p=None):
    """One token id from a (vocab,) logit vector; temperature 0 is greedy."""
    if temperature == 0:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:  # nucleus: the smallest set of tokens with mass >= top_p
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return int(torch.multinomial(logits.softmax(-1), 1))


def estimate_mfu(model, tokens_per_sec, peak_flops):
    """Model FLOPs utilisation: achieved training FLOP/s over the device's peak (e.g. 989e12 H100 bf16)."""
    return model.flops_per_token() * tokens_per_sec / peak_flops


PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12,
                   "L4": 121e12, "4090": 165e12, "3090": 71e12, "V100": 125e12, "T4": 65e12}  # dense


def peak_flops(device):
    """The dense bf16 peak FLOP/s of a CUDA device, from its name; 0 when unknown (or not CUDA)."""
    if torch.device(device).type != "cuda":
        return 0
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), 0)


# --- checkpoints ---------------------------------------------------------------------------------

CHECKPOINT_KEYS = ("model", "model_config", "kind")


def _plain(value):
    """Settings reduced to what torch.load(weights_only=True) accepts: numbers, strings, lists, dicts."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def unwrap(model):
    """The GPT inside a DDP and/or torch.compile wrapper."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_checkpoint(path, model, kind="base", step=0, best_val_loss=None, config=None,
                    tokenizer=None, tokenizer_sha256=None, optimizer=None):
    """Write a checkpoint atomically: a temp file next to `path`, then os.replace."""
    if kind not in ("base", "sft", "lora_merged"):
        raise ValueError(f"checkpoint kind must be 'base', 'sft' or 'lora_merged', got {kind!r}")
    model = unwrap(model)
    ckpt = {
        "model": model.state_dict(),
        "model_config": asdict(model.config),
        "tokenizer": None if tokenizer is None else str(tokenizer),
        "tokenizer_sha256": tokenizer_sha256,
        "kind": kind,
        "step": int(step),
        "best_val_loss": None if best_val_loss is None else float(best_val_loss),
        "config": _plain(config or {}),
    }
    if optimizer is not None:
        ckpt["optimizer"] = optimizer.state_dict() if hasattr(optimizer, "state_dict") else optimizer
    atomic_save(ckpt, path)


def atomic_save(obj, path):
    """torch.save to a temporary file, then rename: a crash never leaves a half-written file at path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint dict (a directory means its best.pt), with clear errors for bad files."""
    if os.path.isdir(path):
        path = os.path.join(path, "best.pt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}: train one first (python pretrain.py config/...)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, a pickle with foreign objects, not a torch file at all
        raise ValueError(f"{path} is not a readable checkpoint (truncated, corrupt or not written by "
                         f"model.py's save_checkpoint): {str(e).splitlines()[0][:200]}") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"{path} is not a darija-gpt checkpoint: missing {', '.join(missing)}")
    return ckpt


def model_from_checkpoint(ckpt):
    """A GPT built from a loaded checkpoint's model_config, with its weights (on the tensors' device)."""
    known = {f.name for f in fields(GPTConfig)}
    unknown = sorted(set(ckpt["model_config"]) - known)
    if unknown:
        raise ValueError(f"checkpoint model_config has unknown keys {unknown}: written by a newer model.py?")
    model = GPT(GPTConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    device = next(iter(ckpt["model"].values())).device
    return model.to(device)


# ---- LoRA adapters ----
# Owned by the LoRA stage (lora.py trains them, chat.py applies them; they live here because stages
# never import each other). LoRA (Hu et al. 2021) freezes a pre-trained linear layer W and learns a
# low-rank update: y = W x + (alpha / r) B A x, with A (r x in) and B (out x r), r << in, out.
# - A starts like nn.Linear's own weight (kaiming-uniform) and B at zero, so an added adapter
#   changes nothing until it is trained.
# - the update is scaled by alpha / r (the course scaled by alpha): changing r then keeps the
#   size of the update, so a learning rate found at one rank works at another.
# - merge() folds (alpha / r) B A into W: the merged model is a plain GPT, as fast as the base.
#
#   wrapped = add_lora(model, rank=8, alpha=16, targets=("c_q", "c_k", "c_v", "c_proj"), dropout=0.0)
#   lora_state_dict(model)                       # {"blocks.0.attn.c_q.lora_A": tensor, ...}
#   save_adapter(path, model, base_path, base_sha256, rank, alpha, targets, ...)   # atomic
#   merge_lora(model)                            # adapters folded in, plain nn.Linear again
#   model = apply_adapter(model_from_checkpoint(ckpt), adapter_path, sha256_of(ckpt_path))
#
# Targets: a target names a linear layer by the end of its dotted name, at a dot boundary. Layer
# names are blocks.i.attn.{c_q,c_k,c_v,c_proj} and blocks.i.mlp.{c_fc,c_gate,c_proj}, so
# "c_proj" matches BOTH attn.c_proj and mlp.c_proj (every layer that writes into the residual
# stream); write "attn.c_proj" or "mlp.c_proj" for one of them. A target matching nothing is an
# error. Embeddings and lm_head stay frozen unless named ("lm_head" is refused when tied to wte).
#
# The embedding (opt-in; EmbeddingUpdate, shared by the embedding and a tied head):
# - token_ids: the chat template's special tokens (<|user|>, <|assistant|>, <|end|>...) never occur
#   in pre-training, so their rows mean nothing as inputs and, in the (tied) head, are trained only
#   to be never predicted, yet every answer must end by predicting <|end|>. add_lora(...,
#   token_ids=ids) trains the rows of those (or any chosen) tokens outright (n x n_embd numbers),
#   as PEFT's trainable_token_indices does; lora.py adds the tokens its task needs most.
# - embedding_rank=r: a low-rank update of the whole (vocab x n_embd) matrix, (alpha / r) B A, as
#   loralib's Embedding: r x (vocab + n_embd) numbers that can move every token a little (e.g. the
#   English tokens a Darija base barely trained), where full fine-tuning moves each row freely.

import hashlib  # noqa: E402  (only the adapter files need it)

LORA_FORMAT = "darija-gpt-lora"


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update: base(x) + (alpha / r) B(A(dropout(x)))."""

    def __init__(self, base, rank, alpha, dropout=0.0):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base.requires_grad_(False)
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # exactly nn.Linear's default init
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=w.dtype))
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.merged = False

    def forward(self, x):
        y = self.base(x)
        if self.merged:  # the update is inside base.weight already
            return y
        return y + self.scale * F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)

    def delta(self):
        """The update (alpha / r) B A as a weight matrix, computed in float32."""
        return self.scale * (self.lora_B.float() @ self.lora_A.float())

    @torch.no_grad()
    def merge(self):
        if not self.merged:
            w = self.base.weight
            w.copy_((w.float() + self.delta()).to(w.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            w = self.base.weight
            w.copy_((w.float() - self.delta()).to(w.dtype))
            self.merged = False


class EmbeddingUpdate(nn.Module):
    """A frozen token embedding (nn.Embedding) or head (nn.Linear), the same (vocab x n_embd) matrix
    W, used as W + (alpha / r) B A (B (vocab x r) zero, A (r x n_embd); when rank > 0) with the rows
    of token_ids then replaced by trainable `rows` (when given). A tied embedding and head share
    the parameters, passed in as `params`."""

    def __init__(self, base, params, token_ids, scale):
        super().__init__()
        self.base = base.requires_grad_(False)
        for name, p in params.items():  # lora_A, lora_B and/or rows
            setattr(self, name, p)
        self.register_buffer("token_ids", torch.tensor(token_ids, dtype=torch.long, device=base.weight.device),
                             persistent=False)
        self.scale, self.merged = scale, False

    @property
    def weight(self):
        w = self.base.weight
        if self.merged:
            return w
        if hasattr(self, "lora_A"):
            w = w + (self.scale * (self.lora_B.float() @ self.lora_A.float())).to(w.dtype)
        if hasattr(self, "rows"):
            w = w.index_copy(0, self.token_ids, self.rows.to(w.dtype))
        return w

    def forward(self, x):
        return F.embedding(x, self.weight) if isinstance(self.base, nn.Embedding) else F.linear(x, self.weight)

    @torch.no_grad()
    def merge(self):  # the replaced rows are lost: a merged model cannot be unmerged
        self.base.weight.copy_(self.weight)
        self.merged = True


def _short(name):
    """blocks.3.attn.c_q -> attn.c_q: the per-block name a target is written with."""
    parts = name.split(".")
    return ".".join(parts[2:]) if parts[0] == "blocks" else name


def add_lora(model, rank, alpha, targets=("c_q", "c_k", "c_v", "c_proj"), dropout=0.0, token_ids=(),
             embedding_rank=0):
    """Freeze every parameter, wrap the nn.Linear layers matching `targets` (see above) in
    LoRALinear and, given token_ids or embedding_rank, the embedding and head in EmbeddingUpdate;
    return the names of the linear layers given adapters, in model order."""
    model = unwrap(model)
    if any(isinstance(m, (LoRALinear, EmbeddingUpdate)) for m in model.modules()):
        raise ValueError("the model already has LoRA adapters: merge_lora(model) first")
    model.requires_grad_(False)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    chosen = set()
    for target in targets:
        hits = [n for n, _ in linears if n == target or n.endswith("." + target)]
        if not hits:
            names = sorted({_short(n) for n, _ in linears})
            raise ValueError(f"LoRA target {target!r} matches no linear layer; choose among {', '.join(names)}")
        chosen.update(hits)
    wrapped = []
    for name, module in linears:
        if name not in chosen:
            continue
        if name == "lm_head" and model.config.tie_embeddings:
            raise ValueError("lm_head is tied to the token embedding (tie_embeddings=True): an adapter on it "
                             "would also change the embedding; leave lm_head out of the targets")
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, LoRALinear(module, rank, alpha, dropout))
        wrapped.append(name)
    if token_ids or embedding_rank:
        token_ids = sorted({int(t) for t in token_ids})
        if token_ids and not 0 <= token_ids[0] <= token_ids[-1] < model.config.vocab_size:
            raise ValueError(f"token ids {token_ids} are not all in the vocabulary (0..{model.config.vocab_size - 1})")
        if isinstance(model.lm_head, LoRALinear) and (model.config.tie_embeddings or embedding_rank):
            raise ValueError("lm_head has a LoRA adapter: leave it out of the targets to update the embedding")

        def params(matrix):  # the trainable parts of one (vocab x n_embd) matrix
            p = {}
            if embedding_rank:
                p["lora_A"] = nn.Parameter(torch.empty(embedding_rank, matrix.size(1), device=matrix.device, dtype=matrix.dtype))
                nn.init.kaiming_uniform_(p["lora_A"], a=math.sqrt(5))
                p["lora_B"] = nn.Parameter(torch.zeros(matrix.size(0), embedding_rank, device=matrix.device, dtype=matrix.dtype))
            if token_ids:
                p["rows"] = nn.Parameter(matrix[token_ids].detach().clone())
            return p

        scale = alpha / embedding_rank if embedding_rank else 0.0
        shared = params(model.wte.weight)
        model.wte = EmbeddingUpdate(model.wte, shared, token_ids, scale)
        if not isinstance(model.lm_head, LoRALinear):
            head = shared if model.config.tie_embeddings else params(model.lm_head.weight)
            model.lm_head = EmbeddingUpdate(model.lm_head, head, token_ids, scale)
    return wrapped


def merge_lora(model):
    """Fold every adapter into its base weight and put the plain nn.Linear back, so the model
    saves as a normal checkpoint (save_checkpoint(..., kind="lora_merged")). Returns the model."""
    model = unwrap(model)
    merged = set()
    for name, module in list(model.named_modules()):
        if isinstance(module, (LoRALinear, EmbeddingUpdate)):
            if id(module.base.weight) not in merged:  # a tied head's weight is the embedding's: merged once
                module.merge()
                merged.add(id(module.base.weight))
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, module.base)
    return model


def lora_state_dict(model):
    """Only the adapter weights, {"blocks.0.attn.c_q.lora_A": tensor, ..., "wte.rows": tensor}
    (sharing storage with the model; a tied head's "lm_head.rows" is the same tensor as "wte.rows")."""
    return {k: v for k, v in unwrap(model).state_dict().items() if k.endswith((".lora_A", ".lora_B", ".rows"))}


def sha256_of(path):
    """sha256 of a file (a directory means its best.pt): what ties an adapter to its base."""
    if os.path.isdir(path):
        path = os.path.join(path, "best.pt")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_adapter(path, model, base_path, base_sha256, rank, alpha, targets, tokenizer=None,
                 tokenizer_sha256=None, config=None, token_ids=(), embedding_rank=0):
    """Write the adapter alone (README "Adapter file") atomically: a temp file, then os.replace."""
    adapter = {"format": LORA_FORMAT, "version": 1,
               "lora": {k: v.cpu() for k, v in lora_state_dict(model).items()},
               "rank": int(rank), "alpha": float(alpha), "targets": [str(t) for t in targets],
               "token_ids": sorted({int(t) for t in token_ids}), "embedding_rank": int(embedding_rank),
               "base": str(base_path), "base_sha256": base_sha256,
               "tokenizer": None if tokenizer is None else str(tokenizer), "tokenizer_sha256": tokenizer_sha256,
               "config": _plain(config or {})}
    if not adapter["lora"]:
        raise ValueError("the model has no LoRA adapters to save: add_lora(model, ...) first")
    atomic_save(adapter, path)


def load_adapter(path):
    """Load and check an adapter file; clear ValueErrors for anything else."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no adapter file at {path}: train one with `python lora.py config/...`")
    try:
        adapter = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable adapter file (truncated or corrupt): "
                         f"{str(e).splitlines()[0][:200]}") from None
    if not isinstance(adapter, dict) or adapter.get("format") != LORA_FORMAT:
        hint = " (it looks like a checkpoint: pass it as the checkpoint, not the adapter)" \
            if isinstance(adapter, dict) and "model" in adapter else ""
        raise ValueError(f"{path} is not a {LORA_FORMAT} adapter file{hint}")
    if adapter.get("version") != 1:
        raise ValueError(f"{path} is adapter format version {adapter.get('version')}; this model.py reads version 1")
    return adapter


def apply_adapter(model, adapter_path, base_sha256):
    """Add the adapter in `adapter_path` to `model` (built from the base checkpoint whose file
    hashes to base_sha256), load its weights, merge them, and return the model."""
    adapter = load_adapter(adapter_path)
    if adapter["base_sha256"] != base_sha256:
        raise ValueError(f"adapter {adapter_path} was trained on base {adapter['base']} "
                         f"(sha {adapter['base_sha256'][:12]}), not on this checkpoint (sha {base_sha256[:12]}): "
                         f"load the base it was trained on")
    model = unwrap(model)
    add_lora(model, adapter["rank"], adapter["alpha"], adapter["targets"], token_ids=adapter.get("token_ids", ()),
             embedding_rank=adapter.get("embedding_rank", 0))
    own = lora_state_dict(model)
    if set(own) != set(adapter["lora"]):
        raise ValueError(f"adapter {adapter_path} does not fit this model: its layers "
                         f"{sorted(set(adapter['lora']) ^ set(own))[:3]} differ")
    with torch.no_grad():
        for name, tensor in adapter["lora"].items():
            if own[name].shape != tensor.shape:
                raise ValueError(f"adapter {adapter_path}: {name} has shape {tuple(tensor.shape)}, "
                                 f"the model expects {tuple(own[name].shape)}")
            own[name].copy_(tensor)
    return merge_lora(model)
