"""
bpe.py: a byte-level BPE tokenizer, from scratch, that gives exactly tiktoken's ids.

In the order a text travels through it:
1. Split patterns: text is first cut into chunks by a regex, so merges never cross a word.
   `gpt2`, `gpt4` (cl100k_base) and `o200k` are tiktoken's; `darija` (the default) is GPT-4's
   with one change: a word is a run of letters, combining marks and digits that holds a letter.
   That keeps harakat and shadda in their word (GPT-4 cuts at them: they are \\p{M}, not \\p{L})
   and Arabizi words whole ("3afak", "sba7": digits used as letters).
2. Training: each distinct chunk is counted once; a merge touches only the chunks holding its
   pair (an index from pair to chunks), pair counts change by what each merge changes, and a
   lazy max-heap gives the next pair (ties to the smallest ids: deterministic). A chunk is a
   `str` with one character per token, so Python's C string search finds the merge sites.
3. Encoding and decoding in plain Python, merging like tiktoken (lowest rank first), so
   `to_tiktoken()` gives identical ids: the fast path for whole datasets. Special-token text
   follows tiktoken's rules.
4. Chat: the chat format (docs/formats.md), conversations packed into training rows with their
   loss mask, and a streaming decoder that never prints half a UTF-8 character.
5. Files: one JSON file (never pickle), versioned and checked on load.
6. A command line: `python bpe.py compare ...` (bytes per token, and how each tokenizer cuts a text).

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

# --- 1. split patterns -------------------------------------------------------------------------

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


# --- 2. training -------------------------------------------------------------------------------

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


# --- 3.-5. the tokenizer: encoding, decoding, chat, files --------------------------------------

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
        chunks = count_chunks([texts] if isinstance(texts, str) else texts, compiled)
        if verbose:
            print(f"pre-tokenized into {len(chunks):,} distinct chunks", file=sys.stderr)
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
            raise ValueError(  # tiktoken's own message
                f"Encountered text corresponding to disallowed special token {token!r}.\nIf you want this text to be "
                f"encoded as a special token, pass it to `allowed_special`, e.g. `allowed_special={{{token!r}, ...}}`."
                f"\nIf you want this text to be encoded as normal text, disable the check for this token by passing "
                f"`disallowed_special=(enc.special_tokens_set - {{{token!r}}})`.\nTo disable this check for all "
                f"special tokens, pass `disallowed_special=()`.\n")
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
    # <|endoftext|> then <|role|> content <|end|> per turn (docs/formats.md); a prompt for the
    # model ends with <|assistant|>. The loss mask is 1 on the assistant's tokens and their <|end|>.

    def render_conversation(self, messages):
        """-> (ids, mask) for training on a conversation that ends with the assistant."""
        self._check_conversation(messages, last_role="assistant")
        return self._render(messages)

    def render_for_completion(self, messages):
        """-> ids that ask the model for the next assistant turn (the messages end with the user)."""
        self._check_conversation(messages, last_role="user")
        return self._render(messages)[0] + [self.special_tokens["<|assistant|>"]]

    def _render(self, messages):
        ids, mask = [self.eot_id], [0]
        for message in messages:
            content = self.encode_ordinary(message["content"])
            learn = int(message["role"] == "assistant")
            ids += [self.special_tokens[f"<|{message['role']}|>"]] + content + [self.special_tokens["<|end|>"]]
            mask += [0] + [learn] * (len(content) + 1)
        return ids, mask

    def _check_conversation(self, messages, last_role):
        """Raise ValueError unless messages are [system], user, assistant, user, ... ending with last_role."""
        if not isinstance(messages, (list, tuple)) or not messages:
            raise ValueError("a conversation is a non-empty list of {'role': ..., 'content': ...} dicts")
        missing = [s for s in SPECIAL_TOKENS if s not in self.special_tokens]
        if missing:
            raise ValueError(f"this tokenizer has no chat tokens {missing}; train one with the defaults")
        first = 1 if isinstance(messages[0], dict) and messages[0].get("role") == "system" else 0
        for i, message in enumerate(messages):
            role = message.get("role") if isinstance(message, dict) else message
            if not isinstance(message, dict) or role not in ("system", "user", "assistant"):
                raise ValueError(f"message {i}: role must be 'system', 'user' or 'assistant', got {role!r}")
            if not isinstance(message.get("content"), str) or not message["content"]:
                raise ValueError(f"message {i} ({role}): content must be a non-empty string")
            expected = "system" if i < first else ("user", "assistant")[(i - first) % 2]
            if role == "system" and expected != "system":
                raise ValueError(f"message {i}: a system message may only come first")
            if role != expected:
                raise ValueError(f"message {i}: expected role {expected!r}, got {role!r} (after an optional "
                                 f"system message, user and assistant alternate, starting with user)")
        if len(messages) == first or messages[-1]["role"] != last_role:
            raise ValueError(f"the last message must have role {last_role!r}")

    def fit_conversation(self, messages, max_tokens):
        """render_conversation, keeping only the leading exchanges that fit in max_tokens when the
        whole does not; None when not even the first exchange fits."""
        ids, mask = self.render_conversation(messages)
        while len(ids) > max_tokens and sum(message["role"] == "assistant" for message in messages) > 1:
            messages = messages[:-2]  # drop the last user/assistant exchange
            ids, mask = self.render_conversation(messages)
        return (ids, mask) if len(ids) <= max_tokens else None

    def pack_conversations(self, conversations, row_len):
        """Rendered conversations ((ids, mask), each at most row_len + 1 tokens) packed in order into
        rows, none cut, padded with <|endoftext|> -> (inputs, targets), lists of rows of row_len ids.
        A target is the next token where the mask says to learn it, else -1 (not in the loss)."""
        rows = [([], [])]
        for ids, mask in conversations:
            if len(rows[-1][0]) + len(ids) > row_len + 1:
                rows.append(([], []))
            rows[-1][0].extend(ids)
            rows[-1][1].extend(mask)
        inputs, targets = [], []
        for ids, mask in rows:
            padding = row_len + 1 - len(ids)
            ids, mask = ids + [self.eot_id] * padding, mask + [0] * padding
            inputs.append(ids[:-1])
            targets.append([token if learn else -1 for token, learn in zip(ids[1:], mask[1:])])
        return inputs, targets

    # --- files and tiktoken -----------------------------------------------------

    def save(self, path):
        """Write the tokenizer as JSON (temp file, then rename: never a half-written file)."""
        data = {"format": FORMAT, "version": VERSION, "pattern": self.pattern, "merges": [],
                "special_tokens": self.special_tokens}
        if [v[0] for v in self.vocab[:256]] != list(range(256)):
            data["byte_order"] = [v[0] for v in self.vocab[:256]]  # a tokenizer rebuilt from tiktoken's ranks
        # One merge per line, so the file reads and diffs well ('"merges": []' can only be the key).
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
            if not all(isinstance(pair, list) and len(pair) == 2 and all(type(i) is int for i in pair) for pair in merges):
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
    """Read a minbpe `.model` file, the format of the freeCodeCamp course this project reworks ("minbpe v1",
    the pattern, the number of special tokens, "token id" lines, then one merge "a b" per line)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if not lines or lines[0] != "minbpe v1":
        raise ValueError(f"{path}: not a minbpe v1 model file")
    n = int(lines[2])
    specials = {line.split()[0]: int(line.split()[1]) for line in lines[3:3 + n]}
    return Tokenizer(lines[1], [tuple(map(int, line.split())) for line in lines[3 + n:]], specials)


