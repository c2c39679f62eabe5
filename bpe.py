"""
bpe.py: a byte-level BPE tokenizer, from scratch, that gives exactly tiktoken's ids.

What is in this file, in the order a text travels through it:
1. Split patterns. Text is first cut into chunks by a regex, so that merges never
   cross a word boundary. `gpt2`, `gpt4` (cl100k_base) and `o200k` are tiktoken's own
   patterns; `darija` (the default) is GPT-4's with one change: a word is any run of
   letters, combining marks and digits that contains a letter. That keeps Arabic harakat
   and shadda inside their word (GPT-4 cuts at them: they are \\p{M}, not \\p{L}) and keeps
   Arabizi words whole ("3afak", "sba7", "l9ahwa": digits used as letters), while
   stand-alone numbers are still cut into groups of at most 3 digits.
2. Training. The text is pre-tokenized once and each distinct chunk is counted. Merging
   then only touches the chunks that contain the winning pair (an index from pair to
   chunks), updates pair counts by the small difference each merge makes, and finds the
   next best pair with a lazy max-heap. Ties go to the smallest pair of ids, so training
   is deterministic. A chunk is held as a `str` with one character per token id, which lets
   Python's C string search find the merge sites for us.
3. Encoding and decoding, pure Python and readable, with a cache of encoded chunks.
   A chunk is merged exactly like tiktoken does (lowest-ranked adjacent pair first), so
   `to_tiktoken()` gives identical ids and is the fast path for whole datasets.
   Special tokens follow tiktoken's rules: special text raises unless allowed.
4. Chat: `render_conversation` (ids + loss mask) and `render_for_completion`, and a
   streaming decoder that never prints half a UTF-8 character as U+FFFD.
5. Files: one JSON file (never pickle), versioned and checked on load.
6. A command line: `python bpe.py train ...` and `python bpe.py compare ...`.

Token ids: 0-255 are the bytes, merge i creates id 256 + i, special tokens come last.
"""
import argparse
import codecs
import heapq
import json
import os
import sys
import time
from collections import Counter, defaultdict
from operator import add
from pathlib import Path

import regex

# -----------------------------------------------------------------------------
# 1. split patterns

