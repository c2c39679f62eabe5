"""
prepare.py: the data stage. Raw Darija text in; token ids, a tokenizer and a report out.

    python prepare.py config/darija_small.py           # builds data/darija_small/
    python prepare.py config/darija_small.py --force   # rebuilds it after a change of settings

What happens, in the order the code below runs, and why:
1. Get text from `sources`: dicts with hub="owner/name" (a Hugging Face dataset, found through the
   hub's listing API and fetched over plain HTTPS: no extra package; HF_TOKEN and HF_ENDPOINT are
   honoured), url="https://..." or path="file/or/folder". Downloads are cached in data/_downloads/
   through a .part file renamed only when complete (a cut connection resumes; a truncated file never
   looks whole). Readers stream .txt, .jsonl/.json, .csv, .parquet and .gz of each. When the hub
   cannot be reached, one line says so and the sample corpus in data/sample/pretrain is used.
2. Clean each document, every step switchable and counted: NFKC (folds Arabic presentation forms:
   the course's tokenizer spent 1,532 of its 16,384 tokens on them), tatweel, zero-width and bidi
   controls, CRLF and whitespace, optional diacritics, URLs/e-mails/@mentions, documents without a
   letter, minimum and maximum length.
3. Deduplicate exactly across sources on a hash of the case-folded letters and digits ("Salam!" =
   "salam"). Documents stream to a work file; 13 bytes per document stay in memory.
4. Split by document, never by position (the course's mistake): a document goes to val when a
   seeded hash of its text falls below val_fraction, so it keeps its side when sources change.
5. Tokenizer: bpe.py trains on a random sample of the training documents (not a prefix), or an
   existing tokenizer file is reused.
6. Encode with the tokenizer's tiktoken export (same ids, tiktoken's speed, all cores) into
   train.bin / val.bin, each document preceded by <|endoftext|>, uint16 when the vocabulary fits.
   All is built in data/NAME.partial/ and renamed to data/NAME/ when complete: a crash or Ctrl-C
   never leaves data that pretrain.py would take as finished.
"""
import array
import csv
import difflib
import gzip
import hashlib
import itertools
import json
import os
import re
import shutil
import sys
import time
import unicodedata
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPException

import numpy as np
import regex

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
vocab_size = 8192               # 256 bytes + merges + special tokens
pattern = "darija"              # the pre-tokenizer split pattern (see bpe.py)
tokenizer = ""                  # an existing tokenizer.json to reuse ("" = train one here)
tokenizer_train_bytes = 10_000_000  # size of the random sample of training text it learns from
num_threads = 0                 # encoding threads (0 = all cores)
force = False                   # rebuild data/NAME/ even when it exists (built with other settings)

from configurator import configure, setting_names  # noqa: E402
configure(globals(), also_from=("pretrain.py",))
SETTINGS = {k: globals()[k] for k in setting_names(__file__)}
ROOT = os.path.dirname(os.path.abspath(__file__))
TTY = sys.stdout.isatty()


def fail(msg):
    """Stop with one clear line (no traceback): what went wrong and what to do."""
    raise SystemExit(f"prepare.py: {msg}")


def show(label, done, total, t0, unit="MB", scale=1e6, last=[0.0], final=False):
    """Progress with rate and ETA: a redrawn line on a terminal, a line every 10 s in a log."""
    now = time.time()
    if not final and now - last[0] < (0.5 if TTY else 10):
        return
    last[0] = now
    rate = done / max(now - t0, 1e-9)
    of = f"/{total / scale:,.1f}" if total else ""
    eta = f", ETA {(total - done) / rate:.0f}s" if total and rate and not final else ""
    print(f"  {label}: {done / scale:,.1f}{of} {unit} ({rate / scale:,.2f} {unit}/s{eta})   ",
          end="\n" if final or not TTY else "\r", flush=True)


# ----------------------------------------------------------------------------------------------
# 1. Getting text: the hub, URLs, local files

class Unreachable(Exception):
    """The network or the server is not there: the caller may fall back to the sample corpus."""


HUB = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
CACHE = os.path.join("data", "_downloads")
DATA_EXT = (".txt", ".jsonl", ".json", ".csv", ".parquet")


