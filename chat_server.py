"""
chat_server.py: the HTTP side of `python chat.py --ckpt out/darija_sft --serve`. chat.py loads the
model and hands make_server its engine as one function, reply(messages, settings); this file knows
HTTP and the OpenAI chat API, and nothing of models (it imports nothing from chat.py).

    GET  /                     the web chat page, chat.html (self-contained: nothing fetched from outside)
    POST /v1/chat/completions  messages, temperature, top_p, max_tokens, stop, seed, stream
    GET  /v1/models            the one model served
    GET  /health               {"status": "ok"}, never behind the key

What happens, and why:
1. The standard library's ThreadingHTTPServer, not FastAPI + uvicorn: one model answers one request
   at a time anyway (a lock: concurrent requests wait their turn, never mixed), so an async framework
   would add two dependencies and buy nothing; a thread per connection lets waiting clients queue
   and lets /health answer during a long generation.
2. A request is read (at most 1 MB) and checked field by field before it waits for the model:
   400 when the body is not JSON or the prompt cannot fit in the context, 401 without the key,
   404 for an unknown route, 413 over 1 MB, 422 for JSON whose fields are wrong (types, ranges,
   empty or ill-ordered messages, an unknown role). Every error is OpenAI's {"error": {...}}, and
   the next request is served as usual.
3. The answer streams as server-sent events (`data: {chunk}` lines, then `data: [DONE]`), one per
   piece of text reply yields: whole characters only (no half Arabic letter), JSON in UTF-8.
   Stop strings are cut on the text, holding back what could be the start of one. Before each
   piece the socket is checked: a client that has gone (closed tab, Stop button, Ctrl-C) ends
   its generation at once, so the next request does not wait for an answer nobody reads.
4. --api_key: every route but /health (and the page itself, which holds nothing: it asks for the
   key when the API refuses it) needs `Authorization: Bearer KEY`.
"""
import hmac
import json
import os
import select
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1 << 20  # 1 MB: a long conversation is a few KB
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chat.html")
ROLES = ("system", "user", "assistant")


class ApiError(Exception):
    """A request refused: HTTP status, message and the parameter at fault, as OpenAI words them."""

    def __init__(self, status, message, param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


# --- 1. the server ---------------------------------------------------------------------------------

def make_server(reply, model_name, host="127.0.0.1", port=8000, api_key=""):
    """A ThreadingHTTPServer (not yet serving: call serve_forever) around chat.py's engine,
    reply(messages, settings) -> (the answer's text pieces as they come, stats), which raises
    ValueError for messages it refuses (or ApiError); stats holds prompt, tokens and finish once
    the pieces end."""
    server = ThreadingHTTPServer((host, port), Handler)
    server.reply, server.model_name, server.api_key = reply, model_name, api_key
    server.lock = threading.Lock()
    with open(PAGE, "rb") as f:
        server.page = f.read()
    return server


# --- 2. reading a request -------------------------------------------------------------------------

def setting(data, key, ok, wanted, integer=False):
    """data[key] if it is a number (an integer when asked) for which ok() holds, None when absent; else 422."""
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) or not ok(value):
        raise ApiError(422, f"'{key}' must be {wanted}, got {value!r}", key)
    return value


def text_of(content, i):
    """A message's content: a string, or OpenAI's list of parts [{"type": "text", "text": ...}]."""
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        content = "".join(str(p.get("text", "")) for p in content)
    if not isinstance(content, str):
        raise ApiError(422, f"messages[{i}].content must be a string", f"messages[{i}].content")
    return content


