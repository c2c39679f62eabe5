"""Tests for bpe.py: the trainer against a naive reference, ids against tiktoken, files, chat."""
import functools
import json
from collections import Counter

import pytest
import regex
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SHARED  # (conftest also puts the project root on sys.path)
import bpe
from bpe import Tokenizer

CORPUS = [
    "salam 3likom, kidayr? labas l7amdullah. 3afak fin kayna l9ahwa?",
    "sba7 lkhir a khouya, bghit nmchi m3a sa7bi l dar dyalna 2 dial l3chiya.",
    "سلام عليكم، كيداير؟ لاباس الحمد لله. عافاك فين كاينة القهوة؟",
    "صْباح الخير أ خويا، بغيت نمشي مع صاحبي لدار ديالنا.",
    "مْزيان بزّاف! شحال هادي ما شفتك. 2024 كانت عام زوين 🇲🇦👍",
    "Bonjour, ça va très bien. L'été est chaud à Marrakech.\r\n\n  fin   ",
] * 3
TEXTS = CORPUS[:6] + [
    "Hello world! It's 12345 dollars, isn't it?\n\n\tindented    spaces   ",
    "def encode(self, text):\n    return [ord(c) for c in text]  # code\r\n",
    "👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 🇲🇦🇫🇷 flags, e\u0301 combining, ﻻ presentation form",
    "   \n\n\n   \r\n\r\n \t ", "", "a", "<|endoftext|> looks special but is plain here",
]


def naive_merges(texts, n_merges, pattern):
    """The obviously correct trainer: recount every pair after every merge."""
    words = Counter()
    for text in texts:
        for chunk in regex.findall(pattern, text):
            words[tuple(chunk.encode("utf-8"))] += 1
    merges = []
    for step in range(n_merges):
        counts = Counter()
        for w, f in words.items():
            for pair in zip(w, w[1:]):
                counts[pair] += f
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))  # highest count, then smallest ids
        merges.append(best)
        merged = Counter()
        for w, f in words.items():
            out, i = [], 0
            while i < len(w):
                if w[i:i + 2] == best:
                    out.append(256 + step)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] += f
        words = merged
    return merges


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(CORPUS, 256 + 150 + 5)


# --- split patterns -------------------------------------------------------------

def test_darija_pattern_keeps_arabizi_and_marks_whole():
    split = lambda name, text: regex.findall(bpe.PATTERNS[name], text)  # noqa: E731
    assert split("darija", "3afak sba7 l9ahwa m3a 2ma") == ["3afak", " sba7", " l9ahwa", " m3a", " 2ma"]
    assert split("gpt4", "3afak sba7") == ["3", "afak", " sba", "7"]
    assert split("darija", "صْباح مْزيان") == ["صْباح", " مْزيان"]
    assert split("gpt4", "صْباح") == ["ص", "ْباح"]  # the mark is cut off and glued to the next part
    assert split("darija", "12345 dh, 2024!\n\n") == ["123", "45", " dh", ",", " ", "202", "4", "!\n\n"]


def test_unknown_pattern_is_a_clear_error():
    with pytest.raises(ValueError, match="invalid split pattern"):
        Tokenizer.train(["abc"], 300, pattern="gpt5(")


# --- training -------------------------------------------------------------------

def test_known_merges_and_tie_break():
    # Wikipedia's example: aa (4 times) first, then ab and Za tie at 2: smaller ids (a, b) win.
    tok = Tokenizer.train(["aaabdaaabac"], 256 + 3, special_tokens=[])
    assert tok.merges == [(97, 97), (97, 98), (256, 257)]
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]


def test_no_merge_across_documents():
    # Glued together these would be "abababab...": (a, b) would win. Apart, only "ba" has a pair.
    tok = Tokenizer.train(["a", "b"] * 10 + ["ba"], 256 + 1, special_tokens=[])
    assert tok.merges == [(98, 97)] and tok.vocab_size == 257


