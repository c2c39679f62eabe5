"""
Benchmark of the tokenizer stage (bpe.py), printed side by side from one run:
- training time for a 16,384 vocabulary on a fixed 10 MB Darija sample: ours vs the Hugging
  Face `tokenizers` BPE trainer (Rust, 2 threads) with the same split pattern, as a ratio;
- bytes per token on held-out Darija (higher is better): ours with the darija and gpt4
  patterns, HF BPE on the same data, gpt2, cl100k_base, o200k_base, the course's 16k model;
- encoding speed in MB/s: our pure-Python encoder, our tiktoken export, tiktoken's own
  cl100k_base (one thread, one document at a time), HF's encode_batch (2 threads).

The sample is drawn deterministically: every document of ../shared/data/darija/pretrain,
shuffled with a fixed seed; the first 10 MB (UTF-8 bytes) train, the next 1 MB is held out
(minus any document whose text also appears in the training part). Reference figures from a
separate measurement are printed beside ours; bench/README.md holds the results.

    python bench/tokenizer.py                  # about 1-2 minutes on 2 cores
    python bench/tokenizer.py --vocab_size=4096 --train_mb=2
"""
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "2")  # HF's thread pool: 2 threads, as in bench/README.md
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"
if (SHARED / "tiktoken_cache").is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken_cache"))

vocab_size = 16384
train_mb = 10.0
heldout_mb = 1.0
seed = 1337
data_dir = str(SHARED / "data" / "darija" / "pretrain")
course_model = str(SHARED / "data" / "anchors" / "course_tokenizer_base.model")
hf = True  # also train HF tokenizers (the reference trainer)
from configurator import configure  # noqa: E402
configure(globals())

import tiktoken  # noqa: E402
from bpe import PATTERNS, SPECIAL_TOKENS, Tokenizer, load_minbpe  # noqa: E402


def load_sample():
    """-> (train docs, held-out docs): a seeded shuffle of every document, cut by size."""
    files = sorted(Path(data_dir).glob("*.jsonl"))
    if not files:
        raise SystemExit(f"no .jsonl files in {data_dir}: this benchmark needs ../shared/data")
    docs = [json.loads(line)["text"] for f in files for line in open(f, encoding="utf-8") if line.strip()]
    random.Random(seed).shuffle(docs)
    train, held, size = [], [], 0
    for doc in docs:
        n = len(doc.encode("utf-8"))
        if size < train_mb * 1e6:
            train.append(doc)
        elif size < (train_mb + heldout_mb) * 1e6:
            held.append(doc)
        else:
            break
        size += n
    seen = set(train)
    return train, [d for d in held if d not in seen]


def train_hf(docs, pattern):
    """HF's byte-level BPE trainer with our split pattern and our special tokens."""
    from tokenizers import Regex, Tokenizer as HFTokenizer, models, pre_tokenizers, trainers
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((docs[i:i + 1000] for i in range(0, len(docs), 1000)), trainer, length=len(docs))
    return tok


def timed(fn, *args, repeat=1):
    """-> (result, best wall time of `repeat` runs)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return result, best


def bytes_per_token(n_tokens):
    return held_bytes / n_tokens


train, held = load_sample()
train_bytes = sum(len(d.encode("utf-8")) for d in train)
held_bytes = sum(len(d.encode("utf-8")) for d in held)
print(f"sample: {len(train):,} training documents ({train_bytes / 1e6:.1f} MB), "
      f"{len(held):,} held-out documents ({held_bytes / 1e6:.2f} MB), seed {seed}, vocab {vocab_size:,}")

# --- training time ---------------------------------------------------------------
ours, t_ours = timed(Tokenizer.train, train, vocab_size, "darija")
ours_gpt4, t_ours_gpt4 = timed(Tokenizer.train, train, vocab_size, "gpt4")
rows = [("ours, darija pattern", t_ours), ("ours, gpt4 pattern", t_ours_gpt4)]
if hf:
    hf_tok, t_hf = timed(train_hf, train, PATTERNS["darija"])
    hf_gpt4, t_hf_gpt4 = timed(train_hf, train, PATTERNS["gpt4"])
    rows += [("HF tokenizers, darija pattern", t_hf), ("HF tokenizers, gpt4 pattern", t_hf_gpt4)]
print(f"\ntraining, vocab {vocab_size:,} on {train_bytes / 1e6:.1f} MB     seconds   vs HF (same pattern)")
for i, (name, t) in enumerate(rows):
    ratio = f"{t / rows[2 + i % 2][1]:.2f}x" if hf else "-"
    print(f"  {name:<38} {t:7.2f}   {ratio}")
print("  reference: HF trained in 3.6 s on 2 cores; the course's minbpe: ~6 h")

# --- compression -----------------------------------------------------------------
encoders = {"ours, darija pattern": ours.to_tiktoken(), "ours, gpt4 pattern": ours_gpt4.to_tiktoken()}
encoders |= {name: tiktoken.get_encoding(name) for name in ("gpt2", "cl100k_base", "o200k_base")}
if Path(course_model).exists():
    encoders["course 16k (minbpe)"] = load_minbpe(course_model).to_tiktoken("course")
reference = {"gpt2": 1.81, "cl100k_base": 2.38, "o200k_base": 3.74, "course 16k (minbpe)": 3.22,
             "HF BPE, darija pattern": 5.08, "HF BPE, gpt4 pattern": 4.83}
results = {name: bytes_per_token(sum(map(len, enc.encode_ordinary_batch(held)))) for name, enc in encoders.items()}
if hf:
    for name, tok in (("HF BPE, darija pattern", hf_tok), ("HF BPE, gpt4 pattern", hf_gpt4)):
        results[name] = bytes_per_token(sum(len(e.ids) for e in tok.encode_batch(held, add_special_tokens=False)))
print(f"\nbytes per token on held-out Darija (higher is better)   measured   reference")
for name, value in sorted(results.items(), key=lambda kv: -kv[1]):
    print(f"  {name:<50} {value:8.2f}   {reference.get(name, '')}")

# --- encoding speed --------------------------------------------------------------
fresh = Tokenizer(ours.pattern, ours.merges, ours.special_tokens)  # an empty chunk cache
speeds = {}
_, t = timed(lambda: [fresh.encode_ordinary(d) for d in held])
speeds["ours, pure Python (cold cache)"] = t
_, t = timed(lambda: [fresh.encode_ordinary(d) for d in held])
speeds["ours, pure Python (warm cache)"] = t
# tiktoken one document at a time: encode_ordinary_batch pays a thread-pool round trip per
# document, which costs more than encoding a short comment (batch documents into big strings).
for name, label in (("ours, darija pattern", "ours exported to tiktoken"), ("cl100k_base", "tiktoken's own cl100k_base")):
    _, t = timed(lambda: [encoders[name].encode_ordinary(d) for d in held], repeat=3)
    speeds[f"{label} (1 thread)"] = t
if hf:
    _, t = timed(lambda: hf_tok.encode_batch(held, add_special_tokens=False), repeat=3)
    speeds["HF tokenizers (2 threads)"] = t
print(f"\nencoding the held-out text                               MB/s")
for name, t in speeds.items():
    print(f"  {name:<50} {held_bytes / 1e6 / t:8.2f}")
