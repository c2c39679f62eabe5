"""
chat.py: talk to your model in the terminal.

    python chat.py --ckpt out/darija_sft                  # multi-turn chat
    python chat.py                                        # the newest chat checkpoint under out/
    python chat.py --ckpt out/darija_small --adapter out/darija_lora/adapter.pt
    python chat.py --ckpt out/darija_sft --prompt "salam, kidayr?"   # one answer, then exit
    echo "salam" | python chat.py --ckpt out/darija_sft   # piped stdin: one turn per line
    python chat.py --ckpt out/darija_sft --serve          # web chat page and OpenAI-style API

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
6. --serve puts the same engine behind HTTP: chat_server.py (imported only then; it imports nothing
   from here) serves the web page chat.html and an OpenAI-compatible API on 127.0.0.1. chat.py
   hands it `reply`: each request's messages become the session's conversation (Session.take) and
   its answer streams out of Session.stream, one request at a time, the KV cache kept across
   requests (a conversation that grows by a turn prefills only that turn's new part).
"""
import argparse
import contextlib
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
    p.add_argument("--serve", action="store_true", help="serve the web chat page and an OpenAI-compatible API")
    p.add_argument("--host", default="127.0.0.1", help="--serve: the address to listen on (0.0.0.0: every network)")
    p.add_argument("--port", type=int, default=8000, help="--serve: the port (0: any free one)")
    p.add_argument("--api_key", default=os.environ.get("DARIJA_GPT_API_KEY", ""), help="--serve: require "
                   "`Authorization: Bearer KEY` (default: $DARIJA_GPT_API_KEY; none: no key needed)")
    args = p.parse_args(argv)
    if not (0 <= args.temperature < math.inf and 0 < args.top_p <= 1):  # written so that nan fails too
        fail(f"need a finite --temperature >= 0 and 0 < --top_p <= 1 (got {args.temperature}, {args.top_p})")
    if args.max_new_tokens < 1 or args.top_k < 0 or args.threads < 0:
        fail("need --max_new_tokens >= 1, --top_k >= 0 and --threads >= 0 (0: torch's default)")
    if args.serve and args.prompt is not None:
        fail("--serve and --prompt do not go together: --serve answers over HTTP")
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
        self.cache = model.new_cache()
        self.system = ""
        self.messages = []
        self.ids = None  # the conversation's ids as the model saw them (None: render self.messages)
        self.show_speed = args.show_speed
        self.stats = {}  # the figures of the last answer (filled when it ends)
        self.stop_ids = set(tok.special_tokens.values())  # <|end|>, <|endoftext|>, or a new turn
        self.set_system(args.system)

    @property
    def reserve(self):
        """Room kept for the answer: max_new_tokens, but at most half the window (the rest is history)."""
        return min(self.args.max_new_tokens, self.block_size // 2)

    def set_system(self, text):
        if text and self.chat_mode:
            n = len(self.tok.encode_ordinary(text))
            if n + 16 + self.reserve > self.block_size:  # 16: the framing and a short question
                raise ContextFullError(f"the system prompt takes {n} tokens: too long for a context of "
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

    def take(self, messages):
        """Make a whole conversation ([system], user, assistant, ..., user: an API request's) this
        session's, its last message the new turn; -> that message's text, for stream(). ValueError
        says what is wrong with the messages, ContextFullError that the last one alone does not fit
        (the history is trimmed as in the terminal). The cache is kept: what it holds of the new
        context's start is not prefilled again."""
        if self.chat_mode:
            self.tok.render_for_completion(messages)  # ValueError: ill-ordered, empty, unknown role
        elif not messages or messages[-1].get("role") != "user":
            raise ValueError("the last message must have role 'user'")
        self.set_system(messages[0]["content"] if messages[0]["role"] == "system" else "")
        self.messages = list(messages[:-1]) if self.chat_mode else []
        text = messages[-1]["content"]
        n, limit = len(self.tok.encode_ordinary(text)), self.input_limit()
        if n > limit:
            raise ContextFullError(f"the last message takes {n} tokens, but at most {limit} fit in the context of "
                                   f"{self.block_size} tokens with {self.reserve} kept for the answer")
        return text

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

    def stream(self, text):
        """Generate the answer to `text`, yielding its text as it comes: bpe.py's stream decoder holds
        back a character split across tokens until it is whole. However the stream ends (its end,
        closed by the caller, Ctrl-C), the answer so far is remembered and self.stats holds its
        figures, with `finish`: stop (a stop token), length, context full, or stopped."""
        t0 = t_first = time.perf_counter()
        ids = self.context(text)
        cached = 0
        while cached < min(len(ids) - 1, len(self.cache.tokens)) and self.cache.tokens[cached] == ids[cached]:
            cached += 1  # what generate will keep from the cache: only the rest is prefilled
        a = self.args
        decoder, tokens, n, finish = self.tok.stream_decoder(), [], 0, "stopped"
        try:
            for t in self.model.generate(ids, min(a.max_new_tokens, self.block_size - len(ids)), a.temperature,
                                         a.top_k or None, a.top_p, self.stop_ids, self.cache):
                n += 1
                if n == 1:
                    t_first = time.perf_counter()  # time to first token: the template and the prefill
                if t in self.stop_ids:
                    finish = "stop"
                    break
                tokens.append(t)
                piece = decoder.feed(t)
                if piece:
                    yield piece
            else:  # an answer cut inside a character ends before it (no U+FFFD): decoder.flush() is not asked
                finish = "context full" if len(ids) + len(tokens) >= self.block_size else "length"
        finally:
            decode_time = time.perf_counter() - t_first
            self.stats.update(tokens=len(tokens), first_token_s=t_first - t0, prompt=len(ids), cached=cached,
                              tokens_per_s=(n - 1) / max(decode_time, 1e-9) if n > 1 else 0.0, finish=finish)
            reply = self.tok.decode(tokens)
            if self.chat_mode:
                if reply:  # the ids as generated, not re-encoded from reply: the cache holds these
                    self.messages.append({"role": "assistant", "content": reply})
                    self.ids = ids + tokens + [self.tok.special_tokens["<|end|>"]]
                else:  # an empty message cannot be rendered: forget the unanswered turn
                    self.messages.pop()

    def answer(self, text, out=None):
        """Stream the answer to `text` to out (default stdout) and return its text; Ctrl-C stops it."""
        out, written = out or sys.stdout, []
        with contextlib.closing(self.stream(text)) as pieces:
            try:
                for piece in pieces:
                    written.append(piece)
                    out.write(piece)
                    out.flush()
            except KeyboardInterrupt:
                pass  # the answer so far is kept: stats' finish is "stopped"
        out.write("\n")
        out.flush()
        ended_by = {"stopped": "[stopped]", "context full": "[answer cut: context full]"}.get(self.stats["finish"])
        if ended_by:
            note(ended_by)
        if self.show_speed:
            st = self.stats
            note(f"[{st['tokens']} tokens, {st['tokens_per_s']:.1f} tokens/s, first token after "
                 f"{st['first_token_s'] * 1000:.0f} ms; prompt {st['prompt']} tokens, {st['prompt'] - st['cached']} "
                 f"prefilled, {st['cached']} from the cache]")
        return "".join(written)


# --- 4. --serve ----------------------------------------------------------------------------------

def make_server(session, args, name):
    """chat_server.py's HTTP server (not yet serving) around this session, named `name` in the API."""
    import chat_server  # only --serve needs it; it imports nothing from here (chat.py hands it reply)
    defaults = vars(args).copy()

    def reply(messages, settings):
        """One request (chat_server holds a lock: one at a time) -> (the answer's text pieces as they
        come, session.stats: its figures once they end). settings: temperature, top_p, max_tokens
        (capped at --max_new_tokens) and seed, each None for the command line's."""
        chosen = {key: value for key, value in settings.items() if value is not None}
        session.args = argparse.Namespace(**{**defaults, **chosen})
        session.args.max_new_tokens = min(chosen.get("max_tokens", args.max_new_tokens), args.max_new_tokens)
        if chosen.get("seed") is not None:
            torch.manual_seed(chosen["seed"])
        try:
            text = session.take(messages)  # before anything is sent: errors get their own status
        except ContextFullError as e:
            raise chat_server.ApiError(400, str(e), "messages", "context_length_exceeded")
        return session.stream(text), session.stats

    return chat_server.make_server(reply, name, args.host, args.port, args.api_key)


def serve(session, args, path):
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        note(f"WARNING: --host {args.host} lets other machines use this model{'' if args.api_key else ', with no key'}")
    try:
        server = make_server(session, args, os.path.basename(os.path.dirname(os.path.abspath(path))))
    except OSError as e:
        fail(f"cannot listen on {args.host}:{args.port}: {e.strerror or e} (try another --port)")
    note(f"darija-gpt: serving {path} at http://{args.host}:{server.server_address[1]}/ (the chat page; "
         f"the API under /v1). Ctrl-C stops.")
    with contextlib.suppress(KeyboardInterrupt), server:
        server.serve_forever()


# --- 5. the loop ------------------------------------------------------------------------------------

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
    if args.serve:
        return serve(session, args, path)
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
