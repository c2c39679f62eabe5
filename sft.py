"""
sft.py: instruction tuning. Builds a chat dataset from conversations and parallel Darija data, then
fine-tunes every weight of a pre-trained GPT with the loss on the assistant's tokens only.

    python sft.py config/sft_darija.py                 # builds data/sft/NAME/ if missing, then trains
    python sft.py config/sft_darija.py --build_only    # only (re)build the dataset
    python chat.py --ckpt out/darija_sft               # talk to the result
    python eval.py out/darija_small out/darija_sft     # score them side by side (reports/darija_sft/)

What happens, in order (and why):
1. The base checkpoint (init_from) is loaded with its tokenizer.
2. The dataset, data/sft/NAME/, is built when missing, from files and Hugging Face datasets. A bad row
   (roles out of order, an empty turn, ...) is an error naming its file and line, or is skipped and
   counted within max_bad_fraction. Parallel rows (Arabizi, Arabic script, English) become requests
   both ways between Darija and English and between the scripts, each in one of several phrasings
   (`prompts`): one template would teach the template, not the task. Rows sharing a sentence are
   grouped and split by a hash of the group, so no sentence is on both sides of train/val.
3. Training: whole conversations packed into rows (bpe.py), targets -1 except on the assistant's
   tokens and their <|end|>, so the model learns to answer, not to imitate users. Every
   eval_interval steps: the val loss, sample answers, best.pt, and an early stop after `patience`
   evals without improvement (the freeCodeCamp course this project reworks, Imad Saddik's, trained
   50 epochs on 257 pairs: train loss 0.006, val 3.64).
4. The task metric, base vs fine-tuned: eval.py (run as a script) scores both on held-out requests
   (chrF of greedy answers; the base gets a few-shot plain prompt) into out_dir/eval/, and
   metrics.json gets its scores next to the run's figures.
"""
import csv
import hashlib
import io
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import unicodedata
from collections import Counter
from pathlib import Path

import torch

from model import (learning_rate_at, load_checkpoint, load_with_tokenizer, model_from_checkpoint, save_checkpoint,
                   sha256_of, training_precision)

# --- settings (override with a config file and --key=value) ---
init_from = "out/darija_small"      # the pre-trained checkpoint (a directory means its best.pt)
out_dir = "out/darija_sft"
sft_dataset = ""                    # data/sft/NAME/; "": named after init_from (its tokenizer)
# sources: a file (path=: JSONL, CSV or parquet) or a Hugging Face dataset (hub="owner/name", config=, split="train",
# revision=), max_rows= (the first rows only), max_bad_fraction= (this source's own); of kind "conversations" (a
# column of [{role, content}, ...], messages="messages") or "pairs" (parallel columns: name those holding at
# least two of latin=, arabic=, english=)
sources = [dict(path="data/sample/sft/conversations.jsonl", kind="conversations"),
           dict(path="data/sample/sft/pairs.jsonl", kind="pairs", latin="darija", arabic="darija_ar", english="eng")]
tasks = ["dar2en", "en2dar", "lat2ar", "ar2lat"]  # pairs made from parallel rows (Darija->English, ...)
prompts = "data/sample/sft/prompts.json"  # how each task's requests are phrased (several ways, 3 languages)
system_prompt = "nta m3awen kayhder b darija. jaweb b wdo7 o b ikhtisar."
system_prompt_share = 0.3           # share of pair examples that start with the system prompt
val_fraction = 0.05
max_bad_fraction = 0.0              # bad rows tolerated per source (skipped, counted); 0: fail
max_tokens = 0                      # a conversation longer, even cut to its first exchange, is a bad row; 0: no limit
build_only = False
force = False                       # rebuild a dataset / overwrite out_dir (never files sft.py did not write)
resume = False                      # continue from out_dir/last.pt (saved at each eval, and on Ctrl-C)
# training
batch_size = 16
block_size = 0                      # 0: the checkpoint's context length
learning_rate = 5e-4
min_lr = 5e-5
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
dtype = "auto"                      # "auto" (CUDA: bf16 from compute capability 8.0, fp16 + loss scaling below;
                                    # fp32 elsewhere), "bfloat16", "float16", "float32"
compile = False
sample_prompts = ["Translate to English: kifach dayer? labas 3lik?",
                  "ktb liya hadi b l7orof l3arbiya: sba7 lkhir a sa7bi",
                  "شنو هي أحسن مدينة فالمغرب؟"]