PATTERNS = {
    "gpt2": r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""",
    "gpt4": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
    "o200k": "|".join([
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""", r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""", r"""\s*[\r\n]+""", r"""\s+(?!\S)""", r"""\s+""",
    ]),
    # GPT-4's, except the word: digits*, a letter, then letters/marks/digits ("3afak", "مْزيان").
    "darija": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{N}*+\p{L}[\p{L}\p{M}\p{N}]*+|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
}
SPECIAL_TOKENS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
FORMAT, VERSION = "darija-gpt-bpe", 1


def compile_pattern(pattern):
    """A pattern name from PATTERNS or a raw regex -> (regex string, compiled regex)."""
    pattern = PATTERNS.get(pattern, pattern)
    try:
        return pattern, regex.compile(pattern)
    except regex.error as e:
        raise ValueError(f"invalid split pattern {pattern!r} ({e}); use one of {list(PATTERNS)} "
                         f"or a valid regex") from None


# -----------------------------------------------------------------------------
# 2. training

def count_chunks(texts, compiled):
    """Pre-tokenize every document once and count each distinct chunk.
    Documents are split one by one, so no chunk (hence no merge) spans two documents."""
    counts = Counter()
    for text in texts:
        counts.update(compiled.findall(text))
    return counts


def learn_merges(chunk_counts, n_merges, verbose=False):
    """Learn `n_merges` merges from {chunk: count}. Returns a list of (a, b) id pairs.

    Each chunk becomes a str with one character per token: chr(id). A pair of tokens is
    then a 2-character str, which hashes fast and sorts exactly like the pair (a, b), and
    str.replace does a BPE merge (left to right, non-overlapping) at C speed."""
    words = [w.encode("utf-8").decode("latin-1") for w in chunk_counts]  # chr(byte) per byte
    freqs = list(chunk_counts.values())
    # where[pair]: the chunks holding the pair, listed once per occurrence, so that the
    # pair's count is the sum of their frequencies. A merge only visits these chunks.
    where = defaultdict(list)
    for i, w in enumerate(words):
        for pair in map(add, w, w[1:]):  # "abc" -> "ab", "bc"
            where[pair].append(i)
    counts = {pair: sum(map(freqs.__getitem__, chunks)) for pair, chunks in where.items()}
    # Max-heap of (-count, pair). Counts only fall after a pair is born, so an entry may be
    # stale (too high): when popped, it is re-pushed with its true count (lazy deletion).
    heap = [(-c, pair) for pair, c in counts.items()]
    heapq.heapify(heap)
    merges, start, last_report = [], time.time(), 0.0
    for step in range(n_merges):
        while heap:
            neg, pair = heapq.heappop(heap)
            c = counts[pair]
            if c == -neg:
                break
            if c > 0:
                heapq.heappush(heap, (-c, pair))
        else:
            raise ValueError(f"the training text only allows {step} merges (every chunk is a single "
                             f"token); lower vocab_size to at most {256 + step} + special tokens")
        merges.append((ord(pair[0]), ord(pair[1])))
        merge_pair(pair, chr(256 + step), words, freqs, counts, where, heap)
        if verbose and (time.time() - last_report > 1 or step == n_merges - 1):
            last_report, elapsed = time.time(), time.time() - start
            rate = (step + 1) / elapsed
            print(f"\rmerge {step + 1}/{n_merges} | {rate:,.0f} merges/s | "
                  f"ETA {(n_merges - step - 1) / rate:.0f} s ", end="", file=sys.stderr, flush=True)
    if verbose:
        print(file=sys.stderr)
    return merges


def merge_pair(pair, new, words, freqs, counts, where, heap):
    """Replace `pair` (a, b) by the token `new` in every chunk holding it, then fix the
    counts. Only pairs touching a merge site change, and each one is traded for a pair
    with `new`: (x, a) for (x, new) on the left, (b, y) for (new, y) on the right, and
    (b, a) for (new, new) between two sites side by side. So it is enough to list the
    pairs with `new` (they are born here) and subtract their counts from what they replace."""
    a, b = pair
    del counts[pair]  # every occurrence disappears
    born = defaultdict(list)  # pair with `new` -> chunks holding it, once per occurrence
    for i in where.pop(pair):
        w = words[i]
        if pair not in w:
            continue  # an earlier visit or merge already consumed the pair here
        t = words[i] = w.replace(pair, new)
        k = t.find(new)
        while k >= 0:
            if k > 0:
                born[t[k - 1] + new].append(i)
            if k + 1 < len(t) and t[k + 1] != new:  # (new, new) is listed by its right side
                born[new + t[k + 1]].append(i)
            k = t.find(new, k + 1)
    for q, chunks in born.items():
        counts[q] = c = sum(map(freqs.__getitem__, chunks))
        replaced = b + a if q == new + new else (q[0] + a if q[1] == new else b + q[1])
        if replaced != pair:  # (with a == b, "aaa" -> (new, a): that (a, a) was `pair` itself)
            counts[replaced] -= c
        where[q] = chunks
        heapq.heappush(heap, (-c, q))


# -----------------------------------------------------------------------------
# 3.-5. the tokenizer

class Tokenizer:
    """Split pattern + merges + special tokens. Ids: bytes, then merges, then specials."""

    def __init__(self, pattern, merges, special_tokens, byte_order=range(256)):
        # byte_order[i] is the byte with id i: the identity for ours, shuffled for tiktoken's.
        self.pattern, self._regex = compile_pattern(pattern)
        self.merges = [tuple(m) for m in merges]
        self.special_tokens = dict(special_tokens)
        self.vocab = [bytes([b]) for b in byte_order]  # id -> bytes, for non-special ids
        for a, b in self.merges:
            if not (0 <= a < len(self.vocab) and 0 <= b < len(self.vocab)):
                raise ValueError(f"merge {len(self.vocab) - 256} ({a}, {b}) uses an id that does not exist yet")
            self.vocab.append(self.vocab[a] + self.vocab[b])
        self._ranks = {token: i for i, token in enumerate(self.vocab)}  # bytes -> id
        if len(self._ranks) != len(self.vocab):
            raise ValueError("two merges make the same bytes: the merges are inconsistent")
        ids = sorted(self.special_tokens.values())
        if ids and (ids[0] < len(self.vocab) or len(set(ids)) != len(ids)):
            raise ValueError("special token ids must be distinct and come after the merges")
        self._decoder = dict(enumerate(self.vocab)) | {i: s.encode() for s, i in self.special_tokens.items()}
        self._cache = {}

    @property
    def vocab_size(self):
        return 1 + max([len(self.vocab) - 1, *self.special_tokens.values()])

    @property
    def eot_id(self):
        return self.special_tokens["<|endoftext|>"]

    @classmethod
    def train(cls, texts, vocab_size, pattern="darija", special_tokens=None, verbose=False):
        """Learn a tokenizer of `vocab_size` ids (256 bytes + merges + special tokens) from
        an iterable of documents."""
        special_tokens = list(SPECIAL_TOKENS if special_tokens is None else special_tokens)
        n_merges = vocab_size - 256 - len(special_tokens)
        if n_merges < 0:
            raise ValueError(f"vocab_size={vocab_size} is too small: it must be at least 256 bytes "
                             f"+ {len(special_tokens)} special tokens = {256 + len(special_tokens)}")
        pattern, compiled = compile_pattern(pattern)
        t0 = time.time()
        if isinstance(texts, str):
            texts = [texts]
        chunks = count_chunks(texts, compiled)
        if verbose:
            print(f"pre-tokenized into {len(chunks):,} distinct chunks in {time.time() - t0:.1f} s",
                  file=sys.stderr)
        merges = learn_merges(chunks, n_merges, verbose)
        first = 256 + n_merges
        return cls(pattern, merges, {s: first + i for i, s in enumerate(special_tokens)})

    # --- encoding -------------------------------------------------------------

    def _encode_chunk(self, chunk):
        """One chunk -> ids (see bpe_parts), remembered in a cache: text repeats its words."""
        ids = self._cache.get(chunk)
        if ids is not None:
            return ids
        data = chunk.encode("utf-8")
        if data in self._ranks:  # a whole chunk that is one token (tiktoken's shortcut)
            ids = [self._ranks[data]]
        else:
            ids = [self._ranks[p] for p in bpe_parts(data, self._ranks, len(self.vocab))]
        if len(self._cache) > 200_000:
            self._cache.clear()  # bound the memory on endless streams of new words
        self._cache[chunk] = ids
        return ids

    def encode_ordinary(self, text):
        """Text -> ids, treating special-token text as plain text."""
        ids = []
        for chunk in self._regex.findall(text):
            ids.extend(self._encode_chunk(chunk))
        return ids

    def encode(self, text, allowed_special=frozenset(), disallowed_special="all"):
        """Text -> ids with tiktoken's rules: allowed special text becomes its id; disallowed
        special text (by default all that is not allowed) raises ValueError."""
        if allowed_special == "all":
            allowed_special = set(self.special_tokens)
        unknown = set(allowed_special) - set(self.special_tokens)
        if unknown:
            raise ValueError(f"allowed_special names tokens this tokenizer does not have: {sorted(unknown)}")
        if disallowed_special == "all":
            disallowed_special = set(self.special_tokens) - set(allowed_special)
        found = [token for token in disallowed_special if token in text]
        if found:
            token = min(found, key=text.index)  # the first one in the text, as tiktoken reports it
            raise ValueError(
                f"Encountered text corresponding to disallowed special token {token!r}.\n"
                f"If you want this text to be encoded as a special token, pass it to "
                f"`allowed_special`, e.g. `allowed_special={{{token!r}, ...}}`.\n"
                f"If you want this text to be encoded as normal text, disable the check for this "
                f"token by passing `disallowed_special=(enc.special_tokens_set - {{{token!r}}})`.\n"
                f"To disable this check for all special tokens, pass `disallowed_special=()`.\n")
        if not allowed_special:
            return self.encode_ordinary(text)
        # Cut the text at the allowed special tokens (longest first, so none hides another).
        alternatives = sorted(allowed_special, key=len, reverse=True)
        splitter = regex.compile("(" + "|".join(regex.escape(s) for s in alternatives) + ")")
        ids = []
        for i, part in enumerate(splitter.split(text)):
            ids.extend([self.special_tokens[part]] if i % 2 else self.encode_ordinary(part))
        return ids

    def decode_bytes(self, ids):
        try:
            return b"".join(self._decoder[i] for i in ids)
        except (KeyError, TypeError):
            bad = next(i for i in ids if not isinstance(i, int) or i not in self._decoder)
            raise ValueError(f"token id {bad!r} is not in this tokenizer's vocabulary "
                             f"(0..{self.vocab_size - 1})") from None

    def decode(self, ids):
        """Ids -> text; byte sequences that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def stream_decoder(self):
        return StreamDecoder(self)

    # --- chat -----------------------------------------------------------------

    def _check_conversation(self, messages, last_role):
        """Raise ValueError unless messages are [system?] user, assistant, user, ... ending
        with `last_role`."""
        if not isinstance(messages, (list, tuple)) or not messages:
            raise ValueError("a conversation is a non-empty list of {'role': ..., 'content': ...} dicts")
        missing = [s for s in ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>")
                   if s not in self.special_tokens]
        if missing:
            raise ValueError(f"this tokenizer has no chat tokens {missing}; train one with the defaults")
        turns = list(messages)
        for i, m in enumerate(turns):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                raise ValueError(f"message {i}: role must be 'system', 'user' or 'assistant', "
                                 f"got {m.get('role') if isinstance(m, dict) else m!r}")
            if not isinstance(m.get("content"), str) or not m["content"]:
                raise ValueError(f"message {i} ({m['role']}): content must be a non-empty string")
        first = 1 if turns[0]["role"] == "system" else 0
        for i, m in enumerate(turns[first:], start=first):
            expected = ("user", "assistant")[(i - first) % 2]
            if m["role"] == "system":
                raise ValueError(f"message {i}: a system message may only come first")
            if m["role"] != expected:
                raise ValueError(f"message {i}: expected role {expected!r}, got {m['role']!r} (after an "
                                 f"optional system message, user and assistant alternate, starting with user)")
        turns = turns[first:]
        if not turns or turns[-1]["role"] != last_role:
            raise ValueError(f"the last message must have role {last_role!r}")

    def _render(self, messages):
        ids, mask = [self.eot_id], [0]
        end = self.special_tokens["<|end|>"]
        for m in messages:
            content = self.encode_ordinary(m["content"])
            learn = int(m["role"] == "assistant")
            ids += [self.special_tokens[f"<|{m['role']}|>"]] + content + [end]
            mask += [0] + [learn] * (len(content) + 1)
        return ids, mask

    def render_conversation(self, messages):
        """-> (ids, mask) for training: <|endoftext|> then <|role|> content <|end|> per turn;
        the mask is 1 exactly on the assistant's content tokens and their <|end|>."""
        self._check_conversation(messages, "assistant")
        return self._render(messages)

    def render_for_completion(self, messages):
        """-> ids that ask the model for the next assistant turn (ends with <|assistant|>)."""
        self._check_conversation(messages, "user")
        return self._render(messages)[0] + [self.special_tokens["<|assistant|>"]]

    # --- files and tiktoken -----------------------------------------------------

    def save(self, path):
        """Write the tokenizer as JSON (temp file, then rename: never a half-written file)."""
        data = {"format": FORMAT, "version": VERSION, "pattern": self.pattern, "merges": [],
                "special_tokens": self.special_tokens}
        if [v[0] for v in self.vocab[:256]] != list(range(256)):
            data["byte_order"] = [v[0] for v in self.vocab[:256]]  # tiktoken's ids, from from_tiktoken
        # One merge per line, so the file reads (and diffs) well. Quotes inside JSON strings
        # are escaped, so '"merges": []' can only be the key itself.
        merges = ",\n".join(f"[{a}, {b}]" for a, b in self.merges)
        text = json.dumps(data, ensure_ascii=False).replace('"merges": []', f'"merges": [\n{merges}\n]')
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path):
        """Read a file written by save(); any damage is a ValueError naming the file."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot read tokenizer file (missing, truncated or not JSON: {e})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} tokenizer file")
        if data.get("version") != VERSION:
            raise ValueError(f"{path}: unknown tokenizer file version {data.get('version')!r} "
                             f"(this bpe.py reads version {VERSION}); update bpe.py")
        try:
            merges, specials = data["merges"], data["special_tokens"]
            if not all(isinstance(m, list) and len(m) == 2 and all(type(x) is int for x in m) for m in merges):
                raise ValueError("merges must be [[a, b], ...] pairs of integer ids")
            if not isinstance(specials, dict) or not all(type(i) is int for i in specials.values()):
                raise ValueError("special_tokens must map strings to integer ids")
            return cls(data["pattern"], merges, specials, data.get("byte_order", range(256)))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: inconsistent tokenizer file: {e}") from None

    def to_tiktoken(self, name="darija-gpt-bpe"):
        """The same tokenizer as a tiktoken.Encoding: identical ids, Rust speed, threads."""
        import tiktoken
        return tiktoken.Encoding(name=name, pat_str=self.pattern, mergeable_ranks=self._ranks,
                                 special_tokens=self.special_tokens)

    @classmethod
    def from_tiktoken(cls, encoding):
        """Rebuild a tiktoken encoding ("gpt2", "cl100k_base", "o200k_base" or an Encoding)
        as merges. tiktoken stores only ranks (bytes -> id); the merge that made the token
        of rank r is the split into two parts that BPE with the ranks below r ends at."""
        import tiktoken
        enc = tiktoken.get_encoding(encoding) if isinstance(encoding, str) else encoding
        ranks = enc._mergeable_ranks
        by_rank = sorted(ranks, key=ranks.get)
        if [ranks[t] for t in by_rank] != list(range(len(by_rank))) or any(len(t) != 1 for t in by_rank[:256]):
            raise ValueError(f"{enc.name}: ranks are not 256 bytes followed by merges")
        merges = []
        for r, token in enumerate(by_rank[256:], start=256):
            splits = [k for k in range(1, len(token)) if ranks.get(token[:k], r) < r and ranks.get(token[k:], r) < r]
            if len(splits) != 1:  # several ways to cut it: let BPE say which one it reaches
                splits = [len(bpe_parts(token, ranks, r)[0])]
            merges.append((ranks[token[:splits[0]]], ranks[token[splits[0]:]]))
        return cls(enc._pat_str, merges, enc._special_tokens, [t[0] for t in by_rank[:256]])


def bpe_parts(data, ranks, max_rank):
    """BPE on the bytes `data`, tiktoken's way: merge the adjacent pair whose bytes form the
    lowest-ranked token (leftmost on ties), using only ranks below max_rank, until no
    adjacent pair is such a token. Returns the parts (bytes)."""
    parts = [data[i:i + 1] for i in range(len(data))]
    while len(parts) > 1:
        pair_ranks = [ranks.get(a + b, max_rank) for a, b in zip(parts, parts[1:])]
        rank = min(pair_ranks)
        if rank >= max_rank:
            break
        i = pair_ranks.index(rank)
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


class StreamDecoder:
    """Decodes a stream of ids as it comes (for chat): feed(id) returns only complete
    characters and holds back an unfinished UTF-8 sequence until its next bytes arrive;
    bytes that can never become a character are U+FFFD."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id):
        return self._utf8.decode(self._tokenizer.decode_bytes([token_id]))

    def flush(self):
        return self._utf8.decode(b"", final=True)


