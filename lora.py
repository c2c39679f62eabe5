"""
lora.py: instruction tuning with LoRA. The pre-trained (or SFT) GPT stays frozen; small low-rank
adapters learn the task on sft.py's dataset and loss. Section 1 is the LoRA layer, section 2 the run.

    python lora.py config/lora_darija.py            # trains out/darija_lora/adapter.pt
    python lora.py config/lora_darija.py --merge    # also out/darija_lora/best.pt, the merged model
    python chat.py --ckpt out/darija_small --adapter out/darija_lora/adapter.pt

LoRA (Hu et al. 2021) freezes a linear layer W and learns y = W x + (alpha / r) B A x, A (r x in) and B (out x r)
with r small. A starts like nn.Linear's weight and B at zero: a new adapter changes nothing. The scale is alpha / r
(the freeCodeCamp course this project reworks, Imad Saddik's, used alpha), so changing r keeps the update's size and
its learning rate. Merging folds the update into W: a plain GPT, as fast as the base. Targets name block linear
layers by the end of their name ("c_proj" is attn.c_proj and mlp.c_proj). The head is never wrapped (the course
did): a tied head is the embedding, which lora.py reaches by training chosen rows outright (token_ids, as PEFT's
trainable_token_indices) and by a low-rank update of the whole matrix (embedding_rank, as loralib).

The run: 1. load the base and hash its file (an adapter fits only the weights it was trained on); 2. read the SFT
dataset (`python sft.py --build_only` builds it when missing); 3. add adapters to every block linear, train the rows
of the chat tokens (a base never saw them, yet every answer ends by predicting <|end|>) and of the task_token_rows
tokens the SFT loss pulls hardest on (English ones, for a Darija base), and a low-rank embedding update; 4. train as
sft.py does, only adapters in the optimizer at a ~10x higher learning rate (B starts at zero), keeping the best
adapter and stopping early; 5. merge it into the base and score it with `python eval.py` (into out_dir/eval/).
"""
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from configurator import atomic_write, claim_output, configure, plain_name
from model import (atomic_save, learning_rate_at, load_checkpoint, load_with_tokenizer, model_from_checkpoint,
                   plain, save_checkpoint, sha256_of, training_precision, unwrap)

# --- settings (override with a config file and --key=value) ---
init_from = "out/darija_small"      # the frozen base: a pre-trained or SFT checkpoint (a folder: its best.pt)
out_dir = "out/darija_lora"
sft_dataset = "darija"              # data/sft/NAME/, as written by sft.py
sft_config = "config/sft_darija.py" # what sft.py builds the dataset from when it is missing ("": sft.py's defaults)
force = False                       # overwrite out_dir/adapter.pt (never files lora.py did not write)
merge = False                       # also write out_dir/best.pt: the base with the adapter merged in
merge_adapter = ""                  # only merge this adapter.pt into init_from ("": its base): chat.py --adapter
# the adapters (bench/README.md has the sweep behind these)
rank = 2
alpha = 10.0
targets = ["c_q", "c_k", "c_v", "c_proj", "c_fc"]  # every block linear ("c_proj": attn and mlp; swiglu: + "c_gate")
chat_token_rows = True              # also train the embedding rows of the chat tokens (new to a pre-trained base)
task_token_rows = 195               # and those of the N tokens the task pulls hardest on
embedding_rank = 2                  # > 0: also a rank-r update of the whole token embedding (and tied head)
# training
batch_size = 16
block_size = 0                      # 0: the checkpoint's context length
learning_rate = 6e-3
min_lr = 6e-4
warmup_iters = 50
max_iters = 2000                    # an upper bound: early stopping ends most runs sooner
weight_decay = 0.0
grad_clip = 1.0
eval_interval = 100
eval_iters = 20                     # val batches per evaluation (fixed rows, so evals compare)
patience = 4                        # evals without improvement before stopping
log_interval = 10
seed = 1337
device = "auto"                     # "auto": cuda when available, else cpu
dtype = "auto"                      # as sft.py's: "auto" (bf16 from compute capability 8.0, fp16 below; CPU: fp32)
compile = False
sample_prompts = ["Translate to English: kifach dayer? labas 3lik?",
                  "ktb liya hadi b l7orof l3arbiya: sba7 lkhir a sa7bi"]