# task metric (eval.py's chrF of greedy answers, after training)
metric_items = 100                  # held-out items per task; 0 skips the metric
metric_skip = 0                     # held-out items passed over first (scores items a choice was not made on)
few_shot = 3                        # solved examples shown to the base model
max_new_tokens = 64

from configurator import atomic_write, claim_output, configure, hub_files, hub_read, plain_name  # noqa: E402
config = configure(globals())
ROOT = os.path.dirname(os.path.abspath(__file__))


def fail(msg):
    raise SystemExit(f"sft.py: {msg}")


# --- 1. the base checkpoint and its tokenizer (checked to be the file it was trained with) -----------
if not os.path.isfile(os.path.join(init_from, "best.pt") if os.path.isdir(init_from) else init_from):
    fail(f"no base checkpoint at {init_from}: pre-train one first with `python pretrain.py config/darija_small.py` "
         f"(or set --init_from)")
try:
    ckpt, tok, tok_path = load_with_tokenizer(init_from)
except ValueError as e:
    fail(str(e))
if not all(t in tok.special_tokens for t in ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")):
    fail(f"{tok_path} has no chat tokens: rebuild it with the current bpe.py (prepare.py --force)")
tok_sha = sha256_of(tok_path)


# --- 2. the dataset ------------------------------------------------------------------------------
def normalized(text):
    """The form texts are compared in, for dedup and grouping: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def read_rows(path, name):
    """Yield (line or row number, row dict) from a JSONL, CSV or parquet file (`name` in messages); unreadable
    lines are ValueErrors."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq  # imported here: only parquet files need it
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        yield from enumerate((row for batch in batches for row in batch.to_pylist()), 1)
        return
    if not os.path.isfile(path):
        raise ValueError(f"source file not found: {path} (see README 'Instruction tuning' for how to get data)")
    raw = Path(path).read_bytes()
    try:
        f = io.StringIO(raw.decode("utf-8"), newline="")  # as a text file: lines end at \n, \r or \r\n
    except UnicodeDecodeError as e:  # the codec knows only the byte offset: name the line
        line = len(raw[:e.start + 1].splitlines())  # bytes split at \n, \r and \r\n too
        raise ValueError(f"{name} line {line}: not valid UTF-8 (byte {raw[e.start]:#04x}): save it as UTF-8") from None
    if path.endswith(".csv"):
        csv.field_size_limit(2**31 - 1)  # a field can be a long conversation turn: csv's default stops at 128 KB
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


def source_rows(src):
    """Yield (file, line or row number, row) of a source's files in turn (hub files downloaded as they come)."""
    files = hub_files(src, "sft.py", (".jsonl", ".csv", ".parquet")) if "hub" in src else [(None, src["path"])]
    for remote, path in files:
        name = f"{src['hub']}/{remote}" if remote else path
        rows = hub_read(src, remote, path, lambda local: read_rows(local, name), "sft.py") if remote else \
            read_rows(path, name)
        yield from ((name, n, row) for n, row in rows)


def read_source(src, tok):
    """Validated items of one source, a file or a hub dataset: conversations, or dicts of {latin, arabic, english}
    text. Rows that break the format are skipped and counted while at most max_bad_fraction of the source."""
    keys = {"path", "hub", "config", "split", "revision", "max_rows", "max_bad_fraction", "kind", "messages", "latin",
            "arabic", "english"}
    if not isinstance(src, dict) or ["path" in src, "hub" in src].count(True) != 1 or set(src) - keys:
        raise ValueError(f"source {src!r}: a dict with path= or hub=, and the keys {', '.join(sorted(keys))}")
    kind, field = src.get("kind"), src.get("messages", "messages")
    columns = {k: src[k] for k in ("latin", "arabic", "english") if src.get(k)}
    if kind not in ("conversations", "pairs"):
        raise ValueError(f"source {src}: kind must be 'conversations' or 'pairs'")
    if kind == "pairs" and len(columns) < 2:
        raise ValueError(f"source {src!r}: name at least two columns among latin=, arabic=, english=")
    items, bad, rows = [], [], 0
    for rows, (name, n, row) in enumerate(itertools.islice(source_rows(src), src.get("max_rows")), 1):
        try:
            if isinstance(row, ValueError):
                raise row
            gone = [c for c in ([field] if kind == "conversations" else columns.values()) if c not in row]
            if gone:
                raise ValueError(f"missing field {gone[0]!r} (the row has {', '.join(sorted(row)) or 'nothing'})")
            if kind == "conversations":  # fit_conversation raises on roles out of order, an empty turn, ...
                if not tok.fit_conversation(row[field], max_tokens or float("inf")):
                    raise ValueError(f"over-long: over max_tokens={max_tokens} tokens, even cut to its first exchange")
                items.append(dict(messages=row[field], origin=f"{name}:{n}"))
            else:
                texts = {k: " ".join(str(row[c] or "").split()) for k, c in columns.items()}
                texts = {k: v for k, v in texts.items() if v}
                if len(texts) < 2:
                    raise ValueError("fewer than two non-empty texts: nothing to pair")
                items.append(dict(texts, origin=f"{name}:{n}"))
        except ValueError as e:
            bad.append(f"{name} {'row' if name.endswith('.parquet') else 'line'} {n}: {e}")
    if len(bad) > src.get("max_bad_fraction", max_bad_fraction) * rows:
        more = f" (and {len(bad) - 1} more bad rows of {rows})" if len(bad) > 1 else ""
        raise ValueError(f"{bad[0]}{more}; fix the source, or allow a share of bad rows with --max_bad_fraction")
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
        return [json.dumps([normalized(message["content"]) for message in item["messages"]], ensure_ascii=False)]
    return [f"{k}:{normalized(item[k])}" for k in ("latin", "arabic", "english") if k in item]


def in_val(key):  # a stable split decision from a hash: independent of file order and of the other items
    return int.from_bytes(hashlib.sha1(f"{seed}:{key}".encode()).digest()[:8], "big") / 2**64 < val_fraction


def build_dataset(data_dir, tok, tok_path, tok_sha):
    items, report, seen = [], [], set()
    for src in sources:
        if "path" in src and os.path.realpath(str(src["path"])).startswith(os.path.realpath(data_dir) + os.sep):
            raise ValueError(f"source {src['path']} lies inside {data_dir}/, which sft.py rewrites: move it out")
        got, n_bad = read_source(src, tok)
        fresh = []
        for item in got:  # exact duplicates, across sources, are dropped
            key = tuple(item_keys(item))
            if key not in seen:
                seen.add(key)
                fresh.append(item)
        report.append(dict({k: src[k] for k in ("path", "hub", "config", "split") if k in src}, kind=src["kind"],
                           items=len(fresh), duplicates=len(got) - len(fresh), bad_rows=n_bad))
        items += fresh
    groups = group_items(items)
    val_groups = {g for g in set(groups) if in_val(min(item_keys(items[g])))}
    splits, seen_examples = {"train": [], "val": []}, set()
    for item, group in zip(items, groups):
        rng = random.Random(f"{seed}:{item['origin']}")  # phrasing fixed per item, whatever the order
        examples = pair_examples(item, rng) if "messages" not in item else [dict(item, task="chat")]
        split = "val" if group in val_groups else "train"
        for ex in examples:
            contents = [normalized(msg["content"]) for msg in ex["messages"] if msg["role"] != "system"]
            key = json.dumps([ex["task"]] + contents)
            if key not in seen_examples:
                seen_examples.add(key)
                splits[split].append(ex)
    for split in splits.values():
        random.Random(seed).shuffle(split)
    stats = dict(tokenizer=tok_path, tokenizer_sha256=tok_sha, seed=seed, val_fraction=val_fraction,
                 items=len(items), groups=len(set(groups)), sources=report)
    partial = data_dir + ".partial"  # built apart, then renamed: a killed build never looks finished
    shutil.rmtree(partial, ignore_errors=True)  # an interrupted build's (this run holds the folder's lock)
    for name, examples in splits.items():
        masks = [tok.render_conversation(ex["messages"])[1] for ex in examples]
        tokens, answer = sum(map(len, masks)), sum(map(sum, masks))
        stats[name] = dict(examples=len(examples), tokens=tokens, assistant_tokens=answer,
                           assistant_share=round(answer / max(tokens, 1), 4),
                           tasks=dict(sorted(Counter(ex["task"] for ex in examples).items())))
        write_atomic(os.path.join(partial, f"{name}.jsonl"),
                     "".join(json.dumps(ex, ensure_ascii=False) + "\n" for ex in examples))
    write_atomic(os.path.join(partial, "stats.json"), json.dumps(stats, indent=1, ensure_ascii=False))
    shutil.rmtree(data_dir, ignore_errors=True)  # --force on a folder sft.py built (checked by claim_output)
    os.replace(partial, data_dir)
    return stats


def write_atomic(path, text):  # through a temporary file (configurator.atomic_write)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


prompts_path = prompts if os.path.isfile(prompts) else os.path.join(ROOT, prompts)  # shipped with the code
if not os.path.isfile(prompts_path):
    fail(f"prompts file not found: {prompts} (see data/sample/sft/prompts.json for the format)")
with open(prompts_path, encoding="utf-8") as f:  # per task: [language of the request, template, Darija script]
    TEMPLATES = {task: phrasings for task, phrasings in json.load(f).items() if task != "about"}
TASK_FIELDS = {"dar2en": ("darija", "english"), "en2dar": ("english", "darija"),
               "lat2ar": ("latin", "arabic"), "ar2lat": ("arabic", "latin")}
if set(tasks) - set(TEMPLATES):
    fail(f"unknown tasks {sorted(set(tasks) - set(TEMPLATES))}; choose among {', '.join(TEMPLATES)}")
sft_dataset = plain_name("sft_dataset", sft_dataset or os.path.basename(os.path.normpath(
    init_from if os.path.isdir(init_from) else os.path.dirname(init_from))))
data_dir = os.path.join("data", "sft", sft_dataset)
stats_path = os.path.join(data_dir, "stats.json")
try:  # the dataset's stats.json, if sft.py wrote it (a user's file of that name is no such thing)
    stats = json.loads(Path(stats_path).read_text(encoding="utf-8"))
    built = {"tokenizer_sha256", "sources", "train", "val"} <= set(stats)
except (OSError, ValueError, TypeError):
    built = False
if build_only and built and not force:
    fail(f"{data_dir}/ already exists; add --force to rebuild it")
if build_only or not built:
    claim_output(data_dir, ("train.jsonl", "val.jsonl", "stats.json") if built else (), "sft.py",
                 "it builds only into a new folder or one it built: move them out or pick another --sft_dataset")
    print(f"building the SFT dataset in {data_dir}/ with tokenizer {tok_path}")
    try:
        stats = build_dataset(data_dir, tok, tok_path, tok_sha)
    except (ValueError, ConnectionError) as e:  # ConnectionError: a hub dataset out of reach, not cached
        fail(str(e))
else:
    print(f"using the SFT dataset in {data_dir}/ (delete it or run --build_only --force to rebuild)")
for src in stats["sources"]:
    print(f"  {src.get('path') or src['hub']}: {src['items']:,} items ({src['duplicates']:,} duplicates, "
          f"{src['bad_rows']} bad rows)")
print(f"  {stats['items']:,} items in {stats['groups']:,} groups (items sharing a sentence stay together)")
for name in ("train", "val"):
    per_task = ", ".join(f"{task} {count:,}" for task, count in stats[name]["tasks"].items())
    print(f"  {name}: {stats[name]['examples']:,} examples, {stats[name]['tokens']:,} tokens, assistant share "
          f"{stats[name]['assistant_share']:.1%} ({per_task})")
if stats["tokenizer_sha256"] != tok_sha:
    fail(f"{data_dir}/ was built with tokenizer {stats['tokenizer']} (sha256 {stats['tokenizer_sha256'][:12]}), "
         f"but {init_from} uses {tok_path} (sha256 {tok_sha[:12]}): rebuild it with --build_only --force "
         f"or pick another --sft_dataset")
if build_only:
    sys.exit(0)


# --- 3. training: whole conversations packed into rows, the loss on the assistant's tokens ----------
def checkpoint(path, with_optimizer):
    save_checkpoint(path, raw_model, kind="sft", step=step, best_val_loss=best_val, config=config,
                    tokenizer=tok_path, tokenizer_sha256=tok_sha, optimizer=optimizer if with_optimizer else None,
                    scaler=scaler)


def answer(model, prompt):
    """The greedy answer to one user message, up to a special token (<|end|>, or a derailment)."""
    ids, stop = tok.render_for_completion([{"role": "user", "content": prompt}]), set(tok.special_tokens.values())
    room = min(max_new_tokens, model.config.block_size - len(ids))
    tokens = model.generate(ids, room, temperature=0, stop_ids=stop) if room > 0 else ()
    return tok.decode([token for token in tokens if token not in stop]).strip()


examples = {}
for split in ("train", "val"):
    with open(os.path.join(data_dir, f"{split}.jsonl"), encoding="utf-8") as f:
        examples[split] = [json.loads(line) for line in f]
torch.manual_seed(seed)
device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
device_type = "cuda" if device.startswith("cuda") else "cpu"
if device_type == "cuda" and not torch.cuda.is_available():
    fail(f"--device={device}: no CUDA device here (use --device=cpu, or auto)")
if dtype not in ("auto", "bfloat16", "float16", "float32"):
    fail(f"dtype must be auto, bfloat16, float16 or float32; got {dtype!r}")
dtype, autocast, scaler = training_precision(device, dtype)  # the GradScaler does nothing unless float16
# out_dir/eval/ is eval.py's report (eval.lock, while it runs); scores.json, an older sft.py's metric
claim_output(out_dir, ("best.pt", "last.pt", "metrics.json", "eval", "eval.lock", "scores.json"), "sft.py",
             "pick another --out_dir")
if os.path.exists(os.path.join(out_dir, "best.pt")) and not (force or resume):
    fail(f"{out_dir}/ already holds a checkpoint: add --force to overwrite it or --resume to continue it")
last_path = os.path.join(out_dir, "last.pt")
if resume and not os.path.isfile(last_path):
    fail(f"--resume: no {last_path} to continue from")
T = block_size or ckpt["model_config"]["block_size"]
if T > ckpt["model_config"]["block_size"]:
    fail(f"block_size {T} is longer than the checkpoint's context ({ckpt['model_config']['block_size']})")
train_chats, val_chats = ([c for c in (tok.fit_conversation(ex["messages"], T + 1) for ex in examples[split]) if c]
                          for split in ("train", "val"))
if not train_chats or not val_chats:
    fail(f"{data_dir}/ has no usable {'train' if not train_chats else 'val'} examples "
         f"(too few sources, or every example longer than {T} tokens)")
val_x, val_y = (torch.tensor(rows[:eval_iters * batch_size], device=device)  # fixed rows: evaluations compare
                for rows in tok.pack_conversations(val_chats, T))
print(f"{len(train_chats):,} train / {len(val_chats):,} val conversations (longer than {T} tokens: dropped); "
      f"val: {len(val_x)} rows, {int((val_y >= 0).sum()):,} assistant tokens")
if resume:  # last.pt must be readable and trained on this very data: same tokenizer, same vocabulary
    try:
        state = load_checkpoint(last_path)
    except ValueError as e:
        fail(f"--resume: {e}")
    last_vocab, data_vocab = state["model_config"]["vocab_size"], ckpt["model_config"]["vocab_size"]
    if state.get("tokenizer_sha256") != stats["tokenizer_sha256"] or last_vocab != data_vocab:
        fail(f"--resume: {last_path} was trained with tokenizer {state.get('tokenizer')} (sha256 "
             f"{str(state.get('tokenizer_sha256'))[:12]}, vocab {last_vocab}), but {data_dir}/ was built with "
             f"{stats['tokenizer']} (sha256 {stats['tokenizer_sha256'][:12]}, vocab {data_vocab}): --force starts over")
raw_model = model_from_checkpoint(state if resume else ckpt).to(device)
raw_model.chunked_loss = device_type == "cpu" and dtype == "float32"  # model.py's CPU speed trick for training
model = torch.compile(raw_model) if compile else raw_model
optimizer = raw_model.configure_optimizers(weight_decay, learning_rate, (0.9, 0.95), device_type)
step, best_val, best_step, bad_evals = 0, float("inf"), 0, 0
if resume:  # where the run was: its step, its best val and when, and the evaluations since without a better one
    optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):  # the fp16 loss scale and its growth count
        scaler.load_state_dict(state["scaler"])
    step, best_val, best_step = state["step"], state["best_val_loss"], load_checkpoint(out_dir)["step"]
    bad_evals = (step - best_step) // eval_interval
    print(f"resuming {out_dir}/last.pt at step {step} (best val {best_val:.4f} at step {best_step})")