def load_minbpe(path):
    """Read a minbpe `.model` file (the course's format: "minbpe v1", the pattern, the number
    of special tokens, "token id" lines, then one merge "a b" per line) for comparisons."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if not lines or lines[0] != "minbpe v1":
        raise ValueError(f"{path}: not a minbpe v1 model file")
    n = int(lines[2])
    specials = {line.split()[0]: int(line.split()[1]) for line in lines[3:3 + n]}
    return Tokenizer(lines[1], [tuple(map(int, line.split())) for line in lines[3 + n:]], specials)


# -----------------------------------------------------------------------------
# 6. command line

def read_documents(paths, field="text"):
    """Yield documents from .txt files (one document per file), .jsonl files (one per line,
    taken from `field`) and folders (their .txt and .jsonl files, sorted)."""
    for path in map(Path, paths):
        if path.is_dir():
            yield from read_documents(sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl")), field)
        elif path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            yield json.loads(line)[field]
                        except (json.JSONDecodeError, KeyError, TypeError):
                            raise SystemExit(f"{path}:{n}: not a JSON object with a {field!r} field "
                                             f"(use --field to pick another)") from None
        elif path.suffix == ".txt":
            yield path.read_text(encoding="utf-8")
        else:
            raise SystemExit(f"{path}: expected a .txt or .jsonl file or a folder")


def get_encoder(name):
    """'gpt2' | 'cl100k_base' | 'o200k_base' | ours.json | minbpe.model -> a tiktoken Encoding."""
    import tiktoken
    if name.endswith(".model"):
        return load_minbpe(name).to_tiktoken(Path(name).stem)
    if name.endswith(".json"):
        return Tokenizer.load(name).to_tiktoken(Path(name).stem)
    return tiktoken.get_encoding(name)


def show(enc, text):
    """The text cut at token boundaries, for learners: 3afak|·sba7|·lkhir (· is a space)."""
    pieces = [enc.decode_single_token_bytes(i).decode("utf-8", "backslashreplace") for i in enc.encode_ordinary(text)]
    return "|".join(p.replace(" ", "·").replace("\n", "\\n") for p in pieces)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Train a byte-level BPE tokenizer or compare tokenizers.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="learn a tokenizer from text and write it as JSON")
    train.add_argument("inputs", nargs="+", help=".txt files, .jsonl files or folders")
    train.add_argument("--vocab-size", type=int, required=True)
    train.add_argument("--out", required=True, help="where to write the tokenizer (.json)")
    train.add_argument("--pattern", default="darija", help=f"one of {list(PATTERNS)} or a regex")
    train.add_argument("--field", default="text", help="the JSONL field holding the text")
    train.add_argument("--force", action="store_true", help="overwrite an existing --out")
    compare = sub.add_parser("compare", help="bytes per token of several tokenizers on held-out text")
    compare.add_argument("tokenizers", nargs="*", default=["gpt2", "cl100k_base", "o200k_base"],
                         help="tiktoken names, our .json files, minbpe .model files")
    compare.add_argument("--heldout", nargs="*", default=[], help="held-out .txt/.jsonl files or folders")
    compare.add_argument("--field", default="text")
    compare.add_argument("--show", help="also print how each tokenizer cuts this text")
    args = parser.parse_args(argv)

    if args.command == "train":
        if Path(args.out).exists() and not args.force:
            raise SystemExit(f"{args.out} exists; pass --force to overwrite it")
        t0 = time.time()
        try:
            tok = Tokenizer.train(read_documents(args.inputs, args.field), args.vocab_size, args.pattern, verbose=True)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
        tok.save(args.out)
        print(f"wrote {args.out}: vocab_size {tok.vocab_size} ({len(tok.merges)} merges, "
              f"{len(tok.special_tokens)} special tokens) in {time.time() - t0:.1f} s")
        return
    if not args.heldout and not args.show:
        raise SystemExit("compare: give --heldout FILE (and/or --show TEXT)")
    docs = list(read_documents(args.heldout, args.field))
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    if args.heldout:
        print(f"{'tokenizer':<40} {'vocab':>8} {'tokens':>10} {'bytes/token':>12}   ({n_bytes:,} bytes held out)")
    for name in args.tokenizers:
        try:
            enc = get_encoder(name)
        except (ValueError, OSError) as e:
            raise SystemExit(f"error: cannot load tokenizer {name!r}: {e}") from None
        if args.heldout:
            n_tokens = sum(map(len, enc.encode_ordinary_batch(docs)))
            print(f"{name:<40} {enc.n_vocab:>8,} {n_tokens:>10,} {n_bytes / max(n_tokens, 1):>12.2f}")
        if args.show:
            print(f"  {show(enc, args.show)}")


if __name__ == "__main__":
    main()