metric_items = 100                  # held-out items per task for eval.py's chrF metric; 0 skips it
max_new_tokens = 64

if __name__ == "__main__":  # imported (tests, benchmarks), lora.py only lends its LoRA layers
    config = configure(globals())
CHAT_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
ROOT = os.path.dirname(os.path.abspath(__file__))


# --- 1. the LoRA layers ----------------------------------------------------------------------------
class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update: base(x) + (alpha / r) B(A(x))."""

    def __init__(self, base, rank, alpha):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base, self.scale = base.requires_grad_(False), alpha / rank
        like_base = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **like_base))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # exactly nn.Linear's default init
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **like_base))

    def forward(self, x):
        return self.base(x) + self.scale * F.linear(F.linear(x, self.lora_A), self.lora_B)

    @torch.no_grad()
    def merge(self):
        """Add the update (alpha / r) B A, in float32, into the base weight (merge_lora then drops us)."""
        weight = self.base.weight
        weight.copy_((weight.float() + self.scale * (self.lora_B.float() @ self.lora_A.float())).to(weight.dtype))


class EmbeddingUpdate(nn.Module):
    """A frozen token embedding (nn.Embedding) or head (nn.Linear), one (vocab x n_embd) matrix W, used
    as W + (alpha / r) B A (B (vocab x r) zero, A (r x n_embd), when embedding_rank r > 0), with the rows
    of token_ids replaced by trainable `rows` (when given). A tied head shares its embedding's (`twin`)."""

    def __init__(self, base, token_ids, embedding_rank, alpha, twin=None):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.scale = alpha / embedding_rank if embedding_rank else 0.0
        self.register_buffer("token_ids", torch.tensor(token_ids, dtype=torch.long, device=base.weight.device),
                             persistent=False)
        if twin is not None:  # the same parameters, so both uses train them
            self.lora_A, self.lora_B, self.rows = twin.lora_A, twin.lora_B, twin.rows
            return
        self.lora_A = self.lora_B = self.rows = None
        weight, like_base = base.weight, dict(device=base.weight.device, dtype=base.weight.dtype)
        if embedding_rank:
            self.lora_A = nn.Parameter(torch.empty(embedding_rank, weight.size(1), **like_base))
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            self.lora_B = nn.Parameter(torch.zeros(weight.size(0), embedding_rank, **like_base))
        if token_ids:
            self.rows = nn.Parameter(weight[token_ids].detach().clone())

    @property
    def weight(self):
        weight = self.base.weight
        if self.lora_A is not None:
            weight = weight + (self.scale * (self.lora_B.float() @ self.lora_A.float())).to(weight.dtype)
        if self.rows is not None:
            weight = weight.index_copy(0, self.token_ids, self.rows.to(weight.dtype))
        return weight

    def forward(self, x):  # looked up as an embedding, or applied as the head
        return F.embedding(x, self.weight) if isinstance(self.base, nn.Embedding) else F.linear(x, self.weight)

    @torch.no_grad()
    def merge(self):  # the replaced rows are lost: a merged model cannot be unmerged
        self.base.weight.copy_(self.weight)