def http_open(url, headers=None):
    """GET with short timeouts; a missing server is Unreachable, an HTTP refusal a clear error."""
    req = urllib.request.Request(url, headers={"User-Agent": "darija-gpt-prepare", **(headers or {})})
    if url.startswith(HUB) and os.environ.get("HF_TOKEN"):  # not forwarded to the CDN a file redirects to
        req.add_unredirected_header("Authorization", f"Bearer {os.environ['HF_TOKEN']}")
    try:
        return urllib.request.urlopen(req, timeout=10)
    except urllib.error.HTTPError as e:
        repo = re.match(rf"{re.escape(HUB)}/(?:api/)?datasets/([^/]+/[^/]+)", url)
        if e.code in (401, 403) and repo:
            why = ("no valid token was sent (HF_TOKEN is not set or is wrong)" if e.code == 401
                   else "your token has not been granted access")
            fail(f"{repo[1]} is a gated dataset and {why} (HTTP {e.code}). Open "
                 f"{HUB}/datasets/{repo[1]} , log in and accept its terms, create a read token at "
                 f"{HUB}/settings/tokens , then `export HF_TOKEN=hf_...` and run again.")
        fail(f"HTTP {e.code} {e.reason} for {url}" + (" (check the name, config and split)" if e.code == 404 else ""))
    except (urllib.error.URLError, OSError, HTTPException) as e:
        raise Unreachable(f"{url.split('/')[2]}: {getattr(e, 'reason', e)}") from None


def fetch(url, dest):
    """Download url to dest once: through dest.part, resumed with a Range request if cut off."""
    if os.path.exists(dest):
        return dest
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    part, label = dest + ".part", os.path.basename(dest)
    for _ in range(3):
        have = os.path.getsize(part) if os.path.exists(part) else 0
        with http_open(url, {"Range": f"bytes={have}-"} if have else None) as r:
            have = have if r.status == 206 else 0  # 200: the server sent the whole file, start over
            size = int(r.headers.get("Content-Length") or 0)  # 0: unknown
            total, t0, done = have + size if size else 0, time.time(), have
            try:
                with open(part, "ab" if have else "wb") as f:
                    while chunk := r.read(1 << 20):
                        done += f.write(chunk)
                        show(label, done, total, t0)
                complete = not total or done == total
            except (OSError, HTTPException):
                complete = False
        if complete:
            show(label, done, total, t0, final=True)
            os.replace(part, dest)
            return dest
        print(f"  download cut off at {done / 1e6:.2f} MB; resuming", flush=True)
    fail(f"downloading {url} failed 3 times; run again to resume from the {part} kept so far")


def hub_files(src):
    """Data files of a hub dataset for one config (a folder of the repo) and split, in order."""
    repo, rev = src["hub"], src.get("revision", "main")
    listing = os.path.join(CACHE, "hub", repo, rev, "_listing.json")
    url = f"{HUB}/api/datasets/{repo}/tree/{rev}" + (f"/{src['config']}" if src.get("config") else "") + "?recursive=true"
    try:
        entries = []
        while url:  # the listing comes in pages linked by a `Link: <...>; rel="next"` header
            with http_open(url) as r:
                entries += json.load(r)
                url = (re.findall(r'<([^>]+)>;\s*rel="next"', r.headers.get("Link", "")) or [None])[0]
        os.makedirs(os.path.dirname(listing), exist_ok=True)
        with open(listing + ".tmp", "w") as f:
            json.dump(entries, f)
        os.replace(listing + ".tmp", listing)
    except Unreachable:
        if not os.path.exists(listing):
            raise
        with open(listing) as f:  # offline, but this dataset was listed (and maybe fetched) before
            entries = json.load(f)
    split = src.get("split", "train")
    paths = sorted(e["path"] for e in entries if e.get("type") == "file"
                   and e["path"].removesuffix(".gz").endswith(DATA_EXT)
                   and re.search(rf"(^|[/_.-]){re.escape(split)}([/_.-]|$)", e["path"]))
    if not paths:
        found = ", ".join(sorted(e["path"] for e in entries)[:8]) or "nothing"
        fail(f"no data files for split '{split}' in {repo} (config {src.get('config')!r}); found: {found}")
    return [(f"{HUB}/datasets/{repo}/resolve/{rev}/{p}", os.path.join(CACHE, "hub", repo, rev, p)) for p in paths]