print(f"fine-tuning {raw_model.num_params() / 1e6:.2f}M parameters from {init_from} on {device} ({dtype})")

interrupted = []  # Ctrl-C / SIGTERM while training (as in pretrain.py): finish the step, save last.pt, stop
on_sigint = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
on_sigterm = signal.signal(signal.SIGTERM, lambda signum, frame: interrupted.append(signum))


def training_batches():
    """Batches of packed rows, epoch after epoch, each epoch in a new shuffle: the same sequence from the
    same seed, so a resumed run replays the shuffles up to its step and goes on with the very same batches."""
    rng, order = random.Random(seed), list(train_chats)
    while True:
        rng.shuffle(order)
        rows_x, rows_y = tok.pack_conversations(order, T)
        for row in range(0, len(rows_x) - batch_size + 1, batch_size):
            yield rows_x[row:row + batch_size], rows_y[row:row + batch_size]


batches, resumed_at = itertools.islice(training_batches(), step, None), step if resume else None
t0, tokens_seen = time.time(), 0
while True:
    if (step % eval_interval == 0 or step == max_iters) and step != resumed_at:  # resumed: evaluated already
        raw_model.eval()
        with autocast:
            val = raw_model.mean_loss(val_x, val_y, batch_size)  # every assistant token of the val rows
        raw_model.train()
        improved = val < best_val
        bad_evals = 0 if improved else bad_evals + 1
        if improved:
            best_val, best_step = val, step
            checkpoint(os.path.join(out_dir, "best.pt"), with_optimizer=False)
        checkpoint(last_path, with_optimizer=True)
        print(f"step {step}: val loss {val:.4f} (assistant tokens){' *best, saved' if improved else ''}")
        for prompt in sample_prompts:
            print(f"  > {prompt}\n    {answer(raw_model, prompt)!r}")
        if bad_evals >= patience:
            print(f"early stop at step {step}: val has not improved for {patience} evals "
                  f"(best {best_val:.4f} at step {best_step})")
    if bad_evals >= patience or step >= max_iters:  # (a resumed run that had stopped, stops again)
        break
    x, y = (torch.tensor(rows, device=device) for rows in next(batches))
    lr = learning_rate_at(step, learning_rate, min_lr, warmup_iters, max_iters)
    for group in optimizer.param_groups:
        group["lr"] = lr
    with autocast:
        _, loss = model(x, y)
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    step, tokens_seen = step + 1, tokens_seen + x.numel()
    if step % log_interval == 0:
        elapsed = time.time() - t0  # evaluations included: what the user waits for
        print(f"step {step}/{max_iters}: loss {loss.item():.4f}, lr {lr:.2e}, {tokens_seen / elapsed:,.0f} tok/s, "
              f"ETA {elapsed / tokens_seen * x.numel() * (max_iters - step) / 60:.1f} min (sooner on an early stop)")
    if interrupted:
        checkpoint(last_path, with_optimizer=True)
        print(f"stopped at step {step}: saved {last_path}; continue with --resume")
        sys.exit(130)