def add_lora(model, rank, alpha, targets=("c_q", "c_k", "c_v", "c_proj"), token_ids=(), embedding_rank=0):
    """Freeze every parameter, wrap the block linear layers matching `targets` in LoRALinear and, given
    token_ids or embedding_rank, the embedding and head in EmbeddingUpdate. Returns the wrapped names."""
    model = unwrap(model)
    if any(isinstance(module, (LoRALinear, EmbeddingUpdate)) for module in model.modules()):
        raise ValueError("the model already has LoRA adapters: merge_lora(model) first")
    model.requires_grad_(False)
    linears = [name for name, module in model.named_modules()
               if isinstance(module, nn.Linear) and name.startswith("blocks.")]
    chosen = set()
    for target in targets:
        hits = [name for name in linears if name == target or name.endswith("." + target)]
        if not hits:
            names = sorted({name.split(".", 2)[2] for name in linears})
            raise ValueError(f"LoRA target {target!r} matches no linear layer; choose among {', '.join(names)} "
                             f"(the head is trained through chat_token_rows, task_token_rows, embedding_rank)")
        chosen.update(hits)
    wrapped = [name for name in linears if name in chosen]
    for name in wrapped:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, attr, LoRALinear(getattr(parent, attr), rank, alpha))
    if token_ids or embedding_rank:
        token_ids = sorted({int(t) for t in token_ids})
        if token_ids and not 0 <= token_ids[0] <= token_ids[-1] < model.config.vocab_size:
            raise ValueError(f"token ids {token_ids} are not all in the vocabulary (0..{model.config.vocab_size - 1})")
        model.wte = EmbeddingUpdate(model.wte, token_ids, embedding_rank, alpha)
        twin = model.wte if model.config.tie_embeddings else None
        model.lm_head = EmbeddingUpdate(model.lm_head, token_ids, embedding_rank, alpha, twin)
    return wrapped


def merge_lora(model):
    """Fold every adapter into its base weight and put the plain layers back: a normal GPT again."""
    model = unwrap(model)
    merged = set()
    for name, module in list(model.named_modules()):
        if isinstance(module, (LoRALinear, EmbeddingUpdate)):
            if id(module.base.weight) not in merged:  # a tied head's weight is the embedding's: merge it once
                module.merge()
                merged.add(id(module.base.weight))
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, module.base)
    return model


def lora_state_dict(model):
    """Only the adapter weights: {"blocks.0.attn.c_q.lora_A": tensor, ..., "wte.rows": tensor, ...}."""
    return {k: v for k, v in unwrap(model).state_dict().items() if k.endswith((".lora_A", ".lora_B", ".rows"))}


# The adapter file (docs/formats.md): the adapter weights, how to rebuild the layers, and the sha256
# of the base checkpoint file it was trained on.
LORA_FORMAT = "darija-gpt-lora"
ADAPTER_KEYS = ("lora", "rank", "alpha", "targets", "base", "base_sha256", "config")  # token_ids etc. came later


def save_adapter(path, model, base_path, base_sha256, rank, alpha, targets, tokenizer=None,
                 tokenizer_sha256=None, config=None, token_ids=(), embedding_rank=0):
    """Write the adapter alone, atomically."""
    adapter = {"format": LORA_FORMAT, "version": 1,
               "lora": {k: v.cpu() for k, v in lora_state_dict(model).items()},
               "rank": int(rank), "alpha": float(alpha), "targets": [str(t) for t in targets],
               "token_ids": sorted({int(t) for t in token_ids}), "embedding_rank": int(embedding_rank),
               "base": str(base_path), "base_sha256": base_sha256,
               "tokenizer": None if tokenizer is None else str(tokenizer), "tokenizer_sha256": tokenizer_sha256,
               "config": plain(config or {})}
    if not adapter["lora"]:
        raise ValueError("the model has no LoRA adapters to save: add_lora(model, ...) first")
    atomic_save(adapter, path)