def local_files(path):
    """A file, or every data file under a folder (sorted, so the order is reproducible)."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        fail(f"source path not found: {path}")
    found = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs
                   if f.removesuffix(".gz").endswith(DATA_EXT))
    if not found:
        fail(f"no {'/'.join(DATA_EXT)} files (or .gz of them) under {path}")
    return found


def lines_of(path, stats):
    """(line number, text) of a file, decoding UTF-8 line by line under the bad_bytes policy."""
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                if bad_bytes == "error":
                    fail(f"{path}: invalid UTF-8 at byte offset {f.tell() - len(raw) + e.start} (line {n}); convert "
                         "the file to UTF-8, or set --bad_bytes=replace (U+FFFD) or --bad_bytes=skip")
                stats["bad_utf8_lines"] += 1
                if bad_bytes == "skip":
                    continue
                line = raw.decode("utf-8", "replace")
            yield n, line


def read_file(path, src, stats):
    """Yield the documents (raw strings) of one file, whatever its format."""
    field, ext = src.get("text_field", "text"), os.path.splitext(path.removesuffix(".gz"))[1]
    lines = (line for _, line in lines_of(path, stats))  # lazy: opens the file only when read
    if ext == ".txt":  # a document per line, or per block of lines between blank lines
        if src.get("txt_docs", "line") == "line":
            yield from (line for line in lines if line.strip())
        else:
            yield from ("".join(b) for blank, b in itertools.groupby(lines, lambda t: not t.strip()) if not blank)
        return
    if ext == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            fail(f"reading {path} needs pyarrow: pip install pyarrow")
        pf = pq.ParquetFile(gzip.open(path) if path.endswith(".gz") else path)
        if field not in pf.schema_arrow.names:
            fail(f"{path}: no column '{field}'; columns: {', '.join(pf.schema_arrow.names)} (set text_field)")
        for batch in pf.iter_batches(batch_size=2048, columns=[field]):
            yield from (t for t in batch.column(0).to_pylist() if isinstance(t, str))
        return
    # .jsonl / .json (JSON lines, or one JSON array) and .csv: records with a text field
    if ext == ".csv":
        records = csv.DictReader(lines)
        if field not in (records.fieldnames or []):
            fail(f"{path}: no column '{field}'; columns: {', '.join(records.fieldnames or [])} (set text_field)")
        numbered = ((records.line_num, r) for r in records)
    elif ext == ".json":  # one JSON array of records, or JSON lines under a .json name
        whole = "".join(lines)
        numbered = (enumerate(parse_json(whole) or [None], 1) if whole.lstrip().startswith("[")
                    else ((n, parse_json(line)) for n, line in enumerate(whole.splitlines(), 1) if line.strip()))
    else:
        numbered = ((n, parse_json(line)) for n, line in lines_of(path, stats) if line.strip())
    total, bad, first_bad = 0, 0, None
    for total, (n, rec) in enumerate(numbered, 1):
        text = rec.get(field) if isinstance(rec, dict) else None
        if total == 1 and isinstance(rec, dict) and field not in rec:
            fail(f"{path}: no field '{field}' in the first record (line {n}); fields there: "
                 f"{', '.join(rec)} (set text_field in the source)")
        if isinstance(text, str):
            yield text
        elif text is None:  # not JSON, not an object, or the field missing
            bad += 1
            first_bad = first_bad or n
    stats["malformed_records"] += bad
    if bad and bad > max_bad_fraction * total:
        fail(f"{path}: {bad} of {total} records are malformed or lack '{field}' (first at line "
             f"{first_bad}); fix the file, or raise --max_bad_fraction (now {max_bad_fraction})")
    if bad:
        print(f"  {path}: skipped {bad} malformed records of {total} (first at line {first_bad})")


def parse_json(line):
    try:
        return json.loads(line)
    except ValueError:
        return None


SOURCE_KEYS = {"hub", "url", "path", "config", "split", "revision", "text_field", "txt_docs", "max_chars", "name"}


def plan(srcs):
    """Check each source dict and list its files: (name, src, [(url or None, local path)])."""
    out = []
    for src in srcs:
        if not isinstance(src, dict) or [k in src for k in ("hub", "url", "path")].count(True) != 1:
            fail(f"each source must be a dict with exactly one of hub=, url= or path=; got {src!r}")
        for k in set(src) - SOURCE_KEYS:
            close = difflib.get_close_matches(k, SOURCE_KEYS, n=1)
            fail(f"unknown source key '{k}' in {src!r}" + (f"; did you mean '{close[0]}'?" if close else ""))
        if "hub" in src:
            files, name = hub_files(src), src["hub"] + (f"/{src['config']}" if src.get("config") else "")
        elif "url" in src:
            base = re.sub(r"[^\w.-]", "_", src["url"].split("?")[0].rstrip("/").split("/")[-1])
            dest = os.path.join(CACHE, "url", hashlib.sha1(src["url"].encode()).hexdigest()[:10] + "-" + base)
            files, name = [(None, fetch(src["url"], dest))], src["url"]
        else:
            files, name = [(None, p) for p in local_files(src["path"])], src["path"]
        out.append((src.get("name", name), src, files))
    return out


def read_sources(planned, stats):
    """Yield (source index, raw document), downloading hub files only as far as max_chars needs."""
    for i, (_, src, files) in enumerate(planned):
        chars, cap = 0, src.get("max_chars") or float("inf")
        for url, path in files:
            if chars >= cap:
                break
            try:
                if url:
                    fetch(url, path)
            except Unreachable as e:
                fail(f"lost the connection while downloading {url} ({e}); run again to resume")
            for doc in read_file(path, src, stats[i]):
                yield i, doc
                chars += len(doc)
                if chars >= cap:
                    break


# ----------------------------------------------------------------------------------------------
# 2. Cleaning, 3. exact deduplication (the documents stream to a work file)

INVISIBLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
DIACRITICS = re.compile("[\u064b-\u065f\u0670\u06d6-\u06ed]")
URLS = re.compile(r"(?:https?://|www\.)\S*[^\s.,;:!?)»\"']|[\w.+-]+@[\w-]+\.\w[\w.-]*\w|(?<!\w)@\w+")
SPACES = re.compile(r"[^\S\n]{2,}|[^\S \n]")  # runs of spaces, or one tab/no-break space
BLANK_LINES = re.compile(r"\n{3,}")
LETTER = regex.compile(r"\p{L}")
# letters by script, for the report (plain `re` with explicit ranges: 3x faster than \p{Script})
SCRIPTS = {"arabic": re.compile("[\u0620-\u064a\u066e-\u06d3\u06d5\u06ee-\u06ff\u0750-\u077f\u08a0-\u08ff]+"),
           "latin": re.compile("[A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff]+"),
           "all": re.compile(r"[^\W\d_]+")}
KEY = re.compile(r"[\W_]+")


def clean(text, report):
    """The cleaned document, or None when it is dropped; each change is counted in report."""
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


def collect(planned, work):
    """Read, clean and write every document to work/docs.txt; return per-document arrays."""
    stats, report, secs = [Counter() for _ in planned], Counter(), Counter()
    lengths, hashes, source = array.array("I"), array.array("Q"), array.array("B")  # compact: 13 B/doc
    t0, read, clock = time.time(), 0, time.perf_counter
    with open(os.path.join(work, "docs.txt"), "wb") as out:
        for i, raw in read_sources(planned, stats):
            stats[i]["docs_read"] += 1
            read += len(raw)
            show("reading and cleaning", read, 0, t0, unit="M chars")
            t = clock()
            doc = clean(raw, report)
            if doc is None:
                continue
            data = doc.encode("utf-8")
            out.write(data)
            lengths.append(len(data))
            source.append(i)
            for script, pat in SCRIPTS.items():
                stats[i][script + "_letters"] += sum(map(len, pat.findall(doc)))
            secs["clean"] += clock() - t
            t = clock()
            key = KEY.sub("", doc.casefold()).encode("utf-8")
            hashes.append(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little"))
            secs["dedup"] += clock() - t
    show("reading and cleaning", read, 0, t0, unit="M chars", final=True)
    lengths, hashes, source = (np.frombuffer(a, t) for a, t in ((lengths, np.uint32), (hashes, np.uint64), (source, np.uint8)))
    t, keep = clock(), np.full(len(hashes), not dedup)
    if dedup:  # keep the first occurrence of each hash; in 16 parts by the hash's top bits, because
        # np.unique needs ~45 bytes per element of scratch memory
        part = np.concatenate([(hashes[i:i + (1 << 20)] >> np.uint64(60)).astype(np.uint8)
                               for i in range(0, len(hashes), 1 << 20)] or [np.zeros(0, np.uint8)])
        for b in range(16):
            idx = np.flatnonzero(part == b)
            keep[idx[np.unique(hashes[idx], return_index=True)[1]]] = True
        report["dropped_duplicate"] = int((~keep).sum())
    secs["dedup"] += clock() - t
    secs["read"] = time.time() - t0 - sum(secs.values())
    if not keep.any():
        fail(f"no documents left after cleaning (read {sum(s['docs_read'] for s in stats)}; "
             f"{dict((k, v) for k, v in report.items() if k.startswith('dropped') and v)}); "
             "check the sources, text_field and min_doc_chars")
    for i, s in enumerate(stats):
        s["docs_kept"] = int((keep & (source == i)).sum())
    return lengths, hashes, keep, stats, report, secs


# ----------------------------------------------------------------------------------------------
# 4. Split by document, 5. the tokenizer, 6. encoding

def below(hashes, salt, fraction):
    """True for a seeded random `fraction` of the documents, decided by each one's hash: the
    splitmix64 finaliser of (hash ^ seed), in place, so 8 bytes per document of scratch."""
    x = hashes ^ np.uint64((seed * 0x9E3779B97F4A7C15 + salt) % 2**64)
    for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        x ^= x >> np.uint64(shift)
        x *= np.uint64(mult)  # wraps around modulo 2**64, as intended
    x ^= x >> np.uint64(31)
    return x < np.uint64(min(fraction, 1.0) * float(2**64 - 2**11))


def docs_from(work, lengths, wanted, batch_bytes=1 << 22):
    """Yield (indices, texts) of the wanted documents, reading docs.txt in batches of ~4 MB."""
    with open(os.path.join(work, "docs.txt"), "rb") as f:
        i = 0
        while i < len(lengths):
            ends = np.cumsum(lengths[i:i + 65536], dtype=np.int64)  # a window: no per-corpus array
            j = i + max(1, int(np.searchsorted(ends, batch_bytes, side="right")))
            data, ends = f.read(int(ends[j - i - 1])), ends[:j - i].tolist()
            yield (i + np.flatnonzero(wanted[i:j]), [data[a:b].decode("utf-8") for a, b, w in
                                                     zip([0] + ends[:-1], ends, wanted[i:j]) if w])
            i = j


def get_tokenizer(work, lengths, hashes, train):
    """Train on a random sample of the training documents, or load the given tokenizer file."""
    if tokenizer:
        if not os.path.isfile(tokenizer):
            fail(f"tokenizer file not found: {tokenizer}")
        tok = Tokenizer.load(tokenizer)
    else:
        pick = train & below(hashes, 1, tokenizer_train_bytes / max(1, int(lengths[train].sum())))
        texts = [t for _, batch in docs_from(work, lengths, pick) for t in batch]
        print(f"training the tokenizer (vocab {vocab_size:,}) on a sample of {len(texts):,} training "
              f"documents ({int(lengths[pick].sum()) / 1e6:.1f} MB)", flush=True)
        tok = Tokenizer.train(texts, vocab_size, pattern=pattern, verbose=True)
    if "<|endoftext|>" not in tok.special_tokens:
        fail(f"the tokenizer {tokenizer or ''} has no <|endoftext|> special token")
    tok.save(os.path.join(work, "tokenizer.json"))
    return tok


def encode_batch(enc, eot, dtype, texts, to_val):
    """Token ids of a batch of documents, <|endoftext|> first, as (train array, val array)."""
    ids = ([], [])
    for text, v in zip(texts, to_val):
        ids[v].append(eot)
        ids[v].extend(enc.encode_ordinary(text))  # tiktoken's Rust core; it releases the GIL
    return np.array(ids[0], dtype), np.array(ids[1], dtype)


def encode(work, lengths, keep, val, tok):
    """Stream every kept document into train.bin or val.bin, encoding batches on all threads."""
    enc, eot = tok.to_tiktoken(), tok.eot_id
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.uint32
    counts = {s: dict(docs=int(m.sum()), tokens=0, bytes=int(lengths[m].sum()))
              for s, m in (("train", keep & ~val), ("val", keep & val))}
    threads = num_threads or os.cpu_count()
    t0, done, total = time.time(), 0, counts["train"]["bytes"] + counts["val"]["bytes"]
    batches = docs_from(work, lengths, keep, batch_bytes=1 << 20)
    # our own batches of ~1 MB per thread task: tiktoken's encode_ordinary_batch makes one task per
    # document, which is 4x slower on short documents like these
    with open(os.path.join(work, "train.bin"), "wb") as ftrain, open(os.path.join(work, "val.bin"), "wb") as fval, \
            ThreadPoolExecutor(threads) as pool:
        while group := list(itertools.islice(batches, 2 * threads)):
            jobs = [(enc, eot, dtype, texts, val[idx].tolist()) for idx, texts in group]
            for train_ids, val_ids in pool.map(encode_batch, *zip(*jobs)):
                train_ids.tofile(ftrain)
                val_ids.tofile(fval)
                counts["train"]["tokens"] += len(train_ids)
                counts["val"]["tokens"] += len(val_ids)
            done += sum(int(lengths[idx].sum()) for idx, _ in group)
            show("encoding", done, total, t0)
    show("encoding", done, total, t0, final=True)
    return counts, np.dtype(dtype).name


def up_to_date(out, settings):
    """True when data/NAME was built with these settings; refuse (without --force) if not."""
    if not os.path.exists(out) or force:
        return False
    try:
        with open(os.path.join(out, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
        changed = [f"{k}: {meta['settings'].get(k)!r} -> {v!r}" for k, v in settings.items()
                   if meta["settings"].get(k) != v]
    except (OSError, ValueError, KeyError):
        changed = ["no readable meta.json"]
    if changed:
        fail(f"{out} exists and was built differently ({'; '.join(changed)}); run again with "
             "--force to rebuild it, or choose another --dataset")
    print(f"{out} is up to date (built with the same settings): nothing to do" + (
        "; it holds the small sample corpus (the hub was unreachable): run again with --force "
        "when online" if meta.get("fallback_used") else ""))
    return True


def main():
    if bad_bytes not in ("error", "replace", "skip") or not 0 < val_fraction < 1:
        fail(f"bad_bytes must be 'error', 'replace' or 'skip' (got {bad_bytes!r}) and val_fraction "
             f"between 0 and 1 (got {val_fraction})")
    out, work = os.path.join("data", dataset), os.path.join("data", dataset + ".partial")
    settings = json.loads(json.dumps({k: v for k, v in SETTINGS.items() if k not in ("force", "num_threads")}))
    if up_to_date(out, settings):
        return
    shutil.rmtree(work, ignore_errors=True)  # the leftover of an interrupted run
    os.makedirs(work)
    t, fallback_used = time.time(), False
    try:
        try:
            planned = plan(sources)
        except Unreachable as e:
            if not fallback:
                fail(f"cannot reach {e}; connect to the internet, or use local sources")
            print(f"prepare.py: cannot reach {e}: using the sample corpus in {fallback} instead "
                  "(a small demo, not a real training set)", flush=True)
            path = os.path.join(ROOT, fallback)  # shipped with the code, wherever we run from
            planned, fallback_used = plan([dict(path=path, txt_docs="block", name=fallback)]), True
        seconds = {"list": time.time() - t}
        lengths, hashes, keep, stats, report, secs = collect(planned, work)
        seconds.update(secs)  # read (and download), clean (and count scripts), dedup
        val = below(hashes, 0, val_fraction)
        if keep.sum() < 2:
            fail("only one document is left after cleaning; need at least 2 (one for val)")
        if not (keep & val).any() or not (keep & ~val).any():  # a tiny corpus: one val document
            val = np.zeros_like(keep)
            val[np.flatnonzero(keep)[-1]] = True
        t = time.time()
        tok = get_tokenizer(work, lengths, hashes, keep & ~val)
        seconds["tokenizer"], t = time.time() - t, time.time()
        counts, dtype = encode(work, lengths, keep, val, tok)
        seconds["encode"] = time.time() - t
        os.remove(os.path.join(work, "docs.txt"))
        with open(os.path.join(work, "tokenizer.json"), "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        meta = dict(format="darija-gpt-data", version=1, vocab_size=tok.vocab_size, dtype=dtype,
                    eot_id=tok.eot_id, tokenizer=os.path.join(out, "tokenizer.json"), tokenizer_sha256=sha,
                    **counts, sources=[dict(name=n, spec=s, files=[p for _, p in fs], **stats[i])
                                       for i, (n, s, fs) in enumerate(planned)],
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
    for s in meta["sources"]:
        ar, lat = (s.get(k + "_letters", 0) / max(1, s.get("all_letters", 0)) for k in ("arabic", "latin"))
        print(f"{s['name']}: {s['docs_read']:,} documents read, {s['docs_kept']:,} kept; letters: "
              f"{ar:.0%} Arabic script, {lat:.0%} Latin, {1 - ar - lat:.0%} other")
    print("dropped: " + (", ".join(f"{k[8:]} {v:,}" for k, v in meta["cleaning"].items()
                                   if k.startswith("dropped_") and v) or "nothing"))
    for split, c in counts.items():
        print(f"{split}: {c['docs']:,} documents, {c['tokens']:,} tokens, {c['bytes'] / 1e6:.2f} MB "
              f"({c['bytes'] / c['tokens']:.2f} bytes/token)")
    print(f"seconds per step: {meta['seconds']}\nwrote {out}/ (train.bin, val.bin, tokenizer.json, meta.json)")


if __name__ == "__main__":
    main()
