"""chat.py, driven the way a user drives it (about 25 s on 2 CPU cores):
- under a pseudo-terminal: streamed answers with Arabic script, the cache reused on the second turn
  to the exact number of prefilled tokens, /help, /reset, empty lines, Ctrl-C at the prompt and in
  the middle of a 5,900-token answer, Ctrl-D;
- with piped stdin: six turns, the oldest exchanges dropped when the context fills, a 900-token
  line cut to what fits;
- --prompt (nothing but the answer on stdout), a base + LoRA adapter (merged through lora.py) and an
  adapter refused on another base, the newest chat checkpoint picked without --ckpt, the base-model
  notice, and every bad-input message;
- a next turn prefills only itself even when an answer's ids are not the canonical BPE encoding of
  its text (the ids are kept as generated).
The checkpoints are made here: a tiny tokenizer and a one-layer GPT trained in about 5 s to answer
every message with ANSWER ("mar7ba bik! مرحبا بيك": byte-level tokens split its Arabic characters),
so nothing depends on the other stages."""
import fcntl
import hashlib
import io
import os
import pty
import random
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest
import torch

from bpe import Tokenizer
from conftest import ROOT
from lora import add_lora, save_adapter
from model import GPT, GPTConfig, load_checkpoint, model_from_checkpoint, save_checkpoint, sha256_of

ANSWER = "mar7ba bik! مرحبا بيك"
WORDS = "salam kidayr labas 3afak sba7 lkhir wach nta mzyan chno smitek fin ghadi bghit m3ak شكرا سلام واش".split()
ENV = dict(os.environ, OMP_NUM_THREADS="1", TERM="dumb")  # one thread: tiny models, busy machine


def conversation(rng):
    msgs = []
    for _ in range(rng.randint(1, 3)):
        msgs += [{"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(1, 8)))},
                 {"role": "assistant", "content": ANSWER}]
    return msgs


def train_tiny(tok, steps=60, block_size=128):
    """A 1-layer GPT that learns to answer ANSWER to anything (greedy), in about 5 s on one core."""
    rng = random.Random(0)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=1, n_head=2, n_kv_head=2,
                          n_embd=64, tie_embeddings=False))
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for _ in range(steps):
        xs, ys = [], []
        for _ in range(8):
            ids, mask = (v[:block_size + 1] for v in tok.render_conversation(conversation(rng)))
            pad = block_size + 1 - len(ids)
            xs.append(ids[:-1] + [0] * pad)
            ys.append([t if m else -1 for t, m in zip(ids[1:], mask[1:])] + [-1] * pad)
        _, loss = model(torch.tensor(xs), torch.tensor(ys))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """out/chat (sft), out/base (base, same weights), out/endless (sft, never ends an answer)."""
    d = tmp_path_factory.mktemp("chat")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tok = Tokenizer.train([" ".join(WORDS), ANSWER] * 5, 256 + 5 + 30)
        tok_path = d / "tokenizer.json"
        tok.save(tok_path)
        sha = hashlib.sha256(tok_path.read_bytes()).hexdigest()
        model = train_tiny(tok)
        save = lambda name, m, kind: save_checkpoint(d / "out" / name / "best.pt", m, kind=kind,  # noqa: E731
                                                     tokenizer=str(tok_path), tokenizer_sha256=sha)
        save("base", model, "base")
        save("chat", model, "sft")
        # The same weights with a long context and zero logits for every special token: greedy
        # decoding then never picks one (some ordinary token always scores above 0), so the answer
        # runs for thousands of tokens: time enough to press Ctrl-C.
        endless = GPT(GPTConfig(**{**vars(model.config), "block_size": 6000}))
        endless.load_state_dict(model.state_dict())
        with torch.no_grad():
            endless.lm_head.weight[sorted(tok.special_tokens.values())] = 0
        save("endless", endless, "sft")
        add_lora(model, rank=2, alpha=4.0, targets=["c_q"])  # B = 0: an adapter that changes nothing, on out/base
        base = d / "out" / "base" / "best.pt"
        save_adapter(d / "out" / "lora" / "adapter.pt", model, base, sha256_of(base), 2, 4.0, ["c_q"])
    finally:
        torch.set_num_threads(threads)
    return d


