"""
prepare.py: the data stage. Raw Darija text in; token ids, a tokenizer and a report out.

    python prepare.py config/darija_small.py           # builds data/darija_small/
    python prepare.py config/darija_small.py --force   # rebuilds it after a change of settings

1. Read `sources`: Hugging Face datasets (through huggingface_hub and its cache: checked, shared, reused offline)
   or local .txt, .jsonl/.json, .csv, .parquet (or .gz) files. Hub unreachable and nothing cached: the sample corpus.
2. Clean, every step switchable and counted. NFKC matters most: it folds the Arabic presentation forms on which
   the course this project reworks (Imad Saddik's, freeCodeCamp 2025) spent 1,532 of its 16,384 tokens.
3. Drop exact duplicates ("Salam!" = "salam"). Documents stream to a work file: 13 bytes per document in memory.
4. Split by document, not by position (the course's mistake), on a seeded hash of its text: stable as sources change.
5. Train the tokenizer (bpe.py) on a random sample of the training documents, or reuse a given one.
6. Encode into train.bin / val.bin with the tokenizer's tiktoken export: the same ids at tiktoken's speed.
All is built in data/NAME.partial/, renamed to data/NAME/ when whole: an interrupted run never looks finished.
One run at a time per dataset (data/NAME.lock); --force replaces data/NAME/ only if this script wrote it.
"""
import array
import csv
import gzip
import hashlib
import itertools
import json
import os
import re
import shlex
import shutil
import sys
import time
import unicodedata
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import regex
from tqdm import tqdm

from bpe import Tokenizer

# --- settings (override with a config file and --key=value) ---
dataset = "darija_small"        # output folder: data/NAME/
sources = [dict(hub="wikimedia/wikipedia", config="20231101.ary", split="train", text_field="text")]
fallback = "data/sample/pretrain"  # used, loudly, when the hub cannot be reached ("" = fail instead)
seed = 1337
# cleaning: every step can be switched off; every step is counted in meta.json
nfkc = True                     # folds presentation forms, full-width letters, ligatures
strip_tatweel = True            # U+0640, a purely visual stretch of the line
strip_invisible = True          # zero-width and bidi controls, stray control characters
strip_diacritics = False        # harakat: rare in Darija, and meaningful when present
drop_urls = True                # URLs, e-mails and @mentions
min_doc_chars = 3               # shorter documents are dropped (after cleaning)
max_doc_chars = 200_000         # longer ones too (dumps, logs, not prose)
dedup = True                    # exact duplicates across all sources
bad_bytes = "error"             # invalid UTF-8: "error", "replace" (U+FFFD) or "skip" (the line)
max_bad_fraction = 0.01         # malformed JSON/CSV records tolerated per file before failing
# split, tokenizer, encoding
val_fraction = 0.02
val_min_bytes = 50_000          # ~10k tokens: a small corpus's val split grows to this (a quarter of it at most)
vocab_size = 8192               # 256 bytes + merges + special tokens
pattern = "darija"              # the pre-tokenizer split pattern (see bpe.py)
tokenizer = ""                  # an existing tokenizer.json to reuse ("" = train one here)
tokenizer_train_bytes = 10_000_000  # size of the random sample of training text it learns from
num_threads = 0                 # encoding threads (0 = all cores)
force = False                   # rebuild data/NAME/ even when it exists (built with other settings)

from configurator import claim, configure, hub_files, hub_read, plain_name, setting_names  # noqa: E402
configure(globals(), also_from=("pretrain.py",))
SETTINGS = {k: globals()[k] for k in setting_names(__file__)}


def fail(msg):  # stop with one clear line (no traceback): what went wrong and what to do
    raise SystemExit(f"prepare.py: {msg}")


def progress(label, total=None, unit="B"):
    """A tqdm bar with the rate, and the ETA when the total is known: redrawn on a terminal, every 10 s in a log."""
    return tqdm(desc=label, total=total, unit=unit, unit_scale=True, file=sys.stdout,
                mininterval=0.5 if sys.stdout.isatty() else 10)


