"""
bench/chat.py: how fast chat.py answers on this machine, measured through chat.py's own Session
(tokenization, the chat template, streaming decode included), side by side with the alternatives.

    python bench/chat.py                           # out/darija_sft if it exists, else random weights
    python bench/chat.py --ckpt out/darija_sft     # a given checkpoint
    python bench/chat.py --threads 1               # bench/README.md's tables (one thread: see there why)

1. one answer: time to first token (the prefill) and decode tokens/s after a short prompt and after
   a long one, and decode tokens/s of the course's way (no KV cache: the whole context recomputed
   for every new token) at the long context.
2. a long multi-turn conversation (user turns from data/sample/sft, answers of a fixed length):
   the KV cache kept across turns (chat.py: only the new turn is prefilled) vs re-prefilling the
   whole history every turn (a fresh cache each turn), at the model's context and at a longer one.
3. chat.py --serve: time to first token and tokens/s as streaming HTTP clients see them, with 1
   and with 8 concurrent clients (served one after another: the 8th waits for the other 7).

Without a trained checkpoint the model is darija_small's shape (pretrain.py's and prepare.py's
defaults, which config/darija_small.py keeps) with random weights and a tokenizer of the same
vocabulary trained on data/sample in a second: speed does not depend on the weights. Answers are
forced to their full length (stop tokens ignored). chat.py keeps each answer as the ids generated,
so with the cache kept only the new turn is prefilled, until old turns are dropped.
"""
import argparse
import ast
import contextlib
import http.client
import json
import os
import sys
import threading
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import chat  # noqa: E402
from bpe import Tokenizer, read_documents  # noqa: E402
from model import GPT, GPTConfig, sample  # noqa: E402


class Mute:
    """stdout for the answers while timing: the figures are in session.stats."""

    def write(self, text):
        pass

    def flush(self):
        pass


def declared(path, names):
    """The `name = literal` settings among `names` that a script or config file assigns at top level."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    return {target.id: ast.literal_eval(statement.value) for statement in tree.body
            if isinstance(statement, ast.Assign) for target in statement.targets
            if isinstance(target, ast.Name) and target.id in names}


def random_model(block_size):
    """darija_small's shape with random weights and a tokenizer of its vocabulary."""
    keys = ("vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "mlp", "tie_embeddings")
    cfg = {}  # the defaults, then what the config file changes (config files hold only what differs)
    for path in ("prepare.py", "pretrain.py", os.path.join("config", "darija_small.py")):
        cfg.update(declared(path, keys))
    tok = Tokenizer.train(list(read_documents([os.path.join(ROOT, "data", "sample", "pretrain")])), cfg["vocab_size"])
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, **{k: cfg[k] for k in keys[1:]}))
    return model.eval(), tok


def session(model, tok, answer_tokens):
    s = chat.Session(model, tok, True, chat.parse_args(["--max_new_tokens", str(answer_tokens)]))
    s.stop_ids = set()  # fixed-length answers: every turn costs the same to generate
    return s


def timed_answer(s, text):
    """-> chat.py's figures for one answer: first_token_s, tokens_per_s, prompt, cached, tokens."""
    s.answer(text, out=Mute())
    return s.stats


def no_cache_rate(model, ids, n):
    """Decode tokens/s of the course's chat: the whole context through the model for every token."""
    ids = list(ids)
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([ids]))
            ids.append(sample(logits[0, -1].float(), 0.7, 50, 0.95))
    return n / (time.perf_counter() - t0)


def user_turns():
    with open(os.path.join(ROOT, "data", "sample", "sft", "conversations.jsonl"), encoding="utf-8") as f:
        return [m["content"] for line in f for m in json.loads(line)["messages"] if m["role"] == "user"]


def one_answer(model, tok, answer_tokens):
    turns = user_turns()
    budget = model.config.block_size - answer_tokens - 8  # the template's tokens fit in the rest
    long_text = tok.decode_bytes(tok.encode_ordinary(" ".join(turns))[:budget]).decode("utf-8", "ignore")
    rows = []
    for name, text in (("short prompt", turns[0]), ("long prompt", long_text)):
        s = session(model, tok, answer_tokens)
        best = []
        for _ in range(3):  # the best of 3: the machine is shared
            s.reset()
            best.append(timed_answer(s, text))
        rows.append((name, min(best, key=lambda st: st["first_token_s"])))
    ids = tok.render_for_completion([{"role": "user", "content": long_text}])
    course = no_cache_rate(model, ids, answer_tokens)
    print(f"\n1. one answer of {answer_tokens} tokens; {model.num_params() / 1e6:.1f}M parameters, context "
          f"{model.config.block_size}")
    print("| prompt | tokens | time to first token | decode tokens/s |")
    print("|---|---:|---:|---:|")
    for name, st in rows:
        print(f"| {name} | {st['prompt']} | {st['first_token_s'] * 1000:.0f} ms | {st['tokens_per_s']:.0f} |")
    print(f"| long prompt, no KV cache (the course's chat) | {len(ids)} | - | {course:.0f} |")
    print(f"decode with the KV cache at the long prompt: {rows[1][1]['tokens_per_s'] / course:.1f}x the course's")