def parse_request(body):
    """The JSON body of /v1/chat/completions -> (messages, settings, stops, stream, include_usage)."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # RecursionError: nested too deep
        raise ApiError(400, f"the body is not valid JSON: {e}")
    if not isinstance(data, dict):
        raise ApiError(422, "the body must be a JSON object with 'messages'")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(422, "'messages' must be a non-empty list of {\"role\": ..., \"content\": ...}", "messages")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            role = message.get("role") if isinstance(message, dict) else message
            raise ApiError(422, f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}",
                           f"messages[{i}].role")
        checked.append({"role": message["role"], "content": text_of(message.get("content"), i)})
    stops = data.get("stop")
    stops = [stops] if isinstance(stops, str) else stops
    if stops is not None and (not isinstance(stops, list) or len(stops) > 4
                              or not all(isinstance(s, str) and s for s in stops)):
        raise ApiError(422, "'stop' must be a string or a list of up to 4 non-empty strings", "stop")
    stream = data.get("stream", False)
    options = data.get("stream_options") or {}
    if not isinstance(stream, bool) or not isinstance(options, dict):
        raise ApiError(422, "'stream' must be true or false, and 'stream_options' an object", "stream")
    tokens_key = "max_completion_tokens" if "max_completion_tokens" in data else "max_tokens"  # newer name first
    settings = dict(temperature=setting(data, "temperature", lambda v: 0 <= v <= 2, "a number from 0 to 2"),
                    top_p=setting(data, "top_p", lambda v: 0 < v <= 1, "a number above 0 and at most 1"),
                    max_tokens=setting(data, tokens_key, lambda v: v >= 1, "an integer >= 1", integer=True),
                    seed=setting(data, "seed", lambda v: -2 ** 63 <= v < 2 ** 64, "a 64-bit integer", integer=True))
    return checked, settings, stops or [], stream, bool(options.get("include_usage"))


def split_at_stop(text, stops):
    """-> (text to send now, text held back, whether a stop string was reached): the text before the
    first stop string, else all but a tail that could still grow into one."""
    found = [text.index(s) for s in stops if s in text]
    if found:
        return text[:min(found)], "", True
    hold = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return text[:len(text) - hold], text[len(text) - hold:], False


def client_gone(connection):
    """True when the client has closed its side: the socket reads as ready, with nothing to read."""
    try:
        return bool(select.select([connection], [], [], 0)[0]) and not connection.recv(1, socket.MSG_PEEK)
    except OSError:  # reset by the peer
        return True


# --- 3. answering -------------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    """One connection (HTTP/1.0: closed after its response, which also ends a stream)."""

    server_version = "darija-gpt"
    timeout = 120  # seconds a silent client may hold its connection (not the model: that is the lock)

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def route(self, method):
        try:
            path = self.path.split("?")[0]
            if path == "/health":
                return self.send_json(200, {"status": "ok"})
            if path in ("/", "/index.html") and method == "GET":
                return self.send_bytes(200, "text/html; charset=utf-8", self.server.page)
            key = self.server.api_key
            given = self.headers.get("Authorization", "")
            if key and not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
                raise ApiError(401, "missing or wrong API key: send the header `Authorization: Bearer KEY`",
                               code="invalid_api_key")
            if path == "/v1/models" and method == "GET":
                return self.send_json(200, {"object": "list", "data": [
                    {"id": self.server.model_name, "object": "model", "created": 0, "owned_by": "darija-gpt"}]})
            if path == "/v1/chat/completions" and method == "POST":
                return self.chat_completion()
            raise ApiError(404, f"no route {method} {path} (see GET /v1/models, POST /v1/chat/completions)",
                           code="unknown_url")
        except ApiError as e:
            self.send_error_json(e.status, e.message, e.param, e.code)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client left; nothing to answer
        except Exception as e:  # a bug: said on the console and to the client, and the server goes on
            print(f"chat_server: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            self.send_error_json(500, f"internal error: {type(e).__name__}: {e}", code="internal_error")

    def read_body(self):
        length = self.headers.get("Content-Length") or "0"
        if not length.isdigit():
            raise ApiError(400, f"Content-Length must be a number of bytes, got {length!r}")
        length = int(length)
        if length > MAX_BODY:  # refused unread: the connection closes after the answer
            raise ApiError(413, f"the body has {length:,} bytes; at most {MAX_BODY:,} are accepted")
        return self.rfile.read(length)

    def chat_completion(self):
        messages, settings, stops, stream, include_usage = parse_request(self.read_body())
        with self.server.lock:  # one generation at a time: the model and its cache are shared
            if client_gone(self.connection):  # left while waiting its turn
                return
            try:
                pieces, stats = self.server.reply(messages, settings)
            except ValueError as e:  # what the chat format refuses: ill-ordered, empty content
                raise ApiError(422, str(e), "messages")
            answer = Answer(self, stream, stops)
            answer.run(pieces)
        if answer.gone:
            print(f"chat_server: the client left; its answer stopped after {stats['tokens']} tokens",
                  file=sys.stderr, flush=True)
            return
        finish = "stop" if answer.stopped or stats["finish"] == "stop" else "length"
        usage = {"prompt_tokens": stats["prompt"], "completion_tokens": stats["tokens"],
                 "total_tokens": stats["prompt"] + stats["tokens"]}
        if stream:
            answer.send_chunk({}, finish)
            if include_usage:
                self.send_event({**answer.head("chat.completion.chunk"), "choices": [], "usage": usage})
            self.wfile.write(b"data: [DONE]\n\n")
        else:
            self.send_json(200, {**answer.head("chat.completion"), "usage": usage, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": answer.text}, "finish_reason": finish}]})

    # --- sending ---

    def send_bytes(self, status, content_type, data):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_json(self, status, obj):
        self.send_bytes(status, "application/json", json.dumps(obj, ensure_ascii=False).encode())

    def send_error_json(self, status, message, param=None, code=None):
        kind = {401: "authentication_error", 404: "not_found_error", 500: "server_error"}.get(
            status, "invalid_request_error")
        try:
            self.send_json(status, {"error": {"message": message, "type": kind, "param": param, "code": code}})
        except OSError:
            pass  # the client left

    def send_event(self, obj):
        self.wfile.write(b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n")
        self.wfile.flush()

    def log_message(self, format, *args):  # one line per request on stderr, without the date
        print(f"chat_server: {self.address_string()} {format % args}", file=sys.stderr, flush=True)


class Answer:
    """One answer on its way out: its text pieces, cut at stop strings, sent as events or kept for
    one JSON response; it ends early when the client goes."""

    def __init__(self, handler, stream, stops):
        self.handler, self.stream, self.stops = handler, stream, stops
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        self.text, self.held, self.stopped, self.gone = "", "", False, False

    def head(self, kind):
        return {"id": self.id, "object": kind, "created": self.created, "model": self.handler.server.model_name}

    def send_chunk(self, delta, finish=None):
        self.handler.send_event({**self.head("chat.completion.chunk"),
                                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    def run(self, pieces):
        try:
            if self.stream:
                self.handler.send_response(200)
                self.handler.send_header("Content-Type", "text/event-stream; charset=utf-8")
                self.handler.send_header("Cache-Control", "no-cache")
                self.handler.end_headers()
                self.send_chunk({"role": "assistant", "content": ""})
            for piece in pieces:
                if client_gone(self.handler.connection):
                    self.gone = True
                    break
                ready, self.held, self.stopped = split_at_stop(self.held + piece, self.stops)
                self.add(ready)
                if self.stopped:
                    break
            else:
                self.add(self.held)  # the end: what was held back was no stop string
        except OSError:  # a broken pipe, a reset, a write that timed out: the client is gone
            self.gone = True
        finally:
            pieces.close()  # ends the generation now, and lets the engine remember what it made

    def add(self, text):
        if text:
            self.text += text
            if self.stream:
                self.send_chunk({"content": text})