def load_adapter(path):
    """Load and check an adapter file; clear ValueErrors for anything else."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no adapter file at {path}: train one with `python lora.py config/...`")
    try:
        adapter = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # an empty file's EOFError has no message: then its name says what happened
        reason = str(e).splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} is not a readable adapter file (truncated or corrupt): {reason}") from None
    if not isinstance(adapter, dict) or adapter.get("format") != LORA_FORMAT:
        is_checkpoint = isinstance(adapter, dict) and "model" in adapter
        hint = " (it looks like a checkpoint: pass it as the checkpoint, not the adapter)" if is_checkpoint else ""
        raise ValueError(f"{path} is not a {LORA_FORMAT} adapter file{hint}")
    if adapter.get("version") != 1:
        raise ValueError(f"{path} is adapter format version {adapter.get('version')}; this lora.py reads version 1")
    missing = [key for key in ADAPTER_KEYS if key not in adapter]
    if missing:
        raise ValueError(f"{path} is an incomplete adapter file: it lacks {', '.join(missing)}; train it again")
    return adapter


def apply_adapter(model, adapter_path, base_sha256):
    """Add the adapter in adapter_path to `model` (built from the base checkpoint whose file hashes to
    base_sha256), load its weights, merge them, and return the model."""
    adapter = load_adapter(adapter_path)
    if adapter["base_sha256"] != base_sha256:
        raise ValueError(f"adapter {adapter_path} was trained on base {adapter['base']} "
                         f"(sha {adapter['base_sha256'][:12]}), not on this checkpoint (sha {base_sha256[:12]}): "
                         f"load the base it was trained on")
    model = unwrap(model)
    add_lora(model, adapter["rank"], adapter["alpha"], adapter["targets"], token_ids=adapter.get("token_ids", ()),
             embedding_rank=adapter.get("embedding_rank", 0))  # files from before these options have neither
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


def write_merged(adapter_path, base_path, dest):
    """The base with the adapter merged in, saved as a normal checkpoint (kind lora_merged) that
    records both files' sha256: chat.py reuses it only while both are unchanged."""
    base = load_checkpoint(base_path)
    base_sha, adapter_sha = sha256_of(base_path), sha256_of(adapter_path)
    model = apply_adapter(model_from_checkpoint(base), adapter_path, base_sha)
    config = dict(load_adapter(adapter_path)["config"], adapter=adapter_path, adapter_sha256=adapter_sha,
                  base=base_path, base_sha256=base_sha)
    save_checkpoint(dest, model, kind="lora_merged", step=config.get("step", 0), best_val_loss=config.get("val_loss"),
                    config=config, tokenizer=base["tokenizer"], tokenizer_sha256=base["tokenizer_sha256"])


# --- 2. the run ----------------------------------------------------------------------------------
def fail(msg):
    raise SystemExit(f"lora.py: {msg}")


def checkpoint_file(path):  # a folder means its best.pt
    return os.path.join(path, "best.pt") if os.path.isdir(path) else path


def merge_only():
    """--merge_adapter: write <adapter>.merged.pt, the base with the adapter merged in, and stop."""
    dest = os.path.splitext(merge_adapter)[0] + ".merged.pt"
    try:
        base = init_from or load_adapter(merge_adapter)["base"]
        write_merged(merge_adapter, checkpoint_file(base), dest)
    except (OSError, ValueError) as e:
        fail(str(e))
    print(f"merged {merge_adapter} into {base}: {dest}")


def load_base():
    """1. The base checkpoint, its file, and its tokenizer (checked to be the one it was trained with)."""
    base_path = checkpoint_file(init_from)
    try:
        ckpt, tok, tok_path = load_with_tokenizer(base_path)
    except FileNotFoundError:
        fail(f"no base checkpoint at {init_from}: pre-train one (python pretrain.py config/darija_small.py), "
             f"fine-tune one (python sft.py config/sft_darija.py), or point --init_from at a checkpoint")
    except ValueError as e:
        fail(str(e))
    if any(t not in tok.special_tokens for t in CHAT_TOKENS):
        fail(f"tokenizer {tok_path} has no chat tokens: rebuild it with the current bpe.py (prepare.py --force)")
    return ckpt, base_path, tok, tok_path