def test_vocab_size_counts_specials_once():
    tok = Tokenizer.train(CORPUS, 300)
    assert tok.vocab_size == 300 and len(tok.merges) == 300 - 256 - 5
    assert list(tok.special_tokens) == bpe.SPECIAL_TOKENS
    assert list(tok.special_tokens.values()) == list(range(295, 300))
    assert tok.eot_id == 295


def test_vocab_size_too_small():
    with pytest.raises(ValueError, match=r"vocab_size=260 is too small: it must be at least 256 bytes \+ 5 "):
        Tokenizer.train(CORPUS, 260)


def test_too_few_pairs_for_the_vocab_size():
    with pytest.raises(ValueError, match="only allows 1 merges"):
        Tokenizer.train(["ab"], 256 + 2, special_tokens=[])


def test_trainer_equals_naive_reference_on_darija():
    expected = naive_merges(CORPUS + TEXTS, 400, bpe.PATTERNS["darija"])
    assert len(expected) == 400
    assert Tokenizer.train(CORPUS + TEXTS, 256 + 400, special_tokens=[]).merges == expected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(st.text(alphabet="ab7 \nصْب3éa", max_size=40), min_size=1, max_size=6),
       pattern=st.sampled_from(["darija", "gpt4", "gpt2"]))
def test_trainer_equals_naive_reference(texts, pattern):
    expected = naive_merges(texts, 200, bpe.PATTERNS[pattern])
    chunks = bpe.count_chunks(texts, regex.compile(bpe.PATTERNS[pattern]))
    assert bpe.learn_merges(chunks, len(expected)) == expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(st.text(max_size=30), min_size=1, max_size=5))
def test_trainer_equals_naive_reference_on_any_unicode(texts):
    expected = naive_merges(texts, 100, bpe.PATTERNS["darija"])
    chunks = bpe.count_chunks(texts, regex.compile(bpe.PATTERNS["darija"]))
    assert bpe.learn_merges(chunks, len(expected)) == expected


# --- encoding: ours, our export, tiktoken ---------------------------------------

@pytest.mark.parametrize("text", TEXTS)
def test_our_encoder_equals_our_tiktoken_export(tok, text):
    enc = tok.to_tiktoken()
    assert tok.encode_ordinary(text) == enc.encode_ordinary(text)
    assert tok.decode(tok.encode_ordinary(text)) == text


@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_round_trip_and_export_on_any_text(tok, text):
    ids = tok.encode_ordinary(text)
    assert tok.decode(ids) == text
    assert ids == tok.to_tiktoken().encode_ordinary(text)


@functools.lru_cache(maxsize=None)  # rebuilding o200k_base's merges takes seconds: once per run
def from_tiktoken(name):
    """One of tiktoken's encodings rebuilt as our merges, so our encoder can be checked against its ids.
    tiktoken stores only ranks (bytes -> id); the merge that made the token of rank r is the cut into
    two parts that BPE with the ranks below r ends at."""
    enc = tiktoken.get_encoding(name)
    ranks = enc._mergeable_ranks
    by_rank = sorted(ranks, key=ranks.get)
    assert [ranks[t] for t in by_rank] == list(range(len(by_rank))) and all(len(t) == 1 for t in by_rank[:256])
    merges = []
    for r, token in enumerate(by_rank[256:], start=256):
        cuts = [k for k in range(1, len(token)) if ranks.get(token[:k], r) < r and ranks.get(token[k:], r) < r]
        if len(cuts) != 1:  # several ways to cut it: let BPE say which one it reaches
            cuts = [len(bpe.bpe_parts(token, ranks, r)[0])]
        merges.append((ranks[token[:cuts[0]]], ranks[token[cuts[0]:]]))
    return Tokenizer(enc._pat_str, merges, enc._special_tokens, [t[0] for t in by_rank[:256]])


@pytest.fixture(scope="module", params=["gpt2", "cl100k_base", "o200k_base"])
def official(request):
    return from_tiktoken(request.param), tiktoken.get_encoding(request.param)


