"""
chat.py: talk to your model in the terminal.

    python chat.py --ckpt out/darija_sft                  # multi-turn chat
    python chat.py                                        # the newest chat checkpoint under out/
    python chat.py --ckpt out/darija_small --adapter out/darija_lora/adapter.pt
    python chat.py --ckpt out/darija_sft --prompt "salam, kidayr?"   # one answer, then exit
    echo "salam" | python chat.py --ckpt out/darija_sft   # piped stdin: one turn per line

What happens, top to bottom, and why:
1. The checkpoint (any kind: base, sft, lora_merged) is loaded with its tokenizer, whose sha256
   must match the one recorded at training time: another tokenizer would silently turn the model's
   ids into the wrong text. A base plus a LoRA --adapter is merged once by `python lora.py
   --merge_adapter` (stages never import each other) into <adapter>.merged.pt, then reused.
2. The conversation is kept both as messages and as the token ids the model actually saw and
   produced, in bpe.py's chat format, ending with <|assistant|>. A new turn appends the rendering
   of just that turn to those ids (the answers are not re-encoded from their text: a sampled answer
   is often not the canonical BPE encoding of what it decodes to, and re-encoding it would change
   the context). The whole context is passed to model.generate on every turn, with one KV cache
   that lives for the whole session: generate keeps the common prefix of what the cache holds and
   the new context, so only the new turn is prefilled (the freeCodeCamp course this project
   reworks re-ran the whole history for every single token). The messages are rendered afresh
   only after /reset, /system or dropped turns. When the context would not leave room for an
   answer, the oldest turns are dropped (the system prompt stays) until half the room is free,
   with a notice: dropping changes the start of the context, so the cache is rebuilt, and halving
   makes that rare. A single over-long input is truncated.
3. Tokens are printed as they come through bpe.py's stream decoder, which holds back a UTF-8
   character split across byte-level tokens until it is whole (no U+FFFD in Arabic answers).
   An answer stops at <|end|> (or any special token), at --max_new_tokens, or on Ctrl-C.
4. A base checkpoint has never seen the chat format: it gets plain completion mode (each line is
   continued as text, no history), with a notice.
5. Interaction: readline line editing and history, /help /reset /system /speed /exit, Ctrl-C stops
   the answer (not the session), Ctrl-D exits. Answers go to stdout and notices to stderr, so
   `--prompt` and piped stdin give clean output for scripts. Any unexpected error ends the session
   with a message: it never loops on an exception.
"""
import argparse
import glob
import math
import os
import subprocess
import sys
import time

import torch

from model import ContextFullError, load_with_tokenizer, model_from_checkpoint, sha256_of

ROOT = os.path.dirname(os.path.abspath(__file__))
CHAT_KINDS = ("sft", "lora_merged")
HELP = """commands:
  /help         this help
  /reset        forget the conversation (the system prompt stays)
  /system TEXT  set the system prompt (/system alone removes it)
  /speed        show or hide tokens/s after each answer
  /exit         leave (Ctrl-D too)
Ctrl-C stops the current answer; the session goes on."""


def fail(msg):
    """One clear line and exit status 1: no traceback for a user's mistake."""
    raise SystemExit(f"chat.py: {msg}")