# --- 6. command line: python bpe.py compare [tokenizers] --heldout FILES --show TEXT -----------

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


def token_boundaries(enc, text):
    """The text cut at token boundaries, for learners: 3afak|·sba7|·lkhir (· is a space)."""
    pieces = [enc.decode_single_token_bytes(i).decode("utf-8", "backslashreplace") for i in enc.encode_ordinary(text)]
    return "|".join(p.replace(" ", "·").replace("\n", "\\n") for p in pieces)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Compare tokenizers (train one with prepare.py, which cleans text).")
    compare = parser.add_subparsers(dest="command", required=True).add_parser(
        "compare", help="bytes per token on held-out text, and/or how each tokenizer cuts a text")
    compare.add_argument("tokenizers", nargs="*", default=["gpt2", "cl100k_base", "o200k_base"],
                        help="tiktoken names, our .json files, minbpe .model files")
    compare.add_argument("--heldout", nargs="*", default=[], help="held-out .txt/.jsonl files or folders")
    compare.add_argument("--field", default="text", help="the JSONL field holding the text")
    compare.add_argument("--show", help="print how each tokenizer cuts this text")
    args = parser.parse_args(argv)
    if not args.heldout and not args.show:
        raise SystemExit("give --heldout FILE (bytes per token) and/or --show TEXT (token boundaries)")
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
            print(f"  {token_boundaries(enc, args.show)}")


if __name__ == "__main__":
    main()
