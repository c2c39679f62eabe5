"""
lora.py: instruction tuning with LoRA. The pre-trained (or SFT) GPT stays frozen; small low-rank
adapters on its linear layers learn the task, on the same dataset and loss as sft.py.

    python lora.py config/lora_darija.py                 # trains out/darija_lora/adapter.pt
    python lora.py config/lora_darija.py --merge         # also a merged checkpoint, best.pt
    python chat.py --ckpt out/darija_small --adapter out/darija_lora/adapter.pt
    python chat.py --ckpt out/darija_lora                # the merged checkpoint, like any other

What happens, in order (and why):
1. The base checkpoint (init_from) is loaded and hashed: the adapter records the sha256 of that
   file, because an adapter only means something on top of the exact weights it was trained on.
2. The SFT dataset (data/sft/NAME/{train,val}.jsonl, written by sft.py) is built when missing by
   running `python sft.py <sft_config> --build_only` (stages never import each other).
3. The adapters (model.py's add_lora: LoRALinear layers, A kaiming-uniform, B zero, update scaled
   by alpha / r) go on the target layers, by default every linear layer of every block. The
   embedding rows of the chat tokens (<|system|> <|user|> <|assistant|> <|end|>) are trained too
   (chat_token_rows): a pre-trained base never saw them, and every answer must end by predicting
   <|end|>. So are the rows of the task_token_rows tokens whose rows get the largest gradient from
   the SFT loss on the frozen base (16 batches, before training): the tokens the task needs most
   and pre-training left weakest, English ones above all for a Darija base. And a low-rank update
   of the whole embedding (embedding_rank), so every other token can move a little. Together they
   close the gap to full SFT (README "LoRA"). Every other weight is frozen, so the optimizer holds
   only these: with r = 2, 195 task rows and embedding_rank = 2 on darija_small, 2.0% of the
   parameters.
4. Training is sft.py's: whole conversations packed into rows, targets -1 except the assistant's
   tokens and their <|end|>, AdamW with warmup and cosine decay, the val assistant-token loss
   every eval_interval steps, the adapter saved when it improves, an early stop after `patience`
   evals without improvement. LoRA wants a larger learning rate than full fine-tuning (about
   10x): B starts at zero and only a few directions are trained.
5. The task metric is sft.py's: chrF of greedy answers on held-out items of two tasks
   (Arabizi -> Arabic script, Darija -> English), computed on the base with the best adapter
   applied and merged exactly as chat.py does it (model.py's apply_adapter). When the full SFT
   run's metrics.json is found (compare_to), both are printed side by side.
6. Outputs in out_dir: adapter.pt (the adapter alone: a few hundred KB, README "Adapter file"),
   metrics.json, and with --merge best.pt, a normal checkpoint of kind "lora_merged".
"""
import json
import math
import os
import random
import subprocess
import sys
import time
from collections import Counter

import torch

from bpe import Tokenizer
from model import (add_lora, apply_adapter, load_checkpoint, model_from_checkpoint, save_adapter,
                   save_checkpoint, sha256_of)