# --- 0. The folders it writes: data/NAME/ only if it is prepare.py's own, and its leftovers ----------
def not_ours(folder, need_meta=True):
    """Why `folder` is not one that prepare.py wrote, or "" when it is: nothing but its four files, and its meta.json
    (which a leftover data/NAME.old may have lost: its clean-up was stopped)."""
    if os.path.islink(folder) or not os.path.isdir(folder):
        return "is not a folder"
    others = sorted(set(os.listdir(folder)) - {"train.bin", "val.bin", "meta.json", "tokenizer.json"})
    if others:
        return f"holds files prepare.py did not write ({', '.join(others[:5])}{', ...' if others[5:] else ''})"
    try:
        with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
            ours = json.load(f).get("format") == "darija-gpt-data"
    except (OSError, ValueError, AttributeError):  # missing, not JSON, or not a JSON object
        ours = False
    return "" if ours or not need_meta else "has no meta.json written by prepare.py"


def up_to_date(out, settings):
    """True when data/NAME was built with these settings; refuse if prepare.py did not build it, or differently."""
    if os.path.lexists(out) and not_ours(out):
        fail(f"{out} {not_ours(out)}: refusing to replace it; choose another --dataset (or delete it yourself)")
    for src in sources:  # even without --force: building data/NAME would replace the source
        if "path" in src and (os.path.realpath(src["path"]) + os.sep).startswith(os.path.realpath(out) + os.sep):
            fail(f"the source {src['path']} is in {out}, the folder this run writes: choose another --dataset")
    if not os.path.exists(out) or force:
        return False
    with open(os.path.join(out, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    built_with = meta.get("settings") if isinstance(meta, dict) and isinstance(meta.get("settings"), dict) else {}
    changed = [f"{k}: {built_with.get(k)!r} -> {v!r}" for k, v in settings.items() if built_with.get(k) != v]
    if changed:  # pretrain.py runs prepare.py with its own arguments: the user sees this there too
        fail(f"{out} was built with other settings ({'; '.join(changed)}): rebuild it with "
             f"`python prepare.py {shlex.join(sys.argv[1:] + ['--force'])}`, or choose another --dataset")
    print(f"{out} is up to date (built with the same settings): nothing to do" + ("; it holds the small sample corpus "
          "(the hub was unreachable): run again with --force when online" if meta.get("fallback_used") else ""))
    return True


# --- 1. Getting text: the hub, local files ---------------------------------------------------
DATA_EXT = (".txt", ".jsonl", ".json", ".csv", ".parquet")
HUB_EXT = DATA_EXT + tuple(ext + ".gz" for ext in DATA_EXT)
SOURCE_KEYS = {"hub", "path", "config", "split", "revision", "text_field", "txt_docs", "max_chars", "name"}


def local_files(path):  # a file, or every data file under a folder (sorted, so the order is reproducible)
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        fail(f"source path not found: {path}")
    # os.walk follows no link to a folder (no endless loop); a file link that loops fails when read, naming it
    found = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs
                   if f.removesuffix(".gz").endswith(DATA_EXT))
    if not found:
        fail(f"no {'/'.join(DATA_EXT)} files (or .gz of them) under {path}")
    return found


def check_source(src):
    """Stop with one line on a source that is not a dict of known keys, each with a value of the right kind."""
    if not isinstance(src, dict) or [k in src for k in ("hub", "path")].count(True) != 1:
        fail(f"each source must be a dict with exactly one of hub= or path=; got {src!r}")
    for key, value in src.items():
        if key not in SOURCE_KEYS:
            fail(f"unknown source key '{key}' in {src!r}; the keys are {', '.join(sorted(SOURCE_KEYS))}")
        if key == "max_chars" and value is not None and (type(value) is not int or value < 1):
            fail(f"max_chars must be a positive whole number (of characters), got {value!r} in {src!r}")
        if key == "txt_docs" and value not in ("line", "block"):  # a document per line, or per block of lines
            fail(f"txt_docs must be 'line' or 'block', got {value!r} in {src!r}")
        if key != "max_chars" and not isinstance(value, str) and not (value is None and key in ("config", "revision")):
            fail(f"{key} must be a string, got {value!r} in {src!r}")


def plan(srcs):  # each source's files: (name, src, [(path in a hub repo or None, local path)])
    planned = []
    for src in srcs:
        if "hub" in src:  # a ConnectionError (out of reach, not cached) goes up to main(): the sample corpus
            try:
                files = hub_files(src, "prepare.py", HUB_EXT)
            except ValueError as e:  # the hub refused, or nothing fits the config and split
                fail(str(e))
            name = src["hub"] + (f"/{src['config']}" if src.get("config") else "")
        else:
            files, name = [(None, p) for p in local_files(src["path"])], src["path"]
        planned.append((src.get("name", name), src, files))
    return planned


def lines_of(path, stats):  # (line number, text) of a file, decoding UTF-8 line by line under the bad_bytes policy
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                if bad_bytes == "error":
                    fail(f"{path}: invalid UTF-8 at byte offset {f.tell() - len(raw) + e.start} (line {line_no}); "
                         "convert the file to UTF-8, or set --bad_bytes=replace (U+FFFD) or --bad_bytes=skip")
                stats["bad_utf8_lines"] += 1
                if bad_bytes == "skip":
                    continue
                line = raw.decode("utf-8", "replace")
            yield line_no, line


def parse_json(line):
    try:
        return json.loads(line)
    except ValueError:
        return None


def read_file(path, src, stats):  # the documents (raw strings) of one file, whatever its format
    field, ext = src.get("text_field", "text"), os.path.splitext(path.removesuffix(".gz"))[1]
    lines = (line for _, line in lines_of(path, stats))  # lazy: opens the file only when read
    if ext == ".txt":  # a document per line, or per block of lines between blank lines
        if src.get("txt_docs", "line") == "line":
            yield from (line for line in lines if line.strip())
        else:
            yield from ("".join(b) for blank, b in itertools.groupby(lines, lambda t: not t.strip()) if not blank)
        return
    if ext == ".parquet":
        import pyarrow.parquet as pq  # imported here: it takes half a second, and only parquet files need it
        table = pq.ParquetFile(gzip.open(path) if path.endswith(".gz") else path)
        if field not in table.schema_arrow.names:
            fail(f"{path}: no column '{field}'; columns: {', '.join(table.schema_arrow.names)} (set text_field)")
        for batch in table.iter_batches(batch_size=2048, columns=[field]):
            yield from (text for text in batch.column(0).to_pylist() if isinstance(text, str))
        return
    # .csv, .json (one JSON array, or JSON lines) and .jsonl: records with a text field
    if ext == ".csv":
        csv.field_size_limit(2**31 - 1)  # the default limit, 128 KB, would stop the whole file at a long document
        records = csv.DictReader(lines)
        if field not in (records.fieldnames or []):
            fail(f"{path}: no column '{field}'; columns: {', '.join(records.fieldnames or [])} (set text_field)")
        numbered = ((records.line_num, record) for record in records)
    elif ext == ".json":
        whole = "".join(lines)
        numbered = (enumerate(parse_json(whole) or [None], 1) if whole.lstrip().startswith("[")
                    else ((n, parse_json(line)) for n, line in enumerate(whole.splitlines(), 1) if line.strip()))
    else:
        numbered = ((n, parse_json(line)) for n, line in lines_of(path, stats) if line.strip())
    total, bad, first_bad = 0, 0, None
    for total, (line_no, record) in enumerate(numbered, 1):
        text = record.get(field) if isinstance(record, dict) else None
        if total == 1 and isinstance(record, dict) and field not in record:
            fail(f"{path}: no field '{field}' in the first record (line {line_no}); fields there: "
                 f"{', '.join(record)} (set text_field in the source)")
        if isinstance(text, str):
            yield text
        elif text is None:  # not JSON, not an object, or the field missing
            bad += 1
            first_bad = first_bad or line_no
    stats["malformed_records"] += bad
    if bad and bad > max_bad_fraction * total:
        fail(f"{path}: {bad} of {total} records are malformed or lack '{field}' (first at line "
             f"{first_bad}); fix the file, or raise --max_bad_fraction (now {max_bad_fraction})")
    if bad:
        print(f"  {path}: skipped {bad} malformed records of {total} (first at line {first_bad})")


def documents(src, remote, path, stats):
    """The documents of one file; a hub file is downloaded only now (max_chars may not need it), again if damaged."""
    if remote is None:
        try:
            yield from read_file(path, src, stats)
        except (OSError, EOFError, ValueError, zlib.error, csv.Error) as e:  # a truncated .gz, a broken parquet, ...
            fail(f"{path}: cannot be read ({e}); replace the file, or leave it out of the sources")
        return
    bad_lines = stats["bad_utf8_lines"]

    def read_again(local):  # a second try reads the file from its first line: so does its count of bad lines
        stats["bad_utf8_lines"] = bad_lines
        return read_file(local, src, stats)
    try:
        yield from hub_read(src, remote, path, read_again, "prepare.py")
    except ValueError as e:  # a refused or broken download, a file damaged on the hub itself
        fail(str(e))


def read_sources(planned, stats):
    """Yield (source index, raw document), downloading hub files only as far as max_chars needs."""
    for src_index, (_, src, files) in enumerate(planned):
        chars, cap = 0, src.get("max_chars") or float("inf")
        for remote, path in files:
            if chars >= cap:
                break
            for doc in documents(src, remote, path, stats[src_index]):
                yield src_index, doc
                chars += len(doc)
                if chars >= cap:
                    break


# --- 2. Cleaning, 3. exact deduplication (the documents stream to a work file) ----------------
INVISIBLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
DIACRITICS = re.compile("[\u064b-\u065f\u0670\u06d6-\u06ed]")
URLS = re.compile(r"(?:https?://|www\.)\S*[^\s.,;:!?)»\"']|[\w.+-]+@[\w-]+\.\w[\w.-]*\w|(?<!\w)@\w+")
SPACES = re.compile(r"[^\S\n]{2,}|[^\S \n]")  # runs of spaces, or one tab/no-break space
BLANK_LINES = re.compile(r"\n{3,}")
LETTER = regex.compile(r"\p{L}")
KEY = re.compile(r"[\W_]+")


def clean(text, report):  # the cleaned document, or None when it is dropped; each change is counted in report
    steps = (("newlines", True, lambda t: t.replace("\r\n", "\n").replace("\r", "\n")),
             ("nfkc", nfkc, lambda t: t if unicodedata.is_normalized("NFKC", t) else unicodedata.normalize("NFKC", t)),
             ("invisible", strip_invisible, lambda t: INVISIBLE.sub("", t)),
             ("tatweel", strip_tatweel, lambda t: t.replace("\u0640", "")),
             ("diacritics", strip_diacritics, lambda t: DIACRITICS.sub("", t)),
             ("urls", drop_urls, lambda t: URLS.sub("", t) if "@" in t or "://" in t or "www." in t else t),
             ("whitespace", True, lambda t: BLANK_LINES.sub("\n\n", SPACES.sub(" ", t).replace(" \n", "\n")
                                                             .replace("\n ", "\n")).strip()))
    for name, on, fn in steps:
        new = fn(text) if on else text
        if new != text:
            report[name + "_docs"] += 1
            report[name + "_chars"] += len(text) - len(new)
            text = new
    why = ("no_letters" if not LETTER.search(text) else "too_short" if len(text) < min_doc_chars
           else "too_long" if len(text) > max_doc_chars else None)
    if why:
        report["dropped_" + why] += 1
        return None
    return text


def collect(planned, work):  # read, clean and write every document to work/docs.txt; return per-document arrays
    stats, report = [Counter() for _ in planned], Counter()
    lengths, hashes, doc_source = array.array("I"), array.array("Q"), array.array("B")  # compact: 13 B/doc
    with open(os.path.join(work, "docs.txt"), "wb") as out, progress("reading and cleaning", unit=" chars") as bar:
        for src_index, raw in read_sources(planned, stats):
            stats[src_index]["docs_read"] += 1
            bar.update(len(raw))
            doc = clean(raw, report)
            if doc is None:
                continue
            data = doc.encode("utf-8")
            out.write(data)
            lengths.append(len(data))
            doc_source.append(src_index)
            key = KEY.sub("", doc.casefold()).encode("utf-8")
            hashes.append(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little"))
    lengths, hashes, doc_source = map(np.asarray, (lengths, hashes, doc_source))  # numpy views, not copies
    keep = np.full(len(hashes), not dedup)
    if dedup:  # keep the first occurrence of each hash (np.unique takes ~45 bytes per document of scratch memory)
        keep[np.unique(hashes, return_index=True)[1]] = True
        report["dropped_duplicate"] = int((~keep).sum())
    if keep.sum() < 2:  # one for train, one for val
        read = sum(s["docs_read"] for s in stats)
        fail(f"{'only one document' if keep.any() else 'no documents'} left after cleaning (read {read}; "
             f"{dict((k, v) for k, v in report.items() if k.startswith('dropped') and v)}); "
             "need 2 (one for val): check the sources, text_field and min_doc_chars")
    return lengths, hashes, keep, stats, report, doc_source


# --- 4. Split by document, 5. the tokenizer, 6. encoding ----------------------------------------
def in_random_fraction(hashes, salt, fraction):
    """True for a seeded random `fraction` of the documents, by hash: splitmix64 of (hash ^ seed), 8 B/doc scratch."""
    return random_keys(hashes, salt) < np.uint64(min(fraction, 1.0) * float(2**64 - 2**11))


def random_keys(hashes, salt):  # a seeded random order of the documents
    mixed = hashes ^ np.uint64((seed * 0x9E3779B97F4A7C15 + salt) % 2**64)
    for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        mixed ^= mixed >> np.uint64(shift)
        mixed *= np.uint64(mult)  # wraps around modulo 2**64, as intended
    return mixed ^ (mixed >> np.uint64(31))


def val_split(lengths, hashes, keep):
    """val_fraction of the kept documents at random (by hash); on a small corpus, the next ones in the same random
    order too, until val holds val_min_bytes (a quarter of the documents and of the text at most); one at least."""
    kept, val = np.flatnonzero(keep), np.zeros_like(keep)
    order = kept[np.argsort(random_keys(hashes[kept], 0))]  # in_random_fraction picks a prefix of this order
    text = np.cumsum(lengths[order])
    grown = min(int(np.searchsorted(text, val_min_bytes)) + 1,  # the documents that reach val_min_bytes
                int(np.searchsorted(text, text[-1] // 4, side="right")), len(kept) // 4)
    count = max(1, int(in_random_fraction(hashes[kept], 0, val_fraction).sum()), grown)
    val[order[:min(count, len(kept) - 1)]] = True  # and one training document at least
    return val


def docs_from(work, lengths, wanted, batch_bytes=1 << 22):
    """Yield (indices, texts) of the wanted documents, reading docs.txt in batches of ~4 MB."""
    with open(os.path.join(work, "docs.txt"), "rb") as f:
        start = 0
        while start < len(lengths):
            ends = np.cumsum(lengths[start:start + 65536], dtype=np.int64)  # a window: no per-corpus array
            stop = start + max(1, int(np.searchsorted(ends, batch_bytes, side="right")))
            data, ends = f.read(int(ends[stop - start - 1])), ends[:stop - start].tolist()
            texts = [data[a:b].decode("utf-8") for a, b, w in zip([0] + ends[:-1], ends, wanted[start:stop]) if w]
            yield start + np.flatnonzero(wanted[start:stop]), texts
            start = stop


def get_tokenizer(work, lengths, hashes, train):  # trained on a random sample of the training documents, or loaded
    if tokenizer:
        try:
            tok = Tokenizer.load(tokenizer)
        except ValueError as e:  # missing, truncated, not a tokenizer: bpe.py's message names the file
            fail(f"{e}; give --tokenizer= a tokenizer.json written by prepare.py or bpe.py")
    else:
        sample = train & in_random_fraction(hashes, 1, tokenizer_train_bytes / max(1, int(lengths[train].sum())))
        texts = [text for _, batch in docs_from(work, lengths, sample) for text in batch]
        print(f"training the tokenizer (vocab {vocab_size:,}) on a sample of {len(texts):,} training "
              f"documents ({int(lengths[sample].sum()) / 1e6:.1f} MB)", flush=True)
        try:
            tok = Tokenizer.train(texts, vocab_size, pattern=pattern, verbose=True)
        except ValueError as e:  # too little text for vocab_size (bpe.py says how small it must be), a bad pattern
            print(file=sys.stderr)  # ends bpe.py's progress line
            fail(f"cannot train the tokenizer (vocab_size={vocab_size}): {e}")
    if "<|endoftext|>" not in tok.special_tokens:
        fail(f"the tokenizer {tokenizer or ''} has no <|endoftext|> special token")
    tok.save(os.path.join(work, "tokenizer.json"))
    return tok


def encode(work, lengths, keep, val, tok):
    """Stream every kept document into train.bin or val.bin, encoding batches on all threads."""
    enc, eot = tok.to_tiktoken(), tok.eot_id
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.uint32

    def encode_batch(batch):  # token ids of a batch of documents, <|endoftext|> first, as (train array, val array)
        indices, texts = batch
        ids = ([], [])
        for text, to_val in zip(texts, val[indices].tolist()):
            ids[to_val].append(eot)
            ids[to_val].extend(enc.encode_ordinary(text))  # tiktoken's Rust core; it releases the GIL
        return np.array(ids[0], dtype), np.array(ids[1], dtype)

    counts = {split: dict(docs=int(mask.sum()), tokens=0, bytes=int(lengths[mask].sum()))
              for split, mask in (("train", keep & ~val), ("val", keep & val))}
    threads = num_threads or os.cpu_count()
    # ~1 MB batches per thread task: tiktoken's encode_ordinary_batch makes a task per document, 4x slower on these
    batches = docs_from(work, lengths, keep, batch_bytes=1 << 20)
    with open(os.path.join(work, "train.bin"), "wb") as ftrain, open(os.path.join(work, "val.bin"), "wb") as fval, \
            ThreadPoolExecutor(threads) as pool, progress("encoding", sum(c["bytes"] for c in counts.values())) as bar:
        while group := list(itertools.islice(batches, 2 * threads)):
            for train_ids, val_ids in pool.map(encode_batch, group):
                train_ids.tofile(ftrain)
                val_ids.tofile(fval)
                counts["train"]["tokens"] += len(train_ids)
                counts["val"]["tokens"] += len(val_ids)
            bar.update(sum(int(lengths[indices].sum()) for indices, _ in group))
    return counts, np.dtype(dtype).name


def main():
    if bad_bytes not in ("error", "replace", "skip") or not 0 < val_fraction < 1:
        fail(f"bad_bytes must be 'error', 'replace' or 'skip' (got {bad_bytes!r}) and val_fraction "
             f"between 0 and 1 (got {val_fraction})")
    plain_name("dataset", dataset)  # data/NAME must not reach elsewhere (--dataset=../../x)
    for src in sources:
        check_source(src)
    out, work = os.path.join("data", dataset), os.path.join("data", dataset + ".partial")
    claim(out)  # one run at a time: a second one would write into this one's work folder
    settings = json.loads(json.dumps({k: v for k, v in SETTINGS.items() if k not in ("force", "num_threads")}))
    if up_to_date(out, settings):
        return
    old = out + ".old"  # a --force run's, whose clean-up was stopped: checked now, not after the whole rebuild
    if os.path.lexists(old):
        if not_ours(old, need_meta=False):
            fail(f"{old} {not_ours(old, need_meta=False)}: refusing to delete it; move it elsewhere")
        print(f"prepare.py: removing {old}, left by an interrupted run", flush=True)
        shutil.rmtree(old)
    shutil.rmtree(work, ignore_errors=True)  # an interrupted run's (none is at work now: we hold the lock)
    os.makedirs(work)
    started, fallback_used = time.time(), False
    try:
        try:
            planned = plan(sources)
        except ConnectionError as e:  # the hub is out of reach and the dataset is not in the cache
            if not fallback:
                fail(str(e))
            print(f"prepare.py: {e}. Using the sample corpus in {fallback} instead "
                  "(a small demo, not a real training set)", flush=True)
            path = os.path.join(os.path.dirname(os.path.abspath(__file__)), fallback)  # beside this file
            planned, fallback_used = plan([dict(path=path, txt_docs="block", name=fallback)]), True
        lengths, hashes, keep, stats, report, doc_source = collect(planned, work)
        seconds = {"read": time.time() - started}  # listing, downloading, reading, cleaning and dedup
        val = val_split(lengths, hashes, keep)
        for src_index, s in enumerate(stats):  # val.bin holds them in source order (eval.py's bpb per source)
            s["docs_kept"] = int((keep & (doc_source == src_index)).sum())
            s["val_docs"] = int((keep & val & (doc_source == src_index)).sum())
        started = time.time()
        tok = get_tokenizer(work, lengths, hashes, keep & ~val)
        seconds["tokenizer"], started = time.time() - started, time.time()
        counts, dtype = encode(work, lengths, keep, val, tok)
        seconds["encode"] = time.time() - started
        os.remove(os.path.join(work, "docs.txt"))
        with open(os.path.join(work, "tokenizer.json"), "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        meta = dict(format="darija-gpt-data", version=1, vocab_size=tok.vocab_size, dtype=dtype,
                    eot_id=tok.eot_id, tokenizer=os.path.join(out, "tokenizer.json"), tokenizer_sha256=sha,
                    **counts, sources=[dict(name=name, spec=spec, files=[remote or path for remote, path in files],
                                            **stats[i]) for i, (name, spec, files) in enumerate(planned)],
                    fallback_used=fallback_used, cleaning=dict(sorted(report.items())), settings=settings,
                    seconds={k: round(v, 2) for k, v in seconds.items()})
        with open(os.path.join(work, "meta.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, ensure_ascii=False, indent=1)
        if os.path.exists(out):  # --force: the old folder goes only now that the new one is whole
            os.replace(out, out + ".old")
        os.replace(work, out)
        shutil.rmtree(out + ".old", ignore_errors=True)
    except KeyboardInterrupt:
        raise SystemExit(f"prepare.py: interrupted; {out} was not written") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for source in meta["sources"]:
        print(f"{source['name']}: {source['docs_read']:,} documents read, {source['docs_kept']:,} kept")
    print("dropped: " + (", ".join(f"{k[8:]} {v:,}" for k, v in meta["cleaning"].items()
                                   if k.startswith("dropped_") and v) or "nothing"))
    for split, count in counts.items():
        print(f"{split}: {count['docs']:,} documents, {count['tokens']:,} tokens, "
              f"{count['bytes'] / 1e6:.2f} MB ({count['bytes'] / count['tokens']:.2f} bytes/token)")
    print(f"seconds per step: {meta['seconds']}\nwrote {out}/ (train.bin, val.bin, tokenizer.json, meta.json)")


if __name__ == "__main__":
    main()