def test_ids_equal_tiktoken(official):
    ours, enc = official
    assert ours.vocab_size == enc.n_vocab
    for text in TEXTS:
        assert ours.encode_ordinary(text) == enc.encode_ordinary(text), text
        assert ours.encode(text, allowed_special="all") == enc.encode(text, allowed_special="all"), text
    assert ours.to_tiktoken().encode_ordinary(TEXTS[2]) == enc.encode_ordinary(TEXTS[2])


@settings(max_examples=100, deadline=None)
@given(text=st.text(st.characters(codec="utf-8"), max_size=60))
def test_ids_equal_tiktoken_on_random_unicode(official, text):
    ours, enc = official
    assert ours.encode_ordinary(text) == enc.encode_ordinary(text)


def test_ids_equal_tiktoken_on_shared_darija(official):
    files = sorted((SHARED / "data" / "darija" / "pretrain").glob("*.jsonl"))
    if not files:
        pytest.skip("../shared/data is absent")
    ours, enc = official
    for path in files:  # the first 40 documents of each source: both scripts, emoji, news
        with open(path, encoding="utf-8") as f:
            docs = [json.loads(next(f))["text"] for _ in range(40)]
        assert [ours.encode_ordinary(d) for d in docs] == enc.encode_ordinary_batch(docs), path.name


# --- special tokens -------------------------------------------------------------

def test_special_tokens_disallowed_by_default(tok):
    with pytest.raises(ValueError, match="(?s)disallowed special token '<\\|endoftext\\|>'.*allowed_special"):
        tok.encode("salam<|endoftext|>")
    with pytest.raises(ValueError, match="<\\|user\\|>"):
        tok.encode("<|user|>hi", allowed_special={"<|endoftext|>"})


def test_special_token_errors(tok):
    with pytest.raises(ValueError, match="(?s)disallowed special token '<\\|user\\|>'"):
        tok.encode("a<|user|>b<|endoftext|>")  # the first one in the text is named
    with pytest.raises(ValueError, match=r"allowed_special names tokens this tokenizer does not have: \['<\|im_start\|>'\]"):
        tok.encode("a", allowed_special={"<|im_start|>"})


def test_special_tokens_allowed(tok):
    enc = tok.to_tiktoken()
    text = "salam<|endoftext|><|user|>3afak<|end|>"
    ids = tok.encode(text, allowed_special="all")
    assert ids == enc.encode(text, allowed_special="all")
    assert ids[-1] == tok.special_tokens["<|end|>"] and tok.eot_id in ids
    assert tok.decode(ids) == text
    some = tok.encode(text, allowed_special={"<|end|>"}, disallowed_special=())
    assert some == enc.encode(text, allowed_special={"<|end|>"}, disallowed_special=())
    assert tok.eot_id not in some and some[-1] == tok.special_tokens["<|end|>"]
    assert tok.encode(text, disallowed_special=()) == tok.encode_ordinary(text)


def test_decode_replaces_invalid_utf8(tok):
    assert tok.decode([0xD8]) == "\ufffd"
    assert tok.decode_bytes([0xD8, 0xB3]) == "س".encode()
    with pytest.raises(ValueError, match="token id 99999 is not in this tokenizer's vocabulary"):
        tok.decode([1, 99999])


# --- streaming decoder ----------------------------------------------------------

@pytest.mark.parametrize("text", TEXTS[:6] + [TEXTS[8]])
def test_stream_decoder_split_at_every_byte(tok, text):
    dec = tok.stream_decoder()
    pieces = [dec.feed(b) for b in text.encode("utf-8")] + [dec.flush()]  # ids 0-255 are bytes
    assert "".join(pieces) == text and "\ufffd" not in "".join(pieces)
    dec = tok.stream_decoder()
    assert "".join(dec.feed(i) for i in tok.encode_ordinary(text)) + dec.flush() == text