def conversation(model, tok, answer_tokens, turns, keep_cache):
    """Play `turns` user turns -> (seconds, mean seconds to first token, tokens prefilled, longest context)."""
    s = session(model, tok, answer_tokens)
    texts = user_turns()
    t0, first, prefilled, longest = time.perf_counter(), 0.0, 0, 0
    for i in range(turns):
        if not keep_cache:
            s.cache.truncate(0)  # the whole history is prefilled again
        st = timed_answer(s, texts[i % len(texts)])
        first += st["first_token_s"]
        prefilled += st["prompt"] - st["cached"]
        longest = max(longest, st["prompt"] + st["tokens"])
    return time.perf_counter() - t0, first / turns, prefilled, longest


def multi_turn(model, tok, answer_tokens, turns):
    with contextlib.redirect_stderr(open(os.devnull, "w")):  # chat.py's "[context full ...]" notices
        kept = conversation(model, tok, answer_tokens, turns, True)
        again = conversation(model, tok, answer_tokens, turns, False)
    print(f"\n2. a conversation of {turns} turns, answers of {answer_tokens} tokens, context "
          f"{model.config.block_size} (up to {kept[3]} tokens; the oldest turns are dropped when it fills)")
    print("| strategy | total | mean time to first token | tokens prefilled |")
    print("|---|---:|---:|---:|")
    for name, (total, ttft, n, _) in (("cache kept across turns (chat.py)", kept),
                                      ("whole history re-prefilled every turn", again)):
        print(f"| {name} | {total:.1f} s | {ttft * 1000:.0f} ms | {n:,} |")
    print(f"kept cache: {again[0] / kept[0]:.2f}x faster in total, first token {again[1] / kept[1]:.2f}x sooner, "
          f"{again[2] / kept[2]:.1f}x fewer tokens prefilled")


def streamed(port, text, answer_tokens):
    """One streamed request to the server -> (seconds to the first text, seconds to the end, tokens)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    body = {"messages": [{"role": "user", "content": text}], "max_tokens": answer_tokens, "stream": True,
            "stream_options": {"include_usage": True}}
    conn.request("POST", "/v1/chat/completions", json.dumps(body))
    response, first, usage = conn.getresponse(), None, None
    for line in response:  # server-sent events: "data: {chunk}" lines
        if not line.startswith(b"data: {"):
            continue
        chunk = json.loads(line[6:])
        if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            first = time.perf_counter() - t0
        usage = chunk.get("usage") or usage
    conn.close()
    return first, time.perf_counter() - t0, usage["completion_tokens"]


def concurrent(port, texts, answer_tokens):
    """len(texts) clients at once -> (mean and slowest time to first text, mean tokens/s per stream,
    tokens/s of all the clients together)."""
    results = [None] * len(texts)

    def client(i):
        results[i] = streamed(port, texts[i], answer_tokens)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    firsts = [first for first, _, _ in results]
    per_stream = sum((n - 1) / (end - first) for first, end, n in results) / len(texts)
    return sum(firsts) / len(texts), max(firsts), per_stream, sum(n for *_, n in results) / wall


def served(model, tok, answer_tokens):
    """chat.py --serve's server on a free port in this process, its clients in threads (they only read
    sockets: the model has the CPU)."""
    s = session(model, tok, answer_tokens)
    server = chat.make_server(s, chat.parse_args(["--max_new_tokens", str(answer_tokens), "--port", "0"]), "bench")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port, texts = server.server_address[1], user_turns()
    with contextlib.redirect_stderr(open(os.devnull, "w")):  # the server's line per request
        streamed(port, texts[0], 4)  # warm-up
        rows = [(clients, concurrent(port, texts[:clients], answer_tokens)) for clients in (1, 8)]
    server.shutdown()
    server.server_close()
    print(f"\n3. chat.py --serve: streaming clients, answers of {answer_tokens} tokens, one request at a time")
    print("| concurrent clients | mean time to first token | slowest first token | tokens/s per stream | "
          "tokens/s, all clients |")
    print("|---:|---:|---:|---:|---:|")
    for clients, (mean, slowest, per_stream, total) in rows:
        print(f"| {clients} | {mean * 1000:.0f} ms | {slowest * 1000:.0f} ms | {per_stream:.0f} | {total:.0f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", default="", help="a chat checkpoint (default: out/darija_sft if present)")
    p.add_argument("--answer_tokens", type=int, default=32)
    p.add_argument("--turns", type=int, default=20)
    p.add_argument("--long_context", type=int, default=1024, help="second conversation's context (0: skip)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    ckpt = a.ckpt or ("out/darija_sft" if os.path.isfile(os.path.join("out", "darija_sft", "best.pt")) else "")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    if ckpt:
        model, tok, _, path = chat.load(chat.parse_args(["--ckpt", ckpt, "--device", "cpu"]))
        print(f"model: {path} (trained)")
    else:
        model, tok = random_model(256)
        print("model: no trained checkpoint (out/darija_sft): darija_small's shape with random weights")
    session(model, tok, 4).answer("salam", out=Mute())  # warm-up: first calls are slow
    one_answer(model, tok, a.answer_tokens)
    multi_turn(model, tok, a.answer_tokens, a.turns)
    if a.long_context:
        long_model = GPT(GPTConfig(**{**vars(model.config), "block_size": a.long_context}))
        long_model.load_state_dict(model.state_dict())
        multi_turn(long_model.eval(), tok, a.answer_tokens, a.turns)
    served(model, tok, a.answer_tokens)


if __name__ == "__main__":
    main()