def run(work, *args, stdin=""):
    return subprocess.run([sys.executable, str(ROOT / "chat.py"), *args], input=stdin, capture_output=True,
                          text=True, encoding="utf-8", cwd=work, env=ENV, timeout=120)


class Terminal:
    """chat.py on a pseudo-terminal that is its controlling terminal, so \\x03 is a real Ctrl-C."""

    def __init__(self, work, *args):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))

        def own_terminal():
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen([sys.executable, str(ROOT / "chat.py"), *args], stdin=slave, stdout=slave,
                                     stderr=slave, cwd=work, env=ENV, preexec_fn=own_terminal)
        os.close(slave)
        self.fd, self.raw, self.pos = master, b"", 0

    @property
    def text(self):
        """Everything shown so far, without terminal escapes and with \\n line ends."""
        text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]", "", self.raw.decode("utf-8", "replace"))
        return text.replace("\r\n", "\n").replace("\r", "")

    def read(self, timeout):
        if select.select([self.fd], [], [], timeout)[0]:
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                data = b""
            if not data:
                raise AssertionError(f"chat.py ended; it showed:\n{self.text}")
            self.raw += data

    def expect(self, wanted, timeout=60):
        """Wait until `wanted` appears after the previous match; return what came before it."""
        deadline = time.time() + timeout
        while wanted not in self.text[self.pos:]:
            if time.time() > deadline:
                raise AssertionError(f"no {wanted!r} within {timeout} s; chat.py showed:\n{self.text}")
            self.read(0.2)
        i = self.text.index(wanted, self.pos)
        before, self.pos = self.text[self.pos:i], i + len(wanted)
        return before

    def send(self, keys):
        os.write(self.fd, keys.encode())

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        os.close(self.fd)


def test_terminal_session_streams_reuses_the_cache_and_resets(work):
    tok = Tokenizer.load(work / "tokenizer.json")
    t = Terminal(work, "--ckpt", "out/chat", "--temperature", "0", "--show_speed")

    def ask(line):
        """Type a line at the prompt; return the streamed answer and the speed line after it."""
        t.expect("> ")
        t.send(line + "\r")
        t.expect(line + "\n")
        return t.expect("\n["), t.expect("]")

    try:
        t.expect("/help for commands")
        answer, speed = ask("salam kidayr")
        assert answer == ANSWER  # whole Arabic characters, no U+FFFD
        ids1 = tok.render_for_completion([{"role": "user", "content": "salam kidayr"}])
        assert f"prompt {len(ids1)} tokens, {len(ids1)} prefilled, 0 from the cache" in speed
        answer, speed = ask("wach nta mzyan")
        assert answer == ANSWER
        ids2 = tok.render_for_completion([{"role": "user", "content": "salam kidayr"},
                                          {"role": "assistant", "content": ANSWER},
                                          {"role": "user", "content": "wach nta mzyan"}])
        cached = len(ids1) + len(tok.encode_ordinary(ANSWER))  # the first turn and its answer
        # only the new turn is prefilled: <|end|> <|user|> wach nta mzyan <|end|> <|assistant|>
        assert f"prompt {len(ids2)} tokens, {len(ids2) - cached} prefilled, {cached} from the cache" in speed
        assert len(ids2) - cached == len(tok.encode_ordinary("wach nta mzyan")) + 4
        for line, shows in [("/help", "/reset        forget the conversation"), ("/reset", "[new conversation]"),
                            ("", None), ("   ", None), ("/nope", "[unknown command /nope: /help lists them]")]:
            t.expect("> ")
            t.send(line + "\r")
            if shows:  # an empty line shows nothing but the next prompt
                t.expect(shows)
        answer, speed = ask("salam kidayr")
        assert answer == ANSWER
        assert f"{len(ids1)} prefilled, 0 from the cache" in speed  # /reset emptied the cache
        t.expect("> ")
        t.send("\x04")  # Ctrl-D at the prompt
        assert t.proc.wait(timeout=30) == 0
        assert "\ufffd" not in t.text
        assert t.text.count(ANSWER) == 3  # nothing for the empty lines
    finally:
        t.close()