def test_stream_decoder_invalid_bytes(tok):
    dec = tok.stream_decoder()
    assert dec.feed(0xD8) == ""  # could still become a character: held back
    assert dec.feed(ord("a")) == "\ufffda"  # it cannot any more
    assert dec.feed(0xFF) == "\ufffd"  # never valid
    assert dec.feed(0xD9) == "" and dec.flush() == "\ufffd"


# --- files ----------------------------------------------------------------------

def test_save_load_round_trip(tok, tmp_path):
    path = tmp_path / "tok.json"
    tok.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert list(data) == ["format", "version", "pattern", "merges", "special_tokens"]
    assert data["format"] == "darija-gpt-bpe" and data["version"] == 1
    assert data["pattern"] == bpe.PATTERNS["darija"] and data["merges"][0] == list(tok.merges[0])
    loaded = Tokenizer.load(path)
    assert loaded.merges == tok.merges and loaded.special_tokens == tok.special_tokens
    assert loaded.encode(TEXTS[4]) == tok.encode(TEXTS[4])
    assert not list(tmp_path.glob("*.tmp"))
    raw = Tokenizer.train(CORPUS, 300, pattern=r"[a], [b]|\w+|\s+|.")  # a pattern that looks like merges
    raw.save(path)
    assert Tokenizer.load(path).pattern == r"[a], [b]|\w+|\s+|." and Tokenizer.load(path).merges == raw.merges


def test_save_load_tiktoken_byte_order(tmp_path):
    gpt2 = from_tiktoken("gpt2")
    assert [v[0] for v in gpt2.vocab[:3]] == [ord("!"), ord('"'), ord("#")]  # tiktoken's ids, not bytes
    gpt2.save(tmp_path / "gpt2.json")
    loaded = Tokenizer.load(tmp_path / "gpt2.json")
    assert loaded.encode_ordinary(TEXTS[6]) == tiktoken.get_encoding("gpt2").encode_ordinary(TEXTS[6])


def _corrupt(tmp_path, tok, change):
    path = tmp_path / "tok.json"
    tok.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_corrupt_files(tok, tmp_path):
    path = tmp_path / "tok.json"
    tok.save(path)
    path.write_text(path.read_text(encoding="utf-8")[:100], encoding="utf-8")
    with pytest.raises(ValueError, match=r"tok\.json: cannot read tokenizer file \(missing, truncated or not JSON"):
        Tokenizer.load(path)
    with pytest.raises(ValueError, match="cannot read tokenizer file"):
        Tokenizer.load(tmp_path / "missing.json")
    bad = _corrupt(tmp_path, tok, lambda d: d.update(version=2))
    with pytest.raises(ValueError, match=r"tok\.json: unknown tokenizer file version 2"):
        Tokenizer.load(bad)
    bad = _corrupt(tmp_path, tok, lambda d: d.update(format="minbpe"))
    with pytest.raises(ValueError, match="not a darija-gpt-bpe tokenizer file"):
        Tokenizer.load(bad)
    bad = _corrupt(tmp_path, tok, lambda d: d["merges"].__setitem__(0, [256, 1]))
    with pytest.raises(ValueError, match=r"tok\.json: inconsistent tokenizer file: merge 0 \(256, 1\)"):
        Tokenizer.load(bad)
    bad = _corrupt(tmp_path, tok, lambda d: d["merges"].append([0, 1.5]))
    with pytest.raises(ValueError, match="inconsistent tokenizer file: merges must be"):
        Tokenizer.load(bad)
    bad = _corrupt(tmp_path, tok, lambda d: d["special_tokens"].update({"<|end|>": 3}))
    with pytest.raises(ValueError, match="special token ids must be distinct and come after the merges"):
        Tokenizer.load(bad)
    bad = _corrupt(tmp_path, tok, lambda d: d.pop("pattern"))
    with pytest.raises(ValueError, match="inconsistent tokenizer file: 'pattern'"):
        Tokenizer.load(bad)