def load_sft_dataset(tok_path, tok_sha):
    """2. data/sft/NAME/{train,val}.jsonl, built by sft.py when missing (stages never import each other)."""
    data_dir = os.path.join("data", "sft", plain_name("sft_dataset", sft_dataset))
    stats_path = os.path.join(data_dir, "stats.json")
    if not os.path.isfile(stats_path):
        if sft_config and not os.path.isfile(sft_config):
            fail(f"{data_dir}/ is missing and so is {sft_config}, the SFT config to build it from: write one "
                 f"(see README 'Instruction tuning') or pass --sft_config=\"\" for sft.py's sample data")
        cmd = [sys.executable, os.path.join(ROOT, "sft.py"), *([sft_config] if sft_config else []), "--build_only",
               f"--init_from={init_from}", f"--sft_dataset={sft_dataset}"]
        print(f"{data_dir}/ not found: building it with `{' '.join(cmd[1:])}`", flush=True)
        if subprocess.run(cmd).returncode or not os.path.isfile(stats_path):
            fail("sft.py could not build the dataset (see above); fix that, then run lora.py again")
    with open(stats_path, encoding="utf-8") as f:
        stats = json.load(f)
    if stats["tokenizer_sha256"] != tok_sha:
        fail(f"{data_dir}/ was built with tokenizer {stats['tokenizer']} (sha256 {stats['tokenizer_sha256'][:12]}), "
             f"not with the base's {tok_path} (sha256 {tok_sha[:12]}): rebuild it "
             f"(python sft.py {sft_config} --build_only --force) or pick another --sft_dataset")
    splits = {}
    for split in ("train", "val"):
        with open(os.path.join(data_dir, f"{split}.jsonl"), encoding="utf-8") as f:
            splits[split] = [json.loads(line) for line in f]
    return data_dir, splits["train"], splits["val"]


def task_tokens(model, n, chosen, inputs, targets, device):
    """The n token ids, not in `chosen`, whose embedding rows get the largest gradient from the SFT loss."""
    if not 0 <= n <= model.config.vocab_size - len(chosen):
        fail(f"task_token_rows={n}: choose between 0 and {model.config.vocab_size - len(chosen)} (the vocabulary "
             f"has {model.config.vocab_size} tokens{f', {len(chosen)} of them chat tokens' if chosen else ''})")
    matrices = list({id(w): w for w in (model.wte.weight, model.lm_head.weight)}.values())  # one when tied
    model.requires_grad_(False)
    for matrix in matrices:
        matrix.requires_grad_(True)
    score = torch.zeros(model.config.vocab_size, device=device)
    for i in range(0, min(len(inputs), 16 * batch_size), batch_size):
        x, y = (torch.tensor(rows[i:i + batch_size], device=device) for rows in (inputs, targets))
        for grad in torch.autograd.grad(model(x, y)[1], matrices):  # float32, no autocast: no fp16 loss to scale
            score += grad.float().pow(2).sum(1)
    model.requires_grad_(False)
    score[list(chosen)] = -1
    return score.topk(n).indices.tolist()