# --- settings (override with a config file and --key=value) ---
init_from = "out/darija_small"      # the frozen base: a pre-trained or SFT checkpoint (dir = its best.pt)
out_dir = "out/darija_lora"
sft_dataset = "darija"              # data/sft/NAME/, as written by sft.py
sft_config = "config/sft_darija.py" # what sft.py builds the dataset from when it is missing ("": sft.py's defaults)
compare_to = "out/darija_sft"       # a full SFT run whose metrics.json is printed next to ours ("": none)
force = False                       # overwrite an existing out_dir/adapter.pt
merge = False                       # also write out_dir/best.pt: the base with the adapter merged in
# the adapters
rank = 2
alpha = 10.0
targets = ["c_q", "c_k", "c_v", "c_proj", "c_fc"]  # every block linear ("c_proj": attn and mlp; add "c_gate" for swiglu)
lora_dropout = 0.0
chat_token_rows = True              # also train the embedding rows of the chat tokens (new to a pre-trained base)
embedding_rank = 2                  # > 0: also a rank-r update of the whole token embedding (and tied head)
task_token_rows = 195               # and the rows of the N tokens the task pulls hardest on (README "LoRA")
# training
batch_size = 16
block_size = 0                      # 0: the checkpoint's context length
learning_rate = 1e-3
min_lr = 1e-4
warmup_iters = 50
max_iters = 2000
weight_decay = 0.0
grad_clip = 1.0
eval_interval = 100
eval_iters = 20                     # val batches per evaluation (fixed rows, so evals compare)
patience = 4                        # evals without improvement before stopping
log_interval = 10
seed = 1337
device = "auto"                     # "auto": cuda when available, else cpu
compile = False
sample_prompts = ["Translate to English: kifach dayer? labas 3lik?",
                  "ktb liya hadi b l7orof l3arbiya: sba7 lkhir a sa7bi"]
# task metric (chrF of greedy answers)
metric_items = 100                  # held-out items per task; 0 skips the metric
max_new_tokens = 64

from configurator import configure  # noqa: E402
config = configure(globals())

ROLES_CHAT = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
ROOT = os.path.dirname(os.path.abspath(__file__))


def fail(msg):
    raise SystemExit(f"lora.py: {msg}")


# --- 1. the base checkpoint, its hash and its tokenizer ----------------------------------------

base_path = os.path.join(init_from, "best.pt") if os.path.isdir(init_from) else init_from
if not os.path.isfile(base_path):
    fail(f"no base checkpoint at {init_from}: pre-train one (python pretrain.py config/darija_small.py) "
         f"or fine-tune one (python sft.py config/sft_darija.py), or point --init_from at a checkpoint")
try:
    ckpt = load_checkpoint(base_path)
except ValueError as e:
    fail(str(e))
base_sha = sha256_of(base_path)
tok_path = ckpt.get("tokenizer")
if not tok_path or not os.path.isfile(tok_path):
    fail(f"the checkpoint {base_path} names tokenizer {tok_path!r}, which does not exist: run lora.py from "
         f"the project root (paths in checkpoints are relative to it)")
tok_sha = sha256_of(tok_path)
if ckpt.get("tokenizer_sha256") and ckpt["tokenizer_sha256"] != tok_sha:
    fail(f"{tok_path} changed since {base_path} was trained (sha256 differs): its token ids no longer mean "
         f"the same text; re-train the base or restore the tokenizer")
tok = Tokenizer.load(tok_path)
if any(t not in tok.special_tokens for t in ROLES_CHAT):
    fail(f"tokenizer {tok_path} has no chat tokens: rebuild it with the current bpe.py (prepare.py --force)")
print(f"base: {base_path} (kind {ckpt['kind']}, sha256 {base_sha[:12]})")


# --- 2. the SFT dataset (sft.py builds it) -----------------------------------------------------

data_dir = os.path.join("data", "sft", sft_dataset)
stats_path = os.path.join(data_dir, "stats.json")
if not os.path.isfile(stats_path):
    if sft_config and not os.path.isfile(sft_config):
        fail(f"{data_dir}/ is missing and so is {sft_config}, the SFT config to build it from: "
             f"write one (see README 'Instruction tuning') or pass --sft_config=\"\" for sft.py's sample data")
    cmd = [sys.executable, os.path.join(ROOT, "sft.py"), *([sft_config] if sft_config else []), "--build_only",
           f"--init_from={init_from}", f"--sft_dataset={sft_dataset}"]
    print(f"{data_dir}/ not found: building it with `{' '.join(cmd[1:])}`", flush=True)
    if subprocess.run(cmd).returncode or not os.path.isfile(stats_path):
        fail("sft.py could not build the dataset (see above); fix that, then run lora.py again")