# --- chat -----------------------------------------------------------------------

def test_render_conversation(tok):
    s = tok.special_tokens
    messages = [{"role": "system", "content": "nta BoDmagh"}, {"role": "user", "content": "salam"},
                {"role": "assistant", "content": "ahlan"}, {"role": "user", "content": "labas?"},
                {"role": "assistant", "content": "labas"}]
    ids, mask = tok.render_conversation(messages)
    enc = tok.encode_ordinary
    expected = ([s["<|endoftext|>"], s["<|system|>"]] + enc("nta BoDmagh") + [s["<|end|>"], s["<|user|>"]]
                + enc("salam") + [s["<|end|>"], s["<|assistant|>"]] + enc("ahlan") + [s["<|end|>"]]
                + [s["<|user|>"]] + enc("labas?") + [s["<|end|>"], s["<|assistant|>"]] + enc("labas")
                + [s["<|end|>"]])
    assert ids == expected and len(mask) == len(ids)
    learned = [i for i, m in zip(ids, mask) if m]
    assert learned == enc("ahlan") + [s["<|end|>"]] + enc("labas") + [s["<|end|>"]]
    assert tok.decode(ids).startswith("<|endoftext|><|system|>nta BoDmagh<|end|><|user|>salam<|end|>")
    prompt = tok.render_for_completion(messages[:4])
    assert prompt == ids[:len(prompt)] and prompt[-1] == s["<|assistant|>"]
    assert prompt == ids[:ids.index(s["<|assistant|>"], len(prompt) - 1) + 1]


@pytest.mark.parametrize("messages, error", [
    ([], "non-empty list"),
    ([{"role": "bot", "content": "x"}], "message 0: role must be 'system', 'user' or 'assistant', got 'bot'"),
    ([{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}], "message 0 \\(user\\): content must be"),
    ([{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}], "content must be a non-empty string"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "message 1: a system message may only come first"),
    ([{"role": "assistant", "content": "a"}], "message 0: expected role 'user', got 'assistant'"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "message 1: expected role 'assistant', got 'user'"),
    ([{"role": "user", "content": "a"}], "the last message must have role 'assistant'"),
])
def test_render_conversation_errors(tok, messages, error):
    with pytest.raises(ValueError, match=error):
        tok.render_conversation(messages)


