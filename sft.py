"""
sft.py: instruction tuning. Builds a chat dataset from conversations and parallel Darija data,
then fine-tunes every weight of a pre-trained GPT with the loss on the assistant's tokens only.

    python sft.py config/sft_darija.py                 # builds data/sft/NAME/ if missing, then trains
    python sft.py config/sft_darija.py --build_only    # only (re)build the dataset
    python chat.py --ckpt out/darija_sft               # talk to the result

What happens, in order (and why):
1. The base checkpoint (init_from) is loaded first: its tokenizer measures the dataset, and a
   tokenizer without the chat tokens cannot render chats.
2. The dataset (data/sft/NAME/{train,val}.jsonl + stats.json) is built when missing:
   - conversations ({"messages": [...]}) are validated; a bad row is an error naming its file and
     line (roles out of order, empty content, missing fields);
   - parallel rows (Arabizi, Arabic script, English) become instruction pairs, both directions of
     Darija <-> English and Arabizi <-> Arabic script, each request drawn from several phrasings
     in English and in Darija (both scripts): one fixed template would teach the template, not
     the task. A share of the examples carries a system prompt, so both ways work;
   - exact duplicates are dropped; rows sharing any sentence are grouped (union-find) and the
     train/val split is made per group by a hash, so no sentence is on both sides;
   - statistics (examples, tokens, assistant-token share, per task) are printed and saved.
3. Training: whole conversations are packed into rows of block_size tokens (never cut in the
   middle); targets are -1 everywhere except the assistant's tokens and their <|end|>, so the
   model learns to answer, not to imitate users. AdamW, linear warmup then cosine decay.
4. Every eval_interval steps: the assistant-token loss on val, sample answers to a fixed prompt
   set, best.pt (kind "sft") kept when val improves, and an early stop after `patience` evals
   without improvement. (The course trained 50 epochs on 257 pairs: train loss 0.006, val 3.64.)
5. The task metric: chrF of greedy answers on held-out items of two tasks (Arabizi -> Arabic
   script, Darija -> English), for the base model (few-shot, plain completion) and the SFT model.
"""
import csv
import hashlib
import json
import math
import os
import random
import sys
import time
import unicodedata
from collections import Counter

import torch

from bpe import Tokenizer
from model import load_checkpoint, model_from_checkpoint, save_checkpoint

# --- settings (override with a config file and --key=value) ---
init_from = "out/darija_small"      # the pre-trained checkpoint (a directory means its best.pt)
out_dir = "out/darija_sft"
sft_dataset = ""                    # data/sft/NAME/; "": named after init_from (its tokenizer)
# sources: kind "conversations" ({"messages": [...]} per line) or kind "pairs" (JSONL or CSV with
# parallel columns; name the column holding each of latin / arabic / english, at least two of them)
sources = [dict(path="data/sample/sft/conversations.jsonl", kind="conversations"),
           dict(path="data/sample/sft/pairs.jsonl", kind="pairs",
                latin="darija", arabic="darija_ar", english="eng")]
tasks = ["dar2en", "en2dar", "lat2ar", "ar2lat"]  # pairs made from parallel rows (Darija->English, ...)
system_prompt = "nta m3awen kayhder b darija. jaweb b wdo7 o b ikhtisar."
system_prompt_share = 0.3           # share of pair examples that start with the system prompt
val_fraction = 0.05
max_bad_fraction = 0.0              # bad rows tolerated per file (skipped, each reported); 0: fail
build_only = False
force = False                       # overwrite an existing dataset / out_dir
resume = False                      # continue from out_dir/last.pt
# training
batch_size = 16
block_size = 0                      # 0: the checkpoint's context length
learning_rate = 1e-4
min_lr = 1e-5
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
                  "ktb liya hadi b l7orof l3arbiya: sba7 lkhir a sa7bi",
                  "شنو هي أحسن مدينة فالمغرب؟"]