def main():
    if merge_adapter:
        return merge_only()
    device_name = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    device_type = "cuda" if device_name.startswith("cuda") else "cpu"
    if device_type == "cuda" and not torch.cuda.is_available():
        fail(f"--device={device}: no CUDA device here (use --device=cpu, or auto)")
    ckpt, base_path, tok, tok_path = load_base()
    base_sha, tok_sha = sha256_of(base_path), sha256_of(tok_path)
    print(f"base: {base_path} (kind {ckpt['kind']}, sha256 {base_sha[:12]})")
    data_dir, train_examples, val_examples = load_sft_dataset(tok_path, tok_sha)
    T = block_size or ckpt["model_config"]["block_size"]
    if T > ckpt["model_config"]["block_size"]:
        fail(f"block_size {T} is longer than the checkpoint's context ({ckpt['model_config']['block_size']})")
    train_chats, val_chats = ([c for c in (tok.fit_conversation(ex["messages"], T + 1) for ex in examples) if c]
                              for examples in (train_examples, val_examples))
    if not train_chats or not val_chats:
        fail(f"{data_dir}/ has no usable {'train' if not train_chats else 'val'} examples of at most {T} tokens")
    val_x, val_y = (torch.tensor(rows[:eval_iters * batch_size], device=device_name)
                    for rows in tok.pack_conversations(val_chats, T))
    print(f"{data_dir}/: {len(train_chats):,} train / {len(val_chats):,} val conversations; "
          f"val: {len(val_x)} rows, {int((val_y >= 0).sum()):,} assistant tokens")

    # 3. the frozen model and its adapters
    claim_output(out_dir, ("adapter.pt", "adapter.merged.pt", "best.pt", "metrics.json", "eval", "eval.lock",
                           "scores.json"), "lora.py", "pick another --out_dir")  # one run per out_dir
    adapter_path = os.path.join(out_dir, "adapter.pt")
    for path in [adapter_path] + ([os.path.join(out_dir, "best.pt")] if merge else []):
        if os.path.exists(path) and not force:
            fail(f"{path} already exists: add --force to overwrite it (or choose another --out_dir)")
    torch.manual_seed(seed)
    if dtype not in ("auto", "bfloat16", "float16", "float32"):
        fail(f"dtype must be auto, bfloat16, float16 or float32; got {dtype!r}")
    precision, autocast, scaler = training_precision(device_name, dtype)  # the GradScaler does nothing unless fp16
    raw_model = model_from_checkpoint(ckpt).to(device_name)
    raw_model.chunked_loss = device_type == "cpu" and precision == "float32"  # model.py's CPU training speed trick
    n_base = raw_model.num_params()
    try:
        token_ids = [tok.special_tokens[t] for t in CHAT_TOKENS] if chat_token_rows else []
        n_chat = len(token_ids)
        if task_token_rows:  # scored on the first conversations: enough for 16 batches of rows
            first_x, first_y = tok.pack_conversations(train_chats[:16 * batch_size * 8], T)
            token_ids += task_tokens(raw_model, task_token_rows, token_ids, first_x, first_y, device_name)
            print(f"the {task_token_rows} task tokens: {' '.join(repr(tok.decode([t])) for t in token_ids[n_chat:])}")
        wrapped = add_lora(raw_model, rank, alpha, targets, token_ids, embedding_rank)
    except ValueError as e:
        fail(str(e))
    n_train = sum(p.numel() for p in raw_model.parameters() if p.requires_grad)
    print(f"LoRA r={rank}, alpha={alpha:g} on {len(wrapped)} layers, {n_chat} chat + {len(token_ids) - n_chat} task "
          f"embedding rows, embedding rank {embedding_rank}: {n_train:,} trainable parameters, "
          f"{100 * n_train / n_base:.2f}% of the base's {n_base:,}; training on {device_name} ({precision})")
    model = torch.compile(raw_model) if compile else raw_model
    optimizer = raw_model.configure_optimizers(weight_decay, learning_rate, (0.9, 0.95), device_type)  # adapters only

    # 4. training: sft.py's loop, only the adapters in the optimizer; Ctrl-C / SIGTERM finish the step, then stop
    rng, train_order, stop_ids = random.Random(seed), list(train_chats), set(tok.special_tokens.values())
    step, best_val, best_step, bad_evals, row, train_x, t0, interrupted = 0, float("inf"), 0, 0, 0, [], time.time(), []
    on_sigint = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))  # as in pretrain.py
    on_sigterm = signal.signal(signal.SIGTERM, lambda signum, frame: interrupted.append(signum))
    while True:
        if step % eval_interval == 0 or step == max_iters:
            raw_model.eval()
            with autocast:
                val_loss = raw_model.mean_loss(val_x, val_y, batch_size)
            raw_model.train()
            improved = val_loss < best_val
            bad_evals = 0 if improved else bad_evals + 1
            if improved:
                best_val, best_step = val_loss, step
                save_adapter(adapter_path, raw_model, base_path, base_sha, rank, alpha, targets, tok_path, tok_sha,
                             dict(config, step=step, val_loss=val_loss), token_ids, embedding_rank)
            print(f"step {step}: val loss {val_loss:.4f} (assistant tokens){' *best, adapter saved' if improved else ''}")
            for prompt in sample_prompts:
                ids = tok.render_for_completion([{"role": "user", "content": prompt}])
                room = min(max_new_tokens, T - len(ids))
                answer = [token for token in raw_model.generate(ids, room, temperature=0, stop_ids=stop_ids)
                          if token not in stop_ids]  # the answer without its <|end|>
                print(f"  > {prompt}\n    {tok.decode(answer)!r}")
            if bad_evals >= patience:
                print(f"early stop at step {step}: val has not improved for {patience} evals "
                      f"(best {best_val:.4f} at step {best_step})")
            if bad_evals >= patience or step >= max_iters:
                break
        if row + batch_size > len(train_x):  # a new epoch: reshuffle and repack
            rng.shuffle(train_order)
            (train_x, train_y), row = tok.pack_conversations(train_order, T), 0
        x, y = (torch.tensor(rows[row:row + batch_size], device=device_name) for rows in (train_x, train_y))
        row += batch_size
        lr = learning_rate_at(step, learning_rate, min_lr, warmup_iters, max_iters)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast:
            _, loss = model(x, y)
        scaler.scale(loss).backward()
        if grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([p for p in raw_model.parameters() if p.requires_grad], grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % log_interval == 0:
            elapsed = time.time() - t0  # evaluations included: what the user waits for
            print(f"step {step}/{max_iters}: loss {loss.item():.4f}, lr {lr:.2e}, "
                  f"{step * x.numel() / elapsed:,.0f} tok/s, ETA {elapsed / step * (max_iters - step) / 60:.1f} min "
                  f"(sooner on an early stop)")
        if interrupted:
            print(f"stopped at step {step}: {adapter_path} holds the best adapter (step {best_step})")
            sys.exit(130)
    signal.signal(signal.SIGINT, on_sigint)  # after training, Ctrl-C and SIGTERM act at once again
    signal.signal(signal.SIGTERM, on_sigterm)
    if best_step == 0:
        print("note: val never improved on the base model's loss; adapter.pt holds the untrained (B = 0) adapter")
    metrics = dict(init_from=init_from, base=base_path, base_sha256=base_sha, sft_dataset=sft_dataset, seed=seed,
                   rank=rank, alpha=alpha, targets=targets, token_rows=len(token_ids), task_token_rows=task_token_rows,
                   embedding_rank=embedding_rank, learning_rate=learning_rate, trainable_params=n_train,
                   base_params=n_base, trainable_pct=round(100 * n_train / n_base, 3), steps=step,
                   best_step=best_step, best_val_loss=best_val, train_examples=len(train_chats))

    # 5. the best adapter merged into the base, and scored by eval.py (as a chat model: its kind is lora_merged)
    merged_path = os.path.join(out_dir, "best.pt") if merge else os.path.splitext(adapter_path)[0] + ".merged.pt"
    if merge or metric_items:
        write_merged(adapter_path, base_path, merged_path)
    if metric_items:
        cmd = [sys.executable, os.path.join(ROOT, "eval.py"), merged_path, "--tasks=translation",
               f"--sft_dataset={sft_dataset}", f"--metric_items={metric_items}", f"--max_new_tokens={max_new_tokens}",
               f"--device={device_name}", f"--out={os.path.join(out_dir, 'eval')}", "--force"]
        if subprocess.run(cmd).returncode:
            fail("eval.py could not score the merged model (see above)")
        with open(os.path.join(out_dir, "eval", "report.json"), encoding="utf-8") as f:
            metrics["lora"] = json.load(f)["checkpoints"][0]["translation"]
    atomic_write(os.path.join(out_dir, "metrics.json"),
                 lambda tmp: Path(tmp).write_text(json.dumps(metrics, indent=1, ensure_ascii=False), encoding="utf-8"))
    print(f"done: {adapter_path} (step {best_step}, val loss {best_val:.4f}, "
          f"{os.path.getsize(adapter_path) / 1024:,.0f} KiB){f'; merged: {merged_path}' if merge else ''}")


if __name__ == "__main__":
    main()