signal.signal(signal.SIGINT, on_sigint)  # after training, Ctrl-C and SIGTERM act at once again
signal.signal(signal.SIGTERM, on_sigterm)


# --- 4. the task metric: eval.py scores the base (few-shot) and the fine-tuned best.pt side by side ---
if metric_items:
    report_dir = os.path.join(out_dir, "eval")
    cmd = [sys.executable, os.path.join(ROOT, "eval.py"), init_from, os.path.join(out_dir, "best.pt"),
           "--tasks=translation", f"--sft_dataset={sft_dataset}", f"--metric_items={metric_items}",
           f"--metric_skip={metric_skip}", f"--few_shot={few_shot}", f"--max_new_tokens={max_new_tokens}",
           f"--device={device}", f"--out={report_dir}", "--force"]
    print(f"task metric: python eval.py {' '.join(cmd[2:])}", flush=True)
    if subprocess.run(cmd).returncode:
        fail("eval.py could not score the models (see above)")
    with open(os.path.join(report_dir, "report.json"), encoding="utf-8") as f:
        base, finetuned = (scored["translation"] for scored in json.load(f)["checkpoints"])
    write_atomic(os.path.join(out_dir, "metrics.json"), json.dumps(dict(
        base=base, sft=finetuned, best_step=best_step, best_val_loss=best_val, steps=step, seed=seed, few_shot=few_shot,
        init_from=init_from, sft_dataset=sft_dataset, train_examples=len(train_chats)), indent=1, ensure_ascii=False))
print(f"done: {out_dir}/best.pt (step {best_step}, val loss {best_val:.4f}); chat: python chat.py --ckpt {out_dir}")