with open(stats_path, encoding="utf-8") as f:
    stats = json.load(f)
if stats["tokenizer_sha256"] != tok_sha:
    fail(f"{data_dir}/ was built with tokenizer {stats['tokenizer']} (sha256 {stats['tokenizer_sha256'][:12]}), "
         f"but {base_path} uses {tok_path} (sha256 {tok_sha[:12]}): rebuild it "
         f"(python sft.py {sft_config} --build_only --force) or pick another --sft_dataset")


def read_examples(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def encode(examples, limit):
    """(ids, mask) per example (as sft.py): a chat too long keeps the leading turns that fit."""
    out = []
    for ex in examples:
        msgs = ex["messages"]
        ids, mask = tok.render_conversation(msgs)
        while len(ids) > limit and sum(m["role"] == "assistant" for m in msgs) > 1:
            msgs = msgs[:-2]
            ids, mask = tok.render_conversation(msgs)
        if len(ids) <= limit:
            out.append((ids, mask))
    return out


def pack(encoded, T, rng=None):
    """Whole conversations packed into rows of T+1 tokens -> inputs (N, T), targets (N, T) with
    -1 everywhere except on the assistant's tokens (sft.py's packing and masking, exactly)."""
    order = list(range(len(encoded)))
    if rng is not None:
        rng.shuffle(order)
    rows, row_ids, row_mask = [], [], []
    for i in order:
        ids, mask = encoded[i]
        if len(row_ids) + len(ids) > T + 1:
            rows.append((row_ids, row_mask))
            row_ids, row_mask = [], []
        row_ids, row_mask = row_ids + ids, row_mask + mask
    if row_ids:
        rows.append((row_ids, row_mask))
    x = torch.full((len(rows), T + 1), tok.eot_id, dtype=torch.long)
    m = torch.zeros((len(rows), T + 1), dtype=torch.bool)
    for r, (ids, mask) in enumerate(rows):
        x[r, :len(ids)] = torch.tensor(ids)
        m[r, :len(ids)] = torch.tensor(mask, dtype=torch.bool)
    return x[:, :-1], torch.where(m[:, 1:], x[:, 1:], -1)


T = block_size or ckpt["model_config"]["block_size"]
if T > ckpt["model_config"]["block_size"]:
    fail(f"block_size {T} is longer than the checkpoint's context ({ckpt['model_config']['block_size']})")
train_examples = read_examples(os.path.join(data_dir, "train.jsonl"))
val_examples = read_examples(os.path.join(data_dir, "val.jsonl"))
train_enc, val_enc = encode(train_examples, T + 1), encode(val_examples, T + 1)
if not train_enc or not val_enc:
    fail(f"{data_dir}/ has no usable {'train' if not train_enc else 'val'} examples of at most {T} tokens")
val_x, val_y = pack(val_enc, T)
val_x, val_y = val_x[:eval_iters * batch_size], val_y[:eval_iters * batch_size]
print(f"{data_dir}/: {len(train_enc):,} train / {len(val_enc):,} val conversations; "
      f"val: {len(val_x)} rows, {int((val_y >= 0).sum()):,} assistant tokens")


# --- 3. the frozen model and its adapters ------------------------------------------------------

adapter_path = os.path.join(out_dir, "adapter.pt")
for path in [adapter_path] + ([os.path.join(out_dir, "best.pt")] if merge else []):
    if os.path.exists(path) and not force:
        fail(f"{path} already exists: add --force to overwrite it (or choose another --out_dir)")
torch.manual_seed(seed)
device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
device_type = "cuda" if device.startswith("cuda") else "cpu"
autocast = torch.autocast(device_type, dtype=torch.bfloat16, enabled=device_type == "cuda")
raw_model = model_from_checkpoint(ckpt).to(device)
n_base = raw_model.num_params()


def task_tokens(model, n, chosen, batches=16):
    """The n token ids, outside `chosen`, whose embedding rows get the largest gradient (sum of
    squares) from the SFT loss of the frozen base over a few training batches: the tokens the task
    needs that pre-training left weakest (English ones, when a Darija base learns to translate)."""
    if not 0 <= n <= model.config.vocab_size - len(chosen):
        fail(f"task_token_rows={n}: choose between 0 and {model.config.vocab_size - len(chosen)} (the vocabulary "
             f"has {model.config.vocab_size} tokens{f', {len(chosen)} of them chat tokens' if chosen else ''})")
    x, y = pack(train_enc[:batches * batch_size * 8], T)  # conversations enough for `batches` batches of rows
    matrices = list({id(w): w for w in (model.wte.weight, model.lm_head.weight)}.values())  # one when tied
    model.requires_grad_(False)
    for w in matrices:
        w.requires_grad_(True)
    score = torch.zeros(model.config.vocab_size, device=device)
    for i in range(0, min(len(x), batches * batch_size), batch_size):
        with autocast:
            _, loss = model(x[i:i + batch_size].to(device), y[i:i + batch_size].to(device))
        for grad in torch.autograd.grad(loss, matrices):
            score += grad.float().pow(2).sum(1)
    model.requires_grad_(False)
    score[list(chosen)] = -1
    return score.topk(n).indices.tolist()


try:
    token_ids = [tok.special_tokens[t] for t in ROLES_CHAT] if chat_token_rows else []
    n_chat = len(token_ids)
    if task_token_rows:
        token_ids += task_tokens(raw_model, task_token_rows, token_ids)
        print(f"the {task_token_rows} task tokens: {' '.join(repr(tok.decode([t])) for t in token_ids[n_chat:])}")
    wrapped = add_lora(raw_model, rank, alpha, targets, lora_dropout, token_ids, embedding_rank)
except ValueError as e:
    fail(str(e))
n_train = sum(p.numel() for p in raw_model.parameters() if p.requires_grad)
rows = " + ".join(f"{n} {kind}" for n, kind in ((n_chat, "chat"), (task_token_rows, "task")) if n)
print(f"LoRA r={rank}, alpha={alpha:g} on {len(wrapped)} layers ({', '.join(sorted({w.split('.', 2)[-1] for w in wrapped}))})"
      f"{f', the embedding rows of {rows} tokens' if rows else ''}"
      f"{f', a rank-{embedding_rank} update of the embedding' if embedding_rank else ''}: "
      f"{n_train:,} trainable parameters, {100 * n_train / n_base:.2f}% of the base's {n_base:,}")
model = torch.compile(raw_model) if compile else raw_model
optimizer = raw_model.configure_optimizers(weight_decay, learning_rate, (0.9, 0.95), device_type)  # adapters only
if device_type == "cuda":
    torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb():
    """Peak GPU memory allocated on CUDA; else the process's peak resident memory (Linux: KiB)."""
    if device_type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def lr_at(it):
    """Linear warmup, then cosine decay to min_lr at max_iters."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / warmup_iters
    progress = min(1.0, (it - warmup_iters) / max(1, max_iters - warmup_iters))
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (learning_rate - min_lr)


@torch.no_grad()
def evaluate():
    """Mean cross-entropy over every assistant token of the fixed val rows."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(val_x), batch_size):
        x, y = val_x[i:i + batch_size].to(device), val_y[i:i + batch_size].to(device)
        n = int((y >= 0).sum())
        if n:
            with autocast:
                _, loss = model(x, y)
            total, count = total + loss.item() * n, count + n
    model.train()
    return total / count


STOP = set(tok.special_tokens.values())  # <|end|> ends an answer; any other special token derails it


def answer(m, messages):
    """The model's greedy answer to a conversation ending with a user turn."""
    ids = tok.render_for_completion(messages)
    room = min(max_new_tokens, m.config.block_size - len(ids))
    out = []
    for t in (m.generate(ids, room, temperature=0, stop_ids=STOP) if room > 0 else ()):
        if t in STOP:
            break
        out.append(t)
    return tok.decode(out).strip()


# --- 4. training: sft.py's loop, with only the adapters in the optimizer -------------------------

step, best_val, best_step, bad_evals = 0, float("inf"), 0, 0
rng = random.Random(seed)
train_x, train_y = pack(train_enc, T, rng)
row, train_time, tokens_seen = 0, 0.0, 0
while True:
    if step % eval_interval == 0 or step == max_iters:
        val = evaluate()
        improved = val < best_val
        if improved:
            best_val, best_step, bad_evals = val, step, 0
            save_adapter(adapter_path, raw_model, base_path, base_sha, rank, alpha, targets,
                         tokenizer=tok_path, tokenizer_sha256=tok_sha, config=dict(config, step=step, val_loss=val),
                         token_ids=token_ids, embedding_rank=embedding_rank)
        else:
            bad_evals += 1
        print(f"step {step}: val loss {val:.4f} (assistant tokens){' *best, adapter saved' if improved else ''}")
        for prompt in sample_prompts:
            print(f"  > {prompt}\n    {answer(raw_model, [{'role': 'user', 'content': prompt}])!r}")
        if bad_evals >= patience:
            print(f"early stop at step {step}: val has not improved for {patience} evals "
                  f"(best {best_val:.4f} at step {best_step})")
            break
        if step >= max_iters:
            break
    if row + batch_size > len(train_x):  # a new epoch: reshuffle and repack
        train_x, train_y = pack(train_enc, T, rng)
        row = 0
    x, y = train_x[row:row + batch_size].to(device), train_y[row:row + batch_size].to(device)
    row += batch_size
    t0 = time.time()
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step)
    with autocast:
        _, loss = model(x, y)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_([p for p in raw_model.parameters() if p.requires_grad], grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device_type == "cuda":
        torch.cuda.synchronize()
    train_time += time.time() - t0
    step += 1
    tokens_seen += x.numel()
    if step % log_interval == 0:
        eta = train_time / step * (max_iters - step)
        print(f"step {step}/{max_iters}: loss {loss.item():.4f}, lr {lr_at(step):.2e}, "
              f"{1000 * train_time / step:.0f} ms/step, {tokens_seen / train_time:,.0f} tok/s, "
              f"ETA {eta / 60:.1f} min (or earlier, at an early stop)")
if best_step == 0:
    print("note: val never improved on the base model's loss; adapter.pt holds the untrained (B = 0) adapter")
metrics = dict(init_from=init_from, base=base_path, base_sha256=base_sha, sft_dataset=sft_dataset, seed=seed,
               rank=rank, alpha=alpha, targets=targets, token_rows=len(token_ids), task_token_rows=task_token_rows,
               embedding_rank=embedding_rank, learning_rate=learning_rate,
               trainable_params=n_train, base_params=n_base, trainable_pct=round(100 * n_train / n_base, 3),
               steps=step, best_step=best_step, best_val_loss=best_val, sec_per_step=round(train_time / max(step, 1), 4),
               peak_memory_mb=round(peak_memory_mb(), 1),
               peak_memory_kind="cuda allocated" if device_type == "cuda" else "process RSS",
               train_examples=len(train_enc))
print(f"trained {step} steps in {train_time / 60:.1f} min ({1000 * metrics['sec_per_step']:.0f} ms/step), "
      f"peak memory {metrics['peak_memory_mb']:,.0f} MiB ({metrics['peak_memory_kind']})")


# --- 5. the task metric: chrF of the base + best adapter, merged as chat.py does it -------------

def chrf(hyps, refs, order=6, beta=2.0):
    """Corpus-level chrF as sacrebleu computes it by default (the same function as sft.py's):
    character n-grams of orders 1..6 without whitespace, counts summed over the corpus,
    precision and recall averaged over orders, F-score weighting recall beta times as much."""
    stats = [[0, 0, 0] for _ in range(order)]  # per order: hypothesis n-grams, reference n-grams, matches
    for hyp, ref in zip(hyps, refs):
        hyp, ref = "".join(hyp.split()), "".join(ref.split())
        for n in range(1, order + 1):
            h = Counter(hyp[i:i + n] for i in range(len(hyp) - n + 1))
            r = Counter(ref[i:i + n] for i in range(len(ref) - n + 1))
            stats[n - 1][0] += sum(h.values()) if r else 0
            stats[n - 1][1] += sum(r.values())
            stats[n - 1][2] += sum((h & r).values())
    used = [(m / h, m / r) for h, r, m in stats if h and r]
    if not used:
        return 0.0
    p, r = sum(u[0] for u in used) / len(used), sum(u[1] for u in used) / len(used)
    return 100 * (1 + beta**2) * p * r / (beta**2 * p + r) if p + r else 0.0


TASKS = ("lat2ar", "dar2en")  # Arabizi -> Arabic script, Darija -> English


def task_scores(m):
    scores = {}
    for task in TASKS:
        items = [ex for ex in val_examples if ex["task"] == task][:metric_items]
        if items:
            hyps = [answer(m, ex["messages"][:-1]) for ex in items]
            score = chrf(hyps, [ex["messages"][-1]["content"] for ex in items])
            scores[task] = dict(items=len(items), chrf=round(score, 2),
                                example=dict(input=items[0]["input"], output=hyps[0]))
    return scores


tuned = apply_adapter(model_from_checkpoint(ckpt).to(device), adapter_path, base_sha)  # chat.py's path
if metric_items:
    print(f"task metric: chrF of greedy answers on up to {metric_items} held-out items per task")
    metrics["lora"] = task_scores(tuned)
    sft_metrics_path = os.path.join(compare_to, "metrics.json") if compare_to else ""
    sft = {}
    if sft_metrics_path and os.path.isfile(sft_metrics_path):
        with open(sft_metrics_path, encoding="utf-8") as f:
            sft = json.load(f)
        print(f"(full SFT from {sft_metrics_path}: {sft.get('steps')} steps, seed {sft.get('seed')}, "
              f"dataset {sft.get('sft_dataset')})")
    print(f"{'task':8} {'items':>5} {'lora':>7} {'full sft':>9} {'ratio':>6}")
    for task, s in metrics["lora"].items():
        full = sft.get("sft", {}).get(task, {}).get("chrf")
        ratio = f"{s['chrf'] / full:6.0%}" if full else "     -"
        print(f"{task:8} {s['items']:5d} {s['chrf']:7.1f} {full if full is not None else '-':>9} {ratio}")
        print(f"  e.g. {s['example']['input']!r} -> {s['example']['output']!r}")


# --- 6. outputs --------------------------------------------------------------------------------

if merge:
    save_checkpoint(os.path.join(out_dir, "best.pt"), tuned, kind="lora_merged", step=best_step,
                    best_val_loss=best_val, config=dict(config, adapter=adapter_path, base_sha256=base_sha),
                    tokenizer=tok_path, tokenizer_sha256=tok_sha)
    print(f"merged checkpoint: {out_dir}/best.pt (kind lora_merged); chat: python chat.py --ckpt {out_dir}")
tmp = os.path.join(out_dir, f"metrics.json.tmp{os.getpid()}")
with open(tmp, "w", encoding="utf-8") as f:
    json.dump(metrics, f, indent=1, ensure_ascii=False)
os.replace(tmp, os.path.join(out_dir, "metrics.json"))
print(f"done: {adapter_path} (step {best_step}, val loss {best_val:.4f}, {os.path.getsize(adapter_path) / 1024:,.0f} KiB)")