def test_render_for_completion_must_end_with_user(tok):
    with pytest.raises(ValueError, match="the last message must have role 'user'"):
        tok.render_for_completion([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    with pytest.raises(ValueError, match="no chat tokens"):
        Tokenizer.train(CORPUS, 300, special_tokens=["<|endoftext|>"]).render_for_completion([{"role": "user", "content": "a"}])


def test_fit_conversation_keeps_the_leading_exchanges_that_fit(tok):
    chat = [{"role": "user", "content": "salam"}, {"role": "assistant", "content": "ahlan"},
            {"role": "user", "content": "labas?"}, {"role": "assistant", "content": "labas hamdollah"}]
    whole = tok.render_conversation(chat)
    first = tok.render_conversation(chat[:2])
    assert tok.fit_conversation(chat, len(whole[0])) == whole
    assert tok.fit_conversation(chat, len(whole[0]) - 1) == first  # the last exchange dropped, not cut
    assert tok.fit_conversation(chat, len(first[0]) - 1) is None   # not even the first exchange fits


def test_pack_conversations_rows_and_targets(tok):
    s = tok.special_tokens
    a = ([s["<|endoftext|>"], s["<|user|>"], 97, s["<|end|>"], s["<|assistant|>"], 98, s["<|end|>"]],
         [0, 0, 0, 0, 0, 1, 1])
    b = ([s["<|endoftext|>"], s["<|user|>"], 99, s["<|end|>"], s["<|assistant|>"], 100, 101, s["<|end|>"]],
         [0, 0, 0, 0, 0, 1, 1, 1])
    inputs, targets = tok.pack_conversations([a, b, a], row_len=14)
    eot, pad = s["<|endoftext|>"], -1
    # a and b fit in one row of 15 tokens (7 + 8); the second a starts a new row, padded with <|endoftext|>
    assert inputs == [a[0] + b[0][:-1], a[0] + [eot] * 7]
    assert targets == [[pad] * 4 + [98, s["<|end|>"]] + [pad] * 5 + [100, 101, s["<|end|>"]],
                       [pad] * 4 + [98, s["<|end|>"]] + [pad] * 8]


# --- minbpe files and the command line --------------------------------------------

def test_load_minbpe(tmp_path):
    path = tmp_path / "course.model"
    path.write_text(f"minbpe v1\n{bpe.PATTERNS['gpt4']}\n1\n<|endoftext|> 258\n97 97\n256 98\n", encoding="utf-8")
    tok = bpe.load_minbpe(path)
    assert tok.encode("aab aa<|endoftext|>", allowed_special="all") == [257, 32, 256, 258] and tok.eot_id == 258
    path.write_text("not a model\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not a minbpe v1 model file"):
        bpe.load_minbpe(path)


def test_cli_compare(tmp_path, capsys):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("\n".join(CORPUS[:3]), encoding="utf-8")
    (tmp_path / "corpus" / "b.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in CORPUS[3:6]), encoding="utf-8")
    tok = Tokenizer.train(bpe.read_documents([tmp_path / "corpus"]), 300)
    assert tok.merges == Tokenizer.train(["\n".join(CORPUS[:3])] + CORPUS[3:6], 300).merges  # a .txt is one document
    tok.save(tmp_path / "tok.json")
    bpe.main(["compare", str(tmp_path / "tok.json"), "gpt2", "--heldout", str(tmp_path / "corpus" / "b.jsonl"),
              "--show", "3afak sba7"])
    lines = capsys.readouterr().out.splitlines()
    n_bytes = sum(len(t.encode()) for t in CORPUS[3:6])
    n_tokens = sum(len(tok.encode_ordinary(t)) for t in CORPUS[3:6])
    assert lines[1].split()[-2:] == [f"{n_tokens:,}", f"{n_bytes / n_tokens:.2f}"]
    assert lines[2] == "  " + "|".join(tok.decode([i]) for i in tok.encode("3afak sba7")).replace(" ", "·")
    assert lines[3].startswith("gpt2") and lines[4] == "  3|af|ak|·s|ba|7"


def test_cli_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text field"}\n', encoding="utf-8")
    with pytest.raises(SystemExit, match=r"bad\.jsonl:2: not a JSON object with a 'text' field"):
        bpe.main(["compare", "gpt2", "--heldout", str(bad)])
    with pytest.raises(SystemExit, match=r"expected a \.txt or \.jsonl file or a folder"):
        bpe.main(["compare", "gpt2", "--heldout", str(tmp_path / "x.csv")])
    with pytest.raises(SystemExit, match="give --heldout FILE"):
        bpe.main(["compare", "gpt2"])
    with pytest.raises(SystemExit, match="cannot load tokenizer 'nope.json'"):
        bpe.main(["compare", "nope.json", "--show", "salam"])


@pytest.mark.slow
def test_darija_pattern_compresses_better_than_gpt4_on_shared_data():
    path = SHARED / "data" / "darija" / "pretrain" / "myc_comments.jsonl"  # both scripts, emoji
    if not path.exists():
        pytest.skip("../shared/data is absent")
    docs = list(bpe.read_documents([path]))
    train, held = docs[:15000], docs[15000:]
    n_bytes = sum(len(d.encode("utf-8")) for d in held)
    ratio = {}
    for pattern in ("darija", "gpt4"):
        enc = Tokenizer.train(train, 4096, pattern).to_tiktoken()
        ratio[pattern] = n_bytes / sum(map(len, enc.encode_ordinary_batch(held)))
    assert ratio["darija"] > ratio["gpt4"] > 3.0, ratio