def test_ctrl_c_stops_the_answer_not_the_session(work):
    t = Terminal(work, "--ckpt", "out/endless", "--temperature", "0", "--max_new_tokens", "5900")
    try:
        t.expect("> ")
        for attempt in range(10):  # at the prompt: a hint, and the chat goes on
            t.send("\x03")  # (again if it came before readline waits for a key: Python sees it late)
            try:
                t.expect("(Ctrl-D or /exit to leave)", timeout=3)
                break
            except AssertionError:
                if attempt == 9:
                    raise
        t.expect("> ")
        t.send("salam\r")
        t.expect("salam\n")
        t0 = time.time()
        while len(t.text) - t.pos < 40:  # the answer is streaming
            t.read(0.1)
            assert time.time() - t0 < 60, t.text
        t.send("\x03")
        t.expect("[stopped]")  # only a KeyboardInterrupt prints this; the answer had ~5,900 tokens to go
        t.send("/help\r")
        t.expect("Ctrl-C stops the current answer")
        t.send("/exit\r")
        assert t.proc.wait(timeout=30) == 0
    finally:
        t.close()


def test_piped_stdin_drops_old_turns_and_truncates_long_input(work):
    lines = ["salam kidayr labas 3afak", "", "sba7 lkhir wach nta mzyan", "chno smitek fin ghadi",
             "bghit m3ak شكرا سلام", "   ", "labas 3afak wach", " ".join(["salam"] * 300)]
    r = run(work, "--ckpt", "out/chat", "--temperature", "0", "--max_new_tokens", "32",
            stdin="\n".join(lines) + "\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == (ANSWER + "\n") * 6  # one answer per non-empty line, nothing else on stdout
    assert "[context full (128 tokens): forgot the oldest 2 exchanges]" in r.stderr
    # 128 tokens of context - 32 kept for the answer - 4 for <|endoftext|><|user|> ... <|end|><|assistant|>
    assert "[input too long: kept its first 92 of 900 tokens]" in r.stderr


def test_prompt_answers_once_with_nothing_else_on_stdout(work):
    r = run(work, "--ckpt", "out/chat/best.pt", "--prompt", "salam", "--temperature", "0")
    assert (r.returncode, r.stdout, r.stderr) == (0, ANSWER + "\n", "")


def test_stream_writes_whole_characters_as_they_come(work):
    import chat
    args = chat.parse_args(["--temperature", "0"])
    model = model_from_checkpoint(load_checkpoint(work / "out" / "chat"))
    tok = Tokenizer.load(work / "tokenizer.json")
    session = chat.Session(model, tok, True, args)
    writes = []
    out = io.StringIO()
    out.write = writes.append
    assert session.answer("salam", out=out) == ANSWER
    pieces = [w for w in writes if w]
    assert "".join(pieces) == ANSWER + "\n"
    assert len(pieces) > 5 and all("\ufffd" not in p for p in pieces)
    assert [m["role"] for m in session.messages] == ["user", "assistant"]


def chat_main(monkeypatch, work, *argv):
    """chat.main in-process (fast) in `work`: -> its SystemExit message, or None."""
    import chat
    monkeypatch.chdir(work)
    try:
        chat.main(list(argv))
    except SystemExit as e:
        return str(e)


def test_picks_the_newest_chat_checkpoint_and_says_which(work, monkeypatch, capsys):
    now = time.time()
    for i, name in enumerate(["chat", "endless", "base"]):  # base newest, but it cannot chat
        os.utime(work / "out" / name / "best.pt", (now + i, now + i))
    assert chat_main(monkeypatch, work, "--prompt", "salam", "--max_new_tokens", "3") is None
    assert "no --ckpt given: using out/endless/best.pt (sft, the newest chat checkpoint under out/)" \
        in capsys.readouterr().err


def test_base_checkpoint_gets_completion_mode(work, monkeypatch, capsys):
    assert chat_main(monkeypatch, work, "--ckpt", "out/base", "--prompt", "salam", "--max_new_tokens", "4") is None
    assert "out/base/best.pt is a base model (not instruction-tuned): completion mode" in capsys.readouterr().err


def test_adapter_on_its_base_chats_and_on_another_base_is_refused(work, monkeypatch, capsys):
    adapter = ["--adapter", "out/lora/adapter.pt", "--prompt", "salam", "--temperature", "0"]
    assert chat_main(monkeypatch, work, "--ckpt", "out/base", *adapter) is None
    assert capsys.readouterr() == (ANSWER + "\n", "merging out/lora/adapter.pt into out/base/best.pt: "
                                                   "out/lora/adapter.merged.pt\n")  # chat mode: no other notice
    assert chat_main(monkeypatch, work, *adapter) is None  # no --ckpt: the base the adapter names
    base = work / "out" / "base" / "best.pt"
    assert capsys.readouterr() == (ANSWER + "\n", f"no --ckpt given: using the adapter's base, {base}\n")  # merged: reused
    # lora.py merges the adapter into the base once (stages never import each other); then it is reused
    assert load_checkpoint(work / "out/lora/adapter.merged.pt")["kind"] == "lora_merged"
    refused = run(work, "--ckpt", "out/chat", *adapter)
    assert refused.returncode == 1 and refused.stdout == ""
    assert "lora.py: adapter out/lora/adapter.pt was trained on base " in refused.stderr
    assert refused.stderr.strip().endswith("chat.py: could not apply the adapter out/lora/adapter.pt to "
                                           "out/chat/best.pt (see above)")
    assert chat_main(monkeypatch, work, "--ckpt", "out/base", "--adapter", "out/none.pt") == (
        "chat.py: no adapter at out/none.pt. out/ holds: out/base/ (best.pt), out/chat/ (best.pt), "
        "out/endless/ (best.pt), out/lora/ (adapter.merged.pt, adapter.pt)")


def test_bad_checkpoints_give_clear_messages(work, monkeypatch, tmp_path):
    msg = chat_main(monkeypatch, work, "--ckpt", "out/nope")
    assert msg.startswith("chat.py: no checkpoint at out/nope. out/ holds: out/base/ (best.pt), "
                          "out/chat/ (best.pt), out/endless/ (best.pt), out/lora/ (adapter")
    assert chat_main(monkeypatch, tmp_path).startswith("chat.py: no --ckpt given and no checkpoint found. "
                                                       "out/ holds no checkpoint yet: train one first")
    ckpt = load_checkpoint(work / "out" / "chat")
    model = model_from_checkpoint(ckpt)
    save_checkpoint(tmp_path / "gone.pt", model, kind="sft", tokenizer=str(tmp_path / "gone.json"))
    assert chat_main(monkeypatch, tmp_path, "--ckpt", "gone.pt") == (
        f"chat.py: cannot load gone.pt: gone.pt was trained with the tokenizer {tmp_path / 'gone.json'}, which "
        f"does not exist: run from the project root, or rebuild the data (python prepare.py config/NAME.py)")
    save_checkpoint(tmp_path / "other.pt", model, kind="sft", tokenizer=ckpt["tokenizer"], tokenizer_sha256="0" * 64)
    assert chat_main(monkeypatch, tmp_path, "--ckpt", "other.pt").startswith(
        f"chat.py: cannot load other.pt: {ckpt['tokenizer']} has changed since other.pt was trained (its sha256 differs")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert chat_main(monkeypatch, tmp_path, "--ckpt", "junk.pt").startswith(
        "chat.py: cannot load junk.pt: junk.pt is not a readable checkpoint")
    assert chat_main(monkeypatch, work, "--ckpt", "out/chat", "--prompt", "  ") == "chat.py: --prompt is empty"


def test_next_turn_prefills_only_itself_when_the_answer_is_not_canonical_bpe(monkeypatch):
    """A sampled answer is often not the canonical encoding of its text (here: "salam" as 5 single
    bytes). The next turn must continue the ids the model produced, which the cache holds, instead of
    re-encoding the answer's text: else the whole answer would be prefilled again."""
    import chat
    import model as model_py
    tok = Tokenizer.train([" ".join(WORDS), ANSWER] * 5, 256 + 5 + 30)
    end = tok.special_tokens["<|end|>"]
    as_bytes = list(b"salam")  # the trained tokenizer keeps byte ids 0-255 in byte order
    assert tok.decode(as_bytes) == "salam" and tok.encode_ordinary("salam") != as_bytes
    forced = iter(as_bytes + [end] + tok.encode_ordinary("labas") + [end])
    monkeypatch.setattr(model_py, "sample", lambda *a, **k: next(forced))  # generate's choice of token
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=1, n_head=2, n_kv_head=2, n_embd=32))
    session = chat.Session(gpt.eval(), tok, True, chat.parse_args(["--max_new_tokens", "16"]))
    out = io.StringIO()
    assert session.answer("salam kidayr", out=out) == "salam"
    ids1 = tok.render_for_completion([{"role": "user", "content": "salam kidayr"}])
    assert session.answer("wach nta mzyan", out=out) == "labas"
    turn = [tok.special_tokens["<|user|>"]] + tok.encode_ordinary("wach nta mzyan") + \
        [end, tok.special_tokens["<|assistant|>"]]
    cached = len(ids1) + len(as_bytes)  # the first turn and the answer's ids as generated (not its <|end|>)
    assert (session.stats["prompt"], session.stats["cached"]) == (cached + 1 + len(turn), cached)
    assert session.cache.tokens[:cached + 1 + len(turn)] == ids1 + as_bytes + [end] + turn
    assert [m["content"] for m in session.messages] == ["salam kidayr", "salam", "wach nta mzyan", "labas"]
    assert session.ids == ids1 + as_bytes + [end] + turn + tok.encode_ordinary("labas") + [end]
    session.reset()  # a new conversation is rendered from its messages again
    forced = iter([end])
    assert session.answer("salam kidayr", out=out) == "" and session.messages == [] and session.ids == ids1[:1]


@pytest.mark.parametrize("flags, message", [
    (["--temperature=nan"], "chat.py: need a finite --temperature >= 0 and 0 < --top_p <= 1 (got nan, 0.95)"),
    (["--temperature=inf"], "chat.py: need a finite --temperature >= 0 and 0 < --top_p <= 1 (got inf, 0.95)"),
    (["--top_p=0"], "chat.py: need a finite --temperature >= 0 and 0 < --top_p <= 1 (got 0.7, 0.0)"),
    (["--threads=-1"], "chat.py: need --max_new_tokens >= 1, --top_k >= 0 and --threads >= 0 (0: torch's default)"),
])
def test_bad_flags_are_one_line_errors(work, monkeypatch, flags, message):
    assert chat_main(monkeypatch, work, "--ckpt", "out/chat", "--prompt", "salam", *flags) == message


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_says_so(work):
    r = run(work, "--ckpt", "out/chat", "--prompt", "salam", "--device=cuda")
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr.strip() == "chat.py: --device=cuda: no CUDA device here (use --device=cpu, or auto)"