# task metric (chrF of greedy answers)
metric_items = 100                  # held-out items per task; 0 skips the metric
metric_skip = 0                     # held-out items passed over first (scores items a choice was not made on)
few_shot = 3                        # solved examples shown to the base model
max_new_tokens = 64


def fail(msg):
    raise SystemExit(f"sft.py: {msg}")


from configurator import ConfigError, configure  # noqa: E402
try:
    config = configure(globals())
except ConfigError as e:
    fail(str(e))


# --- 1. the base checkpoint and its tokenizer ---------------------------------------------------

def load_base(path):
    """The base checkpoint, its tokenizer, the tokenizer's path and sha256, with clear errors."""
    name = os.path.basename(os.path.normpath(path))
    make = f"python pretrain.py config/{name if os.path.isfile(f'config/{name}.py') else 'darija_small'}.py"
    if not os.path.isfile(os.path.join(path, "best.pt") if os.path.isdir(path) else path):
        fail(f"no base checkpoint at {path}: pre-train one first with `{make}` (or set --init_from)")
    try:
        ckpt = load_checkpoint(path)
        tok_path = ckpt.get("tokenizer") or "(none)"
        with open(tok_path, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        tok = Tokenizer.load(tok_path)
    except OSError:
        fail(f"{path} names tokenizer {tok_path}, which is missing: run sft.py from the project root, "
             f"or rebuild the data with `{make}`")
    except ValueError as e:
        fail(str(e))
    if ckpt.get("tokenizer_sha256") not in (None, sha):
        fail(f"{tok_path} changed since {path} was trained (sha256 differs): its ids no longer mean "
             f"what the model learned; restore the tokenizer or re-train the base")
    if not all(t in tok.special_tokens for t in ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")):
        fail(f"{tok_path} has no chat tokens: rebuild it with the current bpe.py (prepare.py --force)")
    return ckpt, tok, tok_path, sha


ckpt, tok, tok_path, tok_sha = load_base(init_from)


# --- 2. the dataset ------------------------------------------------------------------------------
# Prompt phrasings per task: (language of the request, template, script of the Darija side).
# For dar2en the script is that of the input, for en2dar that of the answer.
TEMPLATES = {
    "dar2en": [("en", "Translate to English: {x}", "lat"),
               ("en", 'What does "{x}" mean in English?', "lat"),
               ("en", "Translate this Darija sentence into English:\n{x}", "ar"),
               ("en", "{x}\n\nWhat is that in English?", "ar"),
               ("lat", "tarjem liya had jjomla l l'anglais: {x}", "lat"),
               ("lat", 'chno kat3ni "{x}" b l\'anglais?', "lat"),
               ("ar", "ترجم ليا هاد الجملة للنجليزية: {x}", "ar"),
               ("ar", "شنو كتعني \"{x}\" بالنجليزية؟", "ar")],
    "en2dar": [("en", "Translate to Moroccan Darija: {x}", "lat"),
               ("en", 'How do you say "{x}" in Darija?', "lat"),
               ("en", "Translate into Darija, in Arabic script: {x}", "ar"),
               ("lat", 'kifach ngoulo "{x}" b darija?', "lat"),
               ("lat", "tarjem had jjomla l darija: {x}", "lat"),
               ("ar", "ترجم هادي للدارجة: {x}", "ar"),
               ("ar", "كيفاش نقولو \"{x}\" بالدارجة؟", "ar")],
    "lat2ar": [("en", "Write this in Arabic script: {x}", None),
               ("en", "Transliterate this Arabizi into Arabic letters: {x}", None),
               ("lat", "ktb liya hadi b l7orof l3arbiya: {x}", None), ("ar", "كتب هادشي بالحروف العربية: {x}", None)],
    "ar2lat": [("en", "Write this in Latin letters (Arabizi): {x}", None),
               ("en", "How would you type this in Arabizi? {x}", None),
               ("lat", "ktbha b l7orof latiniya: {x}", None), ("ar", "كتب هادي بالحروف اللاتينية: {x}", None)],
}
TASK_FIELDS = {"dar2en": ("darija", "english"), "en2dar": ("english", "darija"),
               "lat2ar": ("latin", "arabic"), "ar2lat": ("arabic", "latin")}
if set(tasks) - set(TEMPLATES):
    fail(f"unknown tasks {sorted(set(tasks) - set(TEMPLATES))}; choose among {', '.join(TEMPLATES)}")


def norm(text):
    """The key used for dedup and grouping: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def read_rows(path):
    """Yield (line number, row dict) from a JSONL or CSV file; unreadable lines are ValueErrors."""
    if not os.path.isfile(path):
        raise ValueError(f"source file not found: {path} (see README 'Instruction tuning' for how to get data)")
    with open(path, encoding="utf-8", newline="") as f:
        if path.endswith(".csv"):
            reader = csv.DictReader(f)
            yield from ((reader.line_num, row) for row in reader)
            return
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                row = ValueError(f"not valid JSON ({e.msg} at column {e.colno})")
            yield n, row if isinstance(row, (dict, ValueError)) else ValueError("expected a JSON object")


def read_source(src, tok):
    """Validated items of one source: conversations, or dicts of {latin, arabic, english} text."""
    path, kind = src.get("path"), src.get("kind")
    if kind not in ("conversations", "pairs"):
        raise ValueError(f"source {src}: kind must be 'conversations' or 'pairs'")
    columns = {k: src[k] for k in ("latin", "arabic", "english") if src.get(k)}
    if kind == "pairs" and len(columns) < 2:
        raise ValueError(f"source {path}: name at least two columns among latin=, arabic=, english=")
    items, bad, rows = [], [], 0
    for n, row in read_rows(path):
        rows += 1
        try:
            if isinstance(row, ValueError):
                raise row
            if kind == "conversations":
                if not isinstance(row.get("messages"), list):
                    raise ValueError("missing field 'messages' (a list of {role, content})")
                tok.render_conversation(row["messages"])  # ValueError: roles out of order, empty turn...
                items.append(dict(messages=row["messages"], origin=f"{path}:{n}"))
            else:
                gone = [c for c in columns.values() if c not in row]
                if gone:
                    raise ValueError(f"missing field {gone[0]!r} (the row has {', '.join(sorted(row)) or 'nothing'})")
                texts = {k: " ".join(str(row[c] or "").split()) for k, c in columns.items()}
                texts = {k: v for k, v in texts.items() if v}
                if len(texts) < 2:
                    raise ValueError("fewer than two non-empty texts: nothing to pair")
                items.append(dict(texts, origin=f"{path}:{n}"))
        except ValueError as e:
            bad.append(f"{path} line {n}: {e}")
    if len(bad) > max_bad_fraction * rows:
        more = f" (and {len(bad) - 1} more bad rows)" if len(bad) > 1 else ""
        raise ValueError(f"{bad[0]}{more}; fix the file, or allow a share of bad rows with --max_bad_fraction")
    for b in bad[:5]:
        print(f"  skipped {b}")
    return items, len(bad)


def pair_examples(item, rng):
    """Instruction examples made from one parallel item, for every task it has both sides of."""
    out = []
    for task in tasks:
        for lang, template, script in rng.sample(TEMPLATES[task], len(TEMPLATES[task])):
            darija = {"lat": "latin", "ar": "arabic"}.get(script)  # the Darija side is in the template's script
            x, y = (item.get(darija if f == "darija" else f) for f in TASK_FIELDS[task])
            if x and y:
                break
        else:
            continue  # the item lacks one side of this task
        messages = [{"role": "user", "content": template.format(x=x)}, {"role": "assistant", "content": y}]
        if system_prompt and rng.random() < system_prompt_share:
            messages.insert(0, {"role": "system", "content": system_prompt})
        out.append(dict(messages=messages, task=task, input=x, origin=item["origin"]))
    return out


def group_items(items):
    """Union-find: items sharing any normalised sentence (in any field) end up in one group."""
    parent, owner = list(range(len(items))), {}

    def root(i):
        while parent[i] != i:
            parent[i] = i = parent[parent[i]]
        return i

    for i, item in enumerate(items):
        for key in item_keys(item):
            parent[root(i)] = root(owner.setdefault(key, i))
    return [root(i) for i in range(len(items))]


def item_keys(item):
    if "messages" in item:
        return [json.dumps([norm(m["content"]) for m in item["messages"]], ensure_ascii=False)]
    return [f"{k}:{norm(item[k])}" for k in ("latin", "arabic", "english") if k in item]


def in_val(key):
    """A stable split decision from a hash, independent of file order and of the other items."""
    h = int.from_bytes(hashlib.sha1(f"{seed}:{key}".encode()).digest()[:8], "big")
    return h / 2**64 < val_fraction


def build_dataset(data_dir, tok, tok_path, tok_sha):
    items, report, seen = [], [], set()
    for src in sources:
        got, nbad = read_source(src, tok)
        fresh = [it for it in got if (k := tuple(item_keys(it))) not in seen and not seen.add(k)]
        report.append(dict(path=src["path"], kind=src["kind"], items=len(fresh),
                           duplicates=len(got) - len(fresh), bad_rows=nbad))
        items += fresh
    groups = group_items(items)
    val_groups = {g for g in set(groups) if in_val(min(item_keys(items[g])))}
    splits, seen_examples = {"train": [], "val": []}, set()
    for item, group in zip(items, groups):
        rng = random.Random(f"{seed}:{item['origin']}")  # phrasing fixed per item, whatever the order
        examples = pair_examples(item, rng) if "messages" not in item else [dict(item, task="chat")]
        split = "val" if group in val_groups else "train"
        for ex in examples:
            key = json.dumps([ex["task"]] + [norm(m["content"]) for m in ex["messages"] if m["role"] != "system"])
            if key not in seen_examples:
                seen_examples.add(key)
                splits[split].append(ex)
    for split in splits.values():
        random.Random(seed).shuffle(split)
    stats = dict(tokenizer=tok_path, tokenizer_sha256=tok_sha, seed=seed, val_fraction=val_fraction,
                 items=len(items), groups=len(set(groups)), sources=report)
    os.makedirs(data_dir, exist_ok=True)
    for name, examples in splits.items():
        masks = [tok.render_conversation(ex["messages"])[1] for ex in examples]
        tokens, answer = sum(map(len, masks)), sum(map(sum, masks))
        stats[name] = dict(examples=len(examples), tokens=tokens, assistant_tokens=answer,
                           assistant_share=round(answer / max(tokens, 1), 4),
                           tasks=dict(sorted(Counter(ex["task"] for ex in examples).items())))
        write_atomic(os.path.join(data_dir, f"{name}.jsonl"),
                     "".join(json.dumps(ex, ensure_ascii=False) + "\n" for ex in examples))
    write_atomic(os.path.join(data_dir, "stats.json"), json.dumps(stats, indent=1, ensure_ascii=False))
    return stats


def write_atomic(path, text):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def print_stats(stats):
    for s in stats["sources"]:
        print(f"  {s['path']}: {s['items']:,} items ({s['duplicates']:,} duplicates, {s['bad_rows']} bad rows)")
    print(f"  {stats['items']:,} items in {stats['groups']:,} groups (items sharing a sentence stay together)")
    for name, s in ((n, stats[n]) for n in ("train", "val")):
        print(f"  {name}: {s['examples']:,} examples, {s['tokens']:,} tokens, assistant share "
              f"{s['assistant_share']:.1%} ({', '.join(f'{t} {n:,}' for t, n in s['tasks'].items())})")


sft_dataset = sft_dataset or os.path.basename(os.path.normpath(init_from if os.path.isdir(init_from)
                                                               else os.path.dirname(init_from)))
data_dir = os.path.join("data", "sft", sft_dataset)
stats_path = os.path.join(data_dir, "stats.json")
if not os.path.isfile(stats_path) or (build_only and force):
    print(f"building the SFT dataset in {data_dir}/ with tokenizer {tok_path}")
    t0 = time.time()
    try:
        stats = build_dataset(data_dir, tok, tok_path, tok_sha)
    except ValueError as e:
        fail(str(e))
    print(f"built in {time.time() - t0:.1f}s:")
else:
    with open(stats_path, encoding="utf-8") as f:
        stats = json.load(f)
    if build_only:
        fail(f"{data_dir}/ already exists; add --force to rebuild it")
    print(f"using the SFT dataset in {data_dir}/ (delete it or run --build_only --force to rebuild)")
print_stats(stats)
if stats["tokenizer_sha256"] != tok_sha:
    fail(f"{data_dir}/ was built with tokenizer {stats['tokenizer']} (sha256 {stats['tokenizer_sha256'][:12]}), "
         f"but {init_from} uses {tok_path} (sha256 {tok_sha[:12]}): rebuild it with --build_only --force "
         f"or pick another --sft_dataset")
if build_only:
    sys.exit(0)


# --- 3. encoding and packing ---------------------------------------------------------------------

def encode(examples, limit):
    """(ids, mask) per example. A chat too long for the context keeps the leading turns that fit, if any."""
    out = []
    for ex in examples:
        msgs = ex["messages"]
        ids, mask = tok.render_conversation(msgs)
        while len(ids) > limit and sum(m["role"] == "assistant" for m in msgs) > 1:
            msgs = msgs[:-2]  # drop the last user/assistant exchange
            ids, mask = tok.render_conversation(msgs)
        if len(ids) <= limit:
            out.append((ids, mask))
    return out


def pack(encoded, T, rng=None):
    """Whole conversations packed into rows of T+1 tokens -> inputs (N, T), targets (N, T).

    Each conversation starts with <|endoftext|>, as documents did in pre-training, so the model
    knows a new one begins. Targets are -1 except on assistant tokens (and the row's padding)."""
    order = list(range(len(encoded)))
    if rng is not None:
        rng.shuffle(order)
    rows = [([], [])]  # (ids, mask) per row; the first conversation always fits (encode's limit)
    for i in order:
        ids, mask = encoded[i]
        if len(rows[-1][0]) + len(ids) > T + 1:
            rows.append(([], []))
        rows[-1][0].extend(ids)
        rows[-1][1].extend(mask)
    x = torch.tensor([ids + [tok.eot_id] * (T + 1 - len(ids)) for ids, _ in rows])
    m = torch.tensor([mask + [0] * (T + 1 - len(mask)) for _, mask in rows], dtype=torch.bool)
    return x[:, :-1], torch.where(m[:, 1:], x[:, 1:], -1)


# --- 4. training -------------------------------------------------------------------------------------

if os.path.exists(os.path.join(out_dir, "best.pt")) and not (force or resume):
    fail(f"{out_dir}/ already holds a checkpoint: add --force to overwrite it or --resume to continue it")
if resume and not os.path.isfile(os.path.join(out_dir, "last.pt")):
    fail(f"--resume: no {out_dir}/last.pt to continue from")
torch.manual_seed(seed)
device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
device_type = "cuda" if device.startswith("cuda") else "cpu"
autocast = torch.autocast(device_type, dtype=torch.bfloat16, enabled=device_type == "cuda")
T = block_size or ckpt["model_config"]["block_size"]
if T > ckpt["model_config"]["block_size"]:
    fail(f"block_size {T} is longer than the checkpoint's context ({ckpt['model_config']['block_size']})")

examples = {}
for split in ("train", "val"):
    with open(os.path.join(data_dir, f"{split}.jsonl"), encoding="utf-8") as f:
        examples[split] = [json.loads(line) for line in f]
train_enc, val_enc = encode(examples["train"], T + 1), encode(examples["val"], T + 1)
if not train_enc or not val_enc:
    fail(f"{data_dir}/ has no usable {'train' if not train_enc else 'val'} examples "
         f"(too few sources, or every example longer than {T} tokens)")
val_x, val_y = (t[:eval_iters * batch_size] for t in pack(val_enc, T))
dropped = len(examples["train"]) + len(examples["val"]) - len(train_enc) - len(val_enc)
print(f"{len(train_enc):,} train / {len(val_enc):,} val conversations ({dropped} longer "
      f"than {T} tokens dropped); val: {len(val_x)} rows, {int((val_y >= 0).sum()):,} assistant tokens")

state = load_checkpoint(os.path.join(out_dir, "last.pt")) if resume else ckpt
raw_model = model_from_checkpoint(state).to(device)
model = torch.compile(raw_model) if compile else raw_model
optimizer = raw_model.configure_optimizers(weight_decay, learning_rate, (0.9, 0.95), device_type)
step, best_val, best_step = 0, float("inf"), 0
if resume:
    optimizer.load_state_dict(state["optimizer"])
    step, best_val, best_step = state["step"], state["best_val_loss"], state["step"]
    print(f"resuming {out_dir}/last.pt at step {step} (best val {best_val:.4f})")
print(f"fine-tuning {raw_model.num_params() / 1e6:.2f}M parameters from {init_from} on {device}")


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


def generate_text(m, ids, first_line=False):
    """Greedy continuation of `ids` up to a special token (<|end|>, or a derailment) or, if first_line, a newline."""
    out, room, stop = [], min(max_new_tokens, m.config.block_size - len(ids)), set(tok.special_tokens.values())
    for t in (m.generate(ids, room, temperature=0) if room > 0 else ()):
        if t in stop or (first_line and "\n" in tok.decode(out)):
            break
        out.append(t)
    text = tok.decode(out)
    return (text.split("\n")[0] if first_line else text).strip()


def answer(m, messages):
    return generate_text(m, tok.render_for_completion(messages))


def checkpoint(path, with_optimizer):
    save_checkpoint(path, raw_model, kind="sft", step=step, best_val_loss=best_val, config=config,
                    tokenizer=tok_path, tokenizer_sha256=tok_sha, optimizer=optimizer if with_optimizer else None)


rng = random.Random(seed + step)
train_x, train_y = pack(train_enc, T, rng)
row, bad_evals, t0, tokens_seen = 0, 0, time.time(), 0
while True:
    if step % eval_interval == 0 or step == max_iters:
        val = evaluate()
        improved = val < best_val
        bad_evals = 0 if improved else bad_evals + 1
        if improved:
            best_val, best_step = val, step
            checkpoint(os.path.join(out_dir, "best.pt"), with_optimizer=False)
        checkpoint(os.path.join(out_dir, "last.pt"), with_optimizer=True)
        print(f"step {step}: val loss {val:.4f} (assistant tokens){' *best, saved' if improved else ''}")
        for prompt in sample_prompts:
            print(f"  > {prompt}\n    {answer(raw_model, [{'role': 'user', 'content': prompt}])!r}")
        if bad_evals >= patience:
            print(f"early stop at step {step}: val has not improved for {patience} evals "
                  f"(best {best_val:.4f} at step {best_step})")
            break
        if step >= max_iters:
            break
    if row + batch_size > len(train_x):  # a new epoch: reshuffle and repack
        (train_x, train_y), row = pack(train_enc, T, rng), 0
    x, y = train_x[row:row + batch_size].to(device), train_y[row:row + batch_size].to(device)
    row += batch_size
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step)
    with autocast:
        _, loss = model(x, y)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    step, tokens_seen = step + 1, tokens_seen + x.numel()
    if step % log_interval == 0:
        elapsed = time.time() - t0
        eta = elapsed / tokens_seen * x.numel() * (max_iters - step)
        print(f"step {step}/{max_iters}: loss {loss.item():.4f}, lr {lr_at(step):.2e}, "
              f"{tokens_seen / elapsed:,.0f} tok/s, ETA {eta / 60:.1f} min (sooner on an early stop)")


# --- 5. the task metric: chrF of greedy answers, base (few-shot) vs SFT -----------------------------

def chrf(hyps, refs, order=6, beta=2.0):
    """Corpus-level chrF (Popovic 2015), computed as sacrebleu does by default: character n-grams
    of orders 1..6 with whitespace removed, counts summed over the corpus, precision and recall
    averaged over the orders present, then the F-score weighting recall beta times as much."""
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
    p, r = (sum(u[k] for u in used) / len(used) if used else 0.0 for k in (0, 1))
    return 100 * (1 + beta**2) * p * r / (beta**2 * p + r) if p + r else 0.0


FEW_SHOT = {"lat2ar": ("Arabizi", "Arabic"), "dar2en": ("Darija", "English")}


def task_scores(m, chat):
    """chrF per task: the chat model answers the held-out request as phrased; the base model
    continues a few-shot plain-text prompt ("Arabizi: ...\\nArabic: ...") up to the newline."""
    scores = {}
    for task, (a, b) in FEW_SHOT.items():
        items = [ex for ex in examples["val"] if ex["task"] == task][metric_skip:metric_skip + metric_items]
        if not items:
            continue
        shots = [ex for ex in examples["train"] if ex["task"] == task and len(ex["input"]) < 60][:few_shot]
        prefix = "".join(f"{a}: {s['input']}\n{b}: {s['messages'][-1]['content']}\n\n" for s in shots)
        hyps = [answer(m, ex["messages"][:-1]) if chat else
                generate_text(m, [tok.eot_id] + tok.encode_ordinary(f"{prefix}{a}: {ex['input']}\n{b}:"), True)
                for ex in items]
        score = round(chrf(hyps, [ex["messages"][-1]["content"] for ex in items]), 2)
        scores[task] = dict(items=len(items), chrf=score, example=dict(input=items[0]["input"], output=hyps[0]))
        print(f"  {'sft' if chat else 'base'} {task}: chrF {scores[task]['chrf']:.1f} on {len(items)} items")
    return scores


if metric_items:
    print(f"task metric: chrF of greedy answers on up to {metric_items} held-out items per task"
          f"{f', after the first {metric_skip}' if metric_skip else ''}")
    base = task_scores(model_from_checkpoint(ckpt).to(device), chat=False)
    tuned = task_scores(model_from_checkpoint(load_checkpoint(os.path.join(out_dir, "best.pt"))).to(device), chat=True)
    print(f"{'task':8} {'items':>5} {'base (few-shot)':>16} {'sft':>7}")
    for task in tuned:
        print(f"{task:8} {tuned[task]['items']:5d} {base[task]['chrf']:16.1f} {tuned[task]['chrf']:7.1f}")
        print(f"  e.g. {tuned[task]['example']['input']!r} -> base {base[task]['example']['output']!r}, "
              f"sft {tuned[task]['example']['output']!r}")
    write_atomic(os.path.join(out_dir, "metrics.json"), json.dumps(dict(
        base=base, sft=tuned, best_step=best_step, best_val_loss=best_val, steps=step, seed=seed, few_shot=few_shot,
        init_from=init_from, sft_dataset=sft_dataset, train_examples=len(train_enc)), indent=1, ensure_ascii=False))
print(f"done: {out_dir}/best.pt (step {best_step}, val loss {best_val:.4f}); chat: python chat.py --ckpt {out_dir}")