def note(msg):
    """Notices go to stderr so that stdout holds only the answers."""
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Chat with a darija-gpt checkpoint in the terminal.")
    p.add_argument("--ckpt", default="", help="checkpoint file or out/NAME folder (default: the newest "
                   "chat checkpoint under out/)")
    p.add_argument("--adapter", default="", help="a LoRA adapter.pt applied to --ckpt (its base)")
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    p.add_argument("--top_k", type=int, default=50, help="0 = off")
    p.add_argument("--top_p", type=float, default=0.95, help="1 = off")
    p.add_argument("--max_new_tokens", type=int, default=256, help="longest answer, in tokens")
    p.add_argument("--seed", type=int, default=None, help="for reproducible sampling")
    p.add_argument("--system", default="", help="system prompt")
    p.add_argument("--prompt", default=None, help="answer this one message and exit")
    p.add_argument("--show_speed", action="store_true", help="tokens/s and time to first token")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default; 1 is often "
                   "faster for a small model on a busy machine)")
    args = p.parse_args(argv)
    if not (0 <= args.temperature < math.inf and 0 < args.top_p <= 1):  # written so that nan fails too
        fail(f"need a finite --temperature >= 0 and 0 < --top_p <= 1 (got {args.temperature}, {args.top_p})")
    if args.max_new_tokens < 1 or args.top_k < 0 or args.threads < 0:
        fail("need --max_new_tokens >= 1, --top_k >= 0 and --threads >= 0 (0: torch's default)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        fail(f"--device={args.device}: no CUDA device here (use --device=cpu, or auto)")
    if args.device == "mps" and not torch.backends.mps.is_available():
        fail("--device=mps: no Apple GPU here (use --device=cpu, or auto)")
    return args


# --- 1. the checkpoint and its tokenizer ----------------------------------------------------------

def peek(path):
    """A checkpoint's or adapter's dict without reading its weights (mmap), or None for any other file."""
    try:
        found = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return found if isinstance(found, dict) else None
    except Exception:
        return None


def describe_out():
    """What is under out/, for error messages: 'out/a/ (best.pt, last.pt), out/b/ (adapter.pt)'."""
    dirs = sorted(d for d in glob.glob(os.path.join("out", "*")) if os.path.isdir(d))
    found = [f"{d}/ ({', '.join(sorted(os.path.basename(f) for f in glob.glob(os.path.join(d, '*.pt'))))})"
             for d in dirs if glob.glob(os.path.join(d, "*.pt"))]
    if not found:
        return "out/ holds no checkpoint yet: train one first (python pretrain.py config/darija_small.py, " \
               "then python sft.py config/sft_darija.py)"
    return "out/ holds: " + ", ".join(found)


def pick_checkpoint():
    """The path of the newest chat checkpoint under out/ (sft or lora_merged; last.pt only where
    there is no best.pt; not the adapter merges chat.py keeps), else of the newest base one."""
    paths = []
    for folder in glob.glob(os.path.join("out", "*")):
        pts = [p for p in glob.glob(os.path.join(folder, "*.pt")) if not p.endswith(("last.pt", ".merged.pt"))]
        paths += pts or glob.glob(os.path.join(folder, "last.pt"))
    found = []
    for path in paths:
        kind = (peek(path) or {}).get("kind")
        if kind in ("base", *CHAT_KINDS):
            found.append((os.path.getmtime(path), path, kind))
    if not found:
        fail(f"no --ckpt given and no checkpoint found. {describe_out()}")
    chat = [f for f in found if f[2] in CHAT_KINDS]
    _, path, kind = max(chat or found)
    note(f"no --ckpt given: using {path} ({kind}, the newest "
         f"{'chat' if chat else 'base (no chat checkpoint yet)'} checkpoint under out/)")
    return path


def with_adapter(adapter, base_path):
    """The checkpoint of the base with a LoRA adapter merged in, <adapter>.merged.pt: lora.py writes it
    (`--merge_adapter`; stages never import each other), and it is reused while the adapter and the
    base are still the files it was made from (it records their sha256)."""
    if not os.path.isfile(adapter):
        fail(f"no adapter at {adapter}. {describe_out()}")
    merged = os.path.splitext(adapter)[0] + ".merged.pt"
    made_from = (peek(merged) or {}).get("config", {}) if os.path.isfile(merged) else {}
    if made_from.get("adapter_sha256") != sha256_of(adapter) or made_from.get("base_sha256") != sha256_of(base_path):
        note(f"merging {adapter} into {base_path}: {merged}")
        lora = [sys.executable, os.path.join(ROOT, "lora.py"), f"--merge_adapter={adapter}", f"--init_from={base_path}"]
        if subprocess.run(lora, stdout=subprocess.DEVNULL).returncode:  # lora.py says why, on stderr
            fail(f"could not apply the adapter {adapter} to {base_path} (see above)")
    return merged


def load(args):
    """-> (model, tokenizer, chat_mode, path) with every way the files can be wrong caught."""
    if args.adapter and not args.ckpt:  # the base the adapter was trained on, as it recorded it
        args.ckpt = (peek(args.adapter) or {}).get("base")
        if not args.ckpt:
            fail(f"{args.adapter} is not a LoRA adapter file (lora.py writes them: out/NAME/adapter.pt)")
        note(f"no --ckpt given: using the adapter's base, {args.ckpt}")
    if args.ckpt:
        path = os.path.join(args.ckpt, "best.pt") if os.path.isdir(args.ckpt) else args.ckpt
        if not os.path.isfile(path):
            fail(f"no checkpoint at {path}. {describe_out()}")
    else:
        path = pick_checkpoint()
    if args.adapter:  # adapters are trained on the chat format
        path = with_adapter(args.adapter, path)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        ckpt, tok, tok_path = load_with_tokenizer(path, map_location=device)
        model = model_from_checkpoint(ckpt)
    except (ValueError, RuntimeError) as e:
        fail(f"cannot load {path}: {str(e).splitlines()[0]}")
    if tok.vocab_size > model.config.vocab_size:
        fail(f"{tok_path} has {tok.vocab_size} tokens but the model of {path} only {model.config.vocab_size}: "
             f"they do not belong together")
    chat_mode = ckpt["kind"] in CHAT_KINDS
    if chat_mode and not all(f"<|{r}|>" in tok.special_tokens for r in ("system", "user", "assistant", "end")):
        fail(f"{tok_path} has no chat tokens, so {path} cannot chat: rebuild the tokenizer with bpe.py's defaults")
    model.eval()
    return model, tok, chat_mode, path


# --- 2. fitting the conversation into the context -------------------------------------------------

def truncate_tokens(tok, text, limit):
    """The longest prefix of text that encodes to at most `limit` tokens (whole characters only)."""
    ids = tok.encode_ordinary(text)
    if len(ids) <= limit:
        return text
    text = tok.decode_bytes(ids[:limit]).decode("utf-8", errors="ignore")
    while text and len(tok.encode_ordinary(text)) > limit:  # re-encoding a cut text may add a token
        text = text[:-1]
    note(f"[input too long: kept its first {limit} of {len(ids)} tokens]")
    return text


class Session:
    """The conversation, the KV cache that lives across turns, and the settings of generation."""

    def __init__(self, model, tok, chat_mode, args):
        self.model, self.tok, self.chat_mode, self.args = model, tok, chat_mode, args
        self.block_size = model.config.block_size
        # room kept for the answer: max_new_tokens, but at most half the window (the rest is history)
        self.reserve = min(args.max_new_tokens, self.block_size // 2)
        self.cache = model.new_cache()
        self.system = ""
        self.messages = []
        self.ids = None  # the conversation's ids as the model saw them (None: render self.messages)
        self.show_speed = args.show_speed
        self.stop_ids = set(tok.special_tokens.values())  # <|end|>, <|endoftext|>, or a new turn
        self.set_system(args.system)

    def set_system(self, text):
        if text and self.chat_mode:
            n = len(self.tok.encode_ordinary(text))
            if n + 16 + self.reserve > self.block_size:  # 16: the framing and a short question
                raise ValueError(f"the system prompt takes {n} tokens: too long for a context of "
                                 f"{self.block_size} with {self.reserve} kept for the answer; shorten it")
        self.system = text
        self.messages = [message for message in self.messages if message["role"] != "system"]
        if text:
            self.messages.insert(0, {"role": "system", "content": text})
        self.ids = None  # the start of the context changed

    def reset(self):
        self.messages = self.messages[:1] if self.system else []
        self.ids = None
        self.cache.truncate(0)

    def input_limit(self):
        """Most tokens one message may have: the context minus the answer's room and the framing."""
        if not self.chat_mode:
            return self.block_size - self.reserve - 1  # after <|endoftext|>
        head = [{"role": "system", "content": self.system}] if self.system else []
        framing = len(self.tok.render_for_completion(head + [{"role": "user", "content": "x"}])) - 1
        return self.block_size - self.reserve - framing

    def context(self, text):
        """The token ids to continue for this input; drops the oldest turns when they do not fit."""
        text = truncate_tokens(self.tok, text, self.input_limit())
        if not self.chat_mode:  # completion: the line alone, as the start of a document
            return [self.tok.eot_id] + self.tok.encode_ordinary(text)
        sp = self.tok.special_tokens  # this turn exactly as render_for_completion renders it
        turn = [sp["<|user|>"]] + self.tok.encode_ordinary(text) + [sp["<|end|>"], sp["<|assistant|>"]]
        self.messages.append({"role": "user", "content": text})
        ids = self.ids + turn if self.ids is not None else self.tok.render_for_completion(self.messages)
        if len(ids) + self.reserve > self.block_size:
            # Forget the oldest exchanges until the history fills at most half of what is left for it:
            # a change at the start of the context invalidates the whole cache, so it is done rarely.
            first, dropped = (1 if self.system else 0), 0
            while len(ids) > (self.block_size - self.reserve) // 2 and len(self.messages) - first > 1:
                del self.messages[first:first + 2]  # the oldest user turn and its answer
                dropped += 1
                ids = self.tok.render_for_completion(self.messages)
            note(f"[context full ({self.block_size} tokens): forgot the oldest {dropped} "
                 f"exchange{'s' * (dropped > 1)}]")
        self.ids = ids[:-len(turn)]  # the conversation before this turn (kept if it gets no answer)
        return ids

    # --- 3. one streamed answer ---------------------------------------------------------------------

    def answer(self, text, out=None):
        """Generate, stream (to out, default stdout) and remember the answer to `text`; return its text.
        self.stats then holds its figures (what --show_speed prints)."""
        out = out or sys.stdout
        t0 = t_first = time.perf_counter()
        ids = self.context(text)
        cached = 0
        while cached < min(len(ids) - 1, len(self.cache.tokens)) and self.cache.tokens[cached] == ids[cached]:
            cached += 1  # what generate will keep from the cache: only the rest is prefilled
        a = self.args
        decoder, tokens, ended_by, n = self.tok.stream_decoder(), [], "", 0
        try:
            for t in self.model.generate(ids, min(a.max_new_tokens, self.block_size - len(ids)), a.temperature,
                                         a.top_k or None, a.top_p, self.stop_ids, self.cache):
                n += 1
                if n == 1:
                    t_first = time.perf_counter()  # time to first token: the template and the prefill
                if t in self.stop_ids:
                    break
                tokens.append(t)
                out.write(decoder.feed(t))
                out.flush()
            else:
                ended_by = "[answer cut: context full]" if len(ids) + len(tokens) >= self.block_size else ""
        except KeyboardInterrupt:
            ended_by = "[stopped]"
        decode_time = time.perf_counter() - t_first
        out.write(decoder.flush() + "\n")
        out.flush()
        if ended_by:
            note(ended_by)
        self.stats = dict(tokens=len(tokens), first_token_s=t_first - t0, prompt=len(ids), cached=cached,
                          tokens_per_s=(n - 1) / max(decode_time, 1e-9) if n > 1 else 0.0)
        if self.show_speed:
            st = self.stats
            note(f"[{st['tokens']} tokens, {st['tokens_per_s']:.1f} tokens/s, first token after "
                 f"{st['first_token_s'] * 1000:.0f} ms; prompt {len(ids)} tokens, {len(ids) - cached} prefilled, "
                 f"{cached} from the cache]")
        reply = self.tok.decode(tokens)
        if self.chat_mode:
            if reply:  # the ids as generated, not re-encoded from reply: the cache holds these
                self.messages.append({"role": "assistant", "content": reply})
                self.ids = ids + tokens + [self.tok.special_tokens["<|end|>"]]
            else:  # an empty message cannot be rendered: forget the unanswered turn
                self.messages.pop()
        return reply


# --- 4. the loop ------------------------------------------------------------------------------------

def command(session, line):
    """Run a /command; return False when the session should end."""
    name, _, rest = line.partition(" ")
    if name in ("/exit", "/quit"):
        return False
    if name == "/help":
        note(HELP)
    elif name == "/reset":
        session.reset()
        note("[new conversation]")
    elif name == "/system":
        try:
            session.set_system(rest.strip())
            note(f"[system prompt set: {rest.strip()}]" if rest.strip() else "[system prompt removed]")
        except ValueError as e:
            note(f"[{e}]")
    elif name == "/speed":
        session.show_speed = not session.show_speed
        note(f"[speed {'shown' if session.show_speed else 'hidden'}]")
    else:
        note(f"[unknown command {name}: /help lists them]")
    return True


def main(argv=None):
    args = parse_args(argv)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok, chat_mode, path = load(args)
    try:
        session = Session(model, tok, chat_mode, args)
    except ValueError as e:
        fail(str(e))
    if not chat_mode:
        note(f"{path} is a base model (not instruction-tuned): completion mode, each line is continued "
             f"as text, with no memory of earlier lines. Fine-tune it with sft.py or lora.py to chat.")
    if args.prompt is not None:
        if not args.prompt.strip():
            fail("--prompt is empty")
        session.answer(args.prompt)
        return
    interactive = sys.stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input(); absent on some systems)
        except ImportError:
            pass
        note(f"darija-gpt chat: {path} ({model.num_params() / 1e6:.1f}M parameters, context "
             f"{session.block_size} tokens). /help for commands, Ctrl-C stops an answer, Ctrl-D exits.")
    while True:
        try:
            line = input("> " if interactive else "").strip()
        except EOFError:
            if interactive:
                print()
            return
        except KeyboardInterrupt:
            if not interactive:
                raise SystemExit(130)
            print("\n(Ctrl-D or /exit to leave)", file=sys.stderr)
            continue
        if not line:
            continue
        if line.startswith("/"):
            if not command(session, line):
                return
            continue
        session.answer(line)


if __name__ == "__main__":
    for stream in (sys.stdin, sys.stdout, sys.stderr):  # UTF-8 both ways, whatever the locale
        stream.reconfigure(encoding="utf-8", errors="replace")
    try:
        main()
    except ContextFullError as e:  # guarded against above; a clear line if it happens anyway
        fail(str(e))
    except KeyboardInterrupt:  # Ctrl-C while loading
        raise SystemExit(130)
    except Exception as e:  # never a loop on an exception: say what happened and stop
        fail(f"unexpected error, stopping: {type(e).__name__}: {e}")
