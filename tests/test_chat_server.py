"""chat.py --serve (chat_server.py, chat.html), driven by real clients against real servers (about
25 s of CPU, the browser included; twice that in wall time on a busy 2-core machine):
- the official `openai` package: a non-streamed and a streamed greedy completion equal to
  `chat.py --prompt ... --temperature 0` (with a system prompt, and user text that spells
  <|assistant|>, which stays plain text: the prompt's token count says so);
- 8 concurrent streaming clients each get their own answer, equal to the one it got alone; every
  event is valid UTF-8 JSON; stop strings; a seeded sampled answer comes back the same;
- a client that drops its stream: its generation stops there, and the next request is served;
- every bad request gets its status and an OpenAI-style error, then the server answers as usual;
- --api_key (from the environment) on every route but /health and the page; the warning for 0.0.0.0;
- the page in headless Chromium (selenium): an Arabizi then an Arabic-script exchange stream in,
  bubbles take their text's direction (the Arabic answer computes to rtl), no U+FFFD, Shift+Enter,
  New chat; its screenshot is saved (CHAT_SCREENSHOT=docs/chat_page.png writes the README's); on
  the server with a key, the page asks for it, and Stop ends an endless answer on the server.
The model is made here: a tiny tokenizer and a one-layer GPT trained in about 6 s to answer Arabic
script with ANSWER_AR and Arabizi with ANSWER_LATIN, so nothing depends on the other stages."""
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

from bpe import Tokenizer
from conftest import ROOT
from model import GPT, GPTConfig, save_checkpoint

ANSWER_AR = "مرحبا بيك! كيفاش نقدر نعاونك؟"
ANSWER_LATIN = "mar7ba bik! kifach n3awnek?"
LATIN = "salam kidayr labas 3afak sba7 lkhir wach nta mzyan chno smitek fin ghadi bghit m3ak".split()
ARABIC = "سلام كيداير لاباس عافاك صباح الخير واش نتا مزيان شنو سميتك فين غادي بغيت معاك".split()
KEY = "sesame-123"
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def conversation(rng):
    messages = [{"role": "system", "content": " ".join(rng.choices(LATIN, k=4))}] if rng.random() < 0.3 else []
    for _ in range(rng.randint(1, 3)):
        arabic = rng.random() < 0.5
        question = " ".join(rng.choices(ARABIC if arabic else LATIN, k=rng.randint(1, 6)))
        messages += [{"role": "user", "content": question},
                     {"role": "assistant", "content": ANSWER_AR if arabic else ANSWER_LATIN}]
    return messages


def train_tiny(tok, steps=80, block_size=128):
    """A 1-layer GPT that answers Arabic script with ANSWER_AR and Arabizi with ANSWER_LATIN (greedy)."""
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


class Server:
    """`chat.py --serve` in a subprocess on a free port (--port 0: the one it says it took)."""

    def __init__(self, work, *args, env=ENV):
        self.log_path = work / f"server{len(list(work.glob('server*.log')))}.log"
        self.log = open(self.log_path, "w+", encoding="utf-8")
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "chat.py"), "--serve", "--port", "0", *args],
                                     cwd=work, env=env, stdout=self.log, stderr=self.log)

    def wait(self, timeout=120):
        deadline = time.time() + timeout
        while not (found := re.search(r"at http://[^:]+:(\d+)/", self.text)):
            assert self.proc.poll() is None and time.time() < deadline, self.text
            time.sleep(0.1)
        self.port = int(found.group(1))
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    @property
    def text(self):
        return self.log_path.read_text(encoding="utf-8")

    def request(self, method, path, body=None, headers=None):
        """-> (status, parsed JSON or text) of one request."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        conn.request(method, path, data, headers or {})
        response = conn.getresponse()
        raw = response.read().decode("utf-8")
        conn.close()
        is_json = response.getheader("Content-Type", "").startswith("application/json")
        return response.status, json.loads(raw) if is_json else raw

    def stream(self, body, headers=None):
        """A streamed completion -> (the answer's text, its events): each event checked as strict
        UTF-8 on its own (no character split between two)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.request("POST", "/v1/chat/completions", json.dumps({**body, "stream": True}).encode(), headers or {})
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Content-Type").startswith("text/event-stream")
        events = response.read().split(b"\n\n")
        conn.close()
        assert events[-2:] == [b"data: [DONE]", b""]
        chunks = [json.loads(e.decode("utf-8", errors="strict").removeprefix("data: ")) for e in events[:-2]]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        return text, chunks

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """out/chat (sft) and out/endless (the same, never ending an answer), and their tokenizer."""
    d = tmp_path_factory.mktemp("serve")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tok = Tokenizer.train([" ".join(LATIN), " ".join(ARABIC), ANSWER_AR, ANSWER_LATIN] * 5, 256 + 5 + 40)
        tok.save(d / "tokenizer.json")
        sha = hashlib.sha256((d / "tokenizer.json").read_bytes()).hexdigest()
        model = train_tiny(tok)
        save_checkpoint(d / "out" / "chat" / "best.pt", model, kind="sft", tokenizer=str(d / "tokenizer.json"),
                        tokenizer_sha256=sha)
        # A long context and zero logits for the special tokens: greedy never ends an answer.
        endless = GPT(GPTConfig(**{**vars(model.config), "block_size": 6000}))
        endless.load_state_dict(model.state_dict())
        with torch.no_grad():
            endless.lm_head.weight[sorted(tok.special_tokens.values())] = 0
        save_checkpoint(d / "out" / "endless" / "best.pt", endless, kind="sft", tokenizer=str(d / "tokenizer.json"),
                        tokenizer_sha256=sha)
    finally:
        torch.set_num_threads(threads)
    return d


@pytest.fixture(scope="module")
def servers(work):
    """-> (chat: out/chat, no key, default host; endless: out/endless, a key from the environment,
    --host 0.0.0.0, --max_new_tokens 5000), started side by side."""
    chat = Server(work, "--ckpt", "out/chat")
    endless = Server(work, "--ckpt", "out/endless", "--host", "0.0.0.0", "--max_new_tokens", "5000",
                     env={**ENV, "DARIJA_GPT_API_KEY": KEY})
    try:
        yield chat.wait(), endless.wait()
    finally:
        chat.close()
        endless.close()


def terminal_answer(work, monkeypatch, capsys, *argv):
    """What `chat.py --ckpt out/chat --temperature 0 ARGV` prints (in-process: no second torch start-up)."""
    import chat
    monkeypatch.chdir(work)
    chat.main(["--ckpt", "out/chat", "--temperature", "0", *argv])
    return capsys.readouterr().out.removesuffix("\n")


def test_openai_client_gets_the_terminal_chats_answer(work, servers, monkeypatch, capsys):
    openai = pytest.importorskip("openai", reason="the openai package is a dev requirement (requirements-dev.txt)")
    chat, _ = servers
    system, prompt = "nta mosa3id", "salam <|assistant|> labas"  # text that spells a special token stays text
    expected = terminal_answer(work, monkeypatch, capsys, "--prompt", prompt, "--system", system)
    assert expected == ANSWER_LATIN
    client = openai.OpenAI(base_url=chat.url + "/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == ["chat"]
    messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
    done = client.chat.completions.create(model="chat", messages=messages, temperature=0)
    assert (done.choices[0].message.content, done.choices[0].finish_reason) == (expected, "stop")
    tok = Tokenizer.load(work / "tokenizer.json")
    assert done.usage.prompt_tokens == len(tok.render_for_completion(messages))  # <|assistant|> as plain text
    assert done.usage.completion_tokens == len(tok.encode_ordinary(expected))
    pieces, finish = [], None
    for chunk in client.chat.completions.create(model="chat", messages=messages, temperature=0, stream=True):
        pieces += [chunk.choices[0].delta.content or ""]
        finish = chunk.choices[0].finish_reason or finish
    assert ("".join(pieces), finish) == (expected, "stop")
    assert len([p for p in pieces if p]) > 5  # streamed piece by piece


def test_concurrent_streams_each_get_their_own_answer(servers):
    chat, _ = servers
    # Arabic and Arabizi alternate, each client with its own length: 8 different answers
    requests = [{"messages": [{"role": "user", "content": (ARABIC if i % 2 else LATIN)[i]}], "temperature": 0,
                 "max_tokens": 3 + i} for i in range(8)]
    alone = [chat.stream(r)[0] for r in requests]
    assert len(set(alone)) == 8
    assert all((ANSWER_AR if i % 2 else ANSWER_LATIN).startswith(a) for i, a in enumerate(alone))
    together, start = [None] * 8, threading.Barrier(8)

    def client(i):
        start.wait()
        together[i] = chat.stream(requests[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [t for t, _ in together] == alone
    assert all(chunks[-1]["choices"][0]["finish_reason"] == "length" for _, chunks in together)
    # the whole answer streamed, then cut at a stop string (which is not sent); usage on request
    text, chunks = chat.stream({"messages": [{"role": "user", "content": "سلام"}], "temperature": 0,
                                "stop": ["نقدر", "x"], "stream_options": {"include_usage": True}})
    assert text == ANSWER_AR.split("نقدر")[0]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["usage"]["prompt_tokens"] > 0
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "salam"}]}], "temperature": 0}
    assert chat.request("POST", "/v1/chat/completions", parts)[1]["choices"][0]["message"]["content"] == ANSWER_LATIN
    seeded = {"messages": [{"role": "user", "content": "salam"}], "temperature": 2, "seed": 7, "max_tokens": 30}
    first, second = (chat.request("POST", "/v1/chat/completions", seeded)[1]["choices"][0]["message"]["content"]
                     for _ in range(2))
    assert first == second


def test_dropped_client_stops_its_generation_and_the_next_is_served(servers):
    _, endless = servers
    auth = {"Authorization": f"Bearer {KEY}"}
    body = json.dumps({"messages": [{"role": "user", "content": "salam"}], "temperature": 0, "max_tokens": 5000,
                       "stream": True}).encode()
    sock = socket.create_connection(("127.0.0.1", endless.port), timeout=60)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: " + str(len(body)).encode()
                 + b"\r\n\r\n" + body)
    received = b""
    while received.count(b"data: ") < 20:  # the answer is streaming
        received += sock.recv(4096)
    sock.close()
    status, done = endless.request("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "salam"}],
                                   "temperature": 0, "max_tokens": 5}, auth)
    assert status == 200 and done["choices"][0]["finish_reason"] == "length"
    assert ANSWER_LATIN.startswith(done["choices"][0]["message"]["content"])
    stopped = re.search(r"the client left; its answer stopped after (\d+) tokens", endless.text)
    assert stopped and int(stopped.group(1)) < 2000, endless.text  # of 5,000: it stopped when the client left


def test_api_key_and_open_host(servers):
    chat, endless = servers
    assert "WARNING: --host 0.0.0.0 lets other machines use this model" in endless.text
    assert "WARNING" not in chat.text
    ask = {"messages": [{"role": "user", "content": "salam"}], "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        for method, path, body in (("GET", "/v1/models", None), ("POST", "/v1/chat/completions", ask)):
            status, error = endless.request(method, path, body, headers)
            assert (status, error["error"]["code"]) == (401, "invalid_api_key")
    assert endless.request("GET", "/health") == (200, {"status": "ok"})
    assert endless.request("GET", "/")[0] == 200  # the page: it asks for the key when the API wants one
    auth = {"Authorization": f"Bearer {KEY}"}
    assert endless.request("GET", "/v1/models", headers=auth)[1]["data"][0]["id"] == "endless"
    assert endless.request("POST", "/v1/chat/completions", ask, auth)[0] == 200


def user(text):
    return {"messages": [{"role": "user", "content": text}]}


@pytest.mark.parametrize("body, status, says", [
    (b'{"messages": [', 400, "the body is not valid JSON"),
    (b"\xff\xfe", 400, "the body is not valid JSON"),
    (b"[" * 100_000, 400, "the body is not valid JSON: maximum recursion depth exceeded"),
    ([1, 2], 422, "the body must be a JSON object"),
    ({}, 422, "'messages' must be a non-empty list"),
    ({"messages": "salam"}, 422, "'messages' must be a non-empty list"),
    ({"messages": []}, 422, "'messages' must be a non-empty list"),
    ({"messages": [{"role": "robot", "content": "salam"}]}, 422, "messages[0].role must be one of system, user, "
                                                                 "assistant, got 'robot'"),
    ({"messages": ["salam"]}, 422, "messages[0].role must be one of"),
    ({"messages": [{"role": "user", "content": 5}]}, 422, "messages[0].content must be a string"),
    ({"messages": [{"role": "user", "content": ""}]}, 422, "message 0 (user): content must be a non-empty string"),
    ({"messages": [{"role": "assistant", "content": "salam"}]}, 422,
     "message 0: expected role 'user', got 'assistant'"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, 422,
     "message 1: expected role 'assistant', got 'user'"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}, 422,
     "message 1: a system message may only come first"),
    ({**user("salam"), "temperature": "hot"}, 422, "'temperature' must be a number from 0 to 2, got 'hot'"),
    ({**user("salam"), "temperature": -1}, 422, "'temperature' must be a number from 0 to 2"),
    ({**user("salam"), "top_p": 0}, 422, "'top_p' must be a number above 0 and at most 1"),
    ({**user("salam"), "max_tokens": 0}, 422, "'max_tokens' must be an integer >= 1, got 0"),
    ({**user("salam"), "max_tokens": -5}, 422, "'max_tokens' must be an integer >= 1, got -5"),
    ({**user("salam"), "max_tokens": 2.5}, 422, "'max_tokens' must be an integer >= 1"),
    ({**user("salam"), "max_tokens": True}, 422, "'max_tokens' must be an integer >= 1"),
    ({**user("salam"), "seed": "x"}, 422, "'seed' must be a 64-bit integer"),
    ({**user("salam"), "seed": 2 ** 64}, 422, "'seed' must be a 64-bit integer"),
    ({**user("salam"), "stream": "yes"}, 422, "'stream' must be true or false"),
    ({**user("salam"), "stop": 5}, 422, "'stop' must be a string or a list of up to 4 non-empty strings"),
    (user(" ".join(["salam"] * 300)), 400, "the last message takes 1500 tokens, but at most 60 fit in the context "
                                           "of 128 tokens with 64 kept for the answer"),
    ({**user(" ".join(["salam"] * 20)), "max_tokens": 32}, 400, "the last message takes 100 tokens, but at most 92 "
                                                                "fit in the context of 128 tokens with 32 kept"),
])
def test_bad_requests_get_their_status_and_the_server_goes_on(servers, body, status, says):
    chat, _ = servers
    for stream in (False, True):  # refused before anything is streamed
        sent = {"stream": stream, **body} if isinstance(body, dict) else body
        got, answer = chat.request("POST", "/v1/chat/completions", sent)
        assert got == status and says in answer["error"]["message"], answer
        assert answer["error"]["type"] == "invalid_request_error"
    assert chat.request("POST", "/v1/chat/completions", {**user("salam"), "temperature": 0})[1][
        "choices"][0]["message"]["content"] == ANSWER_LATIN


def test_unknown_routes_and_oversized_bodies(servers):
    chat, _ = servers
    for method, path in (("GET", "/v1/nope"), ("POST", "/v1/completions"), ("GET", "/v1/chat/completions")):
        status, answer = chat.request(method, path, b"{}" if method == "POST" else None)
        assert (status, answer["error"]["type"]) == (404, "not_found_error")
        assert answer["error"]["message"].startswith(f"no route {method} {path}")
    sock = socket.create_connection(("127.0.0.1", chat.port), timeout=30)  # announces 1 MB + 1 byte
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1048577\r\n\r\n")
    reply = b""
    while chunk := sock.recv(4096):
        reply += chunk
    sock.close()
    assert reply.startswith(b"HTTP/1.0 413 ")
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["message"] == \
        "the body has 1,048,577 bytes; at most 1,048,576 are accepted"
    assert chat.request("GET", "/health") == (200, {"status": "ok"})
    assert chat.request("POST", "/v1/chat/completions", {**user("سلام"), "temperature": 0})[1][
        "choices"][0]["message"]["content"] == ANSWER_AR


def browser():
    """A headless Chromium driven by selenium, or a reason to skip."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -r requirements-dev.txt)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("no chromium and chromedriver here (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=900,760",
                 "--force-device-scale-factor=1"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(driver))


@pytest.mark.slow  # a real browser: ~15 s, and its Stop races a fast server on a loaded machine
def test_page_in_a_browser_streams_and_gives_each_bubble_its_direction(servers, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait
    chat, endless = servers
    page = browser()
    try:
        page.get(chat.url + "/")
        WebDriverWait(page, 30).until(lambda p: p.find_element(By.ID, "model").text == "model: chat")
        page.find_element(By.ID, "toggle-settings").click()
        page.find_element(By.ID, "system").send_keys("nta mosa3id kayhder b darija")
        temperature = page.find_element(By.ID, "temperature")
        temperature.clear()
        temperature.send_keys("0")
        box = page.find_element(By.ID, "input")
        box.send_keys("salam", Keys.SHIFT, Keys.ENTER, Keys.SHIFT, "labas")  # Shift+Enter: a new line, nothing sent
        assert box.get_attribute("value") == "salam\nlabas" and not page.find_elements(By.CSS_SELECTOR, ".msg")
        box.clear()
        for i, text in enumerate(["salam kidayr", "سلام واش نتا مزيان"]):
            box.send_keys(text, Keys.ENTER)
            WebDriverWait(page, 60).until(lambda p: len(p.find_elements(By.CSS_SELECTOR, ".msg[data-done]")) == i + 1)
        bubbles = page.find_elements(By.CSS_SELECTOR, ".msg")
        assert [b.text for b in bubbles] == ["salam kidayr", ANSWER_LATIN, "سلام واش نتا مزيان", ANSWER_AR]
        directions = [page.execute_script("return getComputedStyle(arguments[0]).direction", b) for b in bubbles]
        assert directions == ["ltr", "ltr", "rtl", "rtl"]
        assert "\ufffd" not in page.find_element(By.TAG_NAME, "body").text
        page.save_screenshot(os.environ.get("CHAT_SCREENSHOT") or str(tmp_path / "chat_page.png"))
        page.find_element(By.ID, "new-chat").click()
        assert not page.find_elements(By.CSS_SELECTOR, ".msg")
        page.get(endless.url + "/")  # the key, then Stop
        page.find_element(By.ID, "toggle-settings").click()
        page.find_element(By.ID, "temperature").clear()
        page.find_element(By.ID, "temperature").send_keys("0")  # greedy: the answer never ends
        page.find_element(By.ID, "input").send_keys("salam", Keys.ENTER)
        alert = WebDriverWait(page, 30).until(expected_conditions.alert_is_present())
        alert.send_keys(KEY)
        alert.accept()
        answer = page.find_elements(By.CSS_SELECTOR, ".msg")[1]
        WebDriverWait(page, 60).until(lambda p: len(answer.text) > 40)  # streaming
        left_before = endless.text.count("the client left")  # earlier tests' dropped clients (if they ran)
        stop = page.find_element(By.ID, "send")
        assert stop.text == "Stop"
        page.execute_script("arguments[0].click()", stop)  # a click event in the page's own queue, not the OS's
        WebDriverWait(page, 30).until(lambda p: answer.get_attribute("data-done"))
        assert page.find_element(By.CSS_SELECTOR, ".meta").text == "stopped"
        assert answer.text.startswith(ANSWER_LATIN), answer.text
        WebDriverWait(page, 30).until(lambda p: p.find_element(By.ID, "model").text == "model: endless")  # fetched
        WebDriverWait(page, 30).until(lambda p: endless.text.count("the client left") == left_before + 1)
    finally:
        page.quit()


def test_engine_keeps_the_cache_across_requests_and_serves_base_models(work):
    """What --serve asks of chat.py's Session, in-process: a request that repeats the conversation
    and adds a turn prefills only the new part; a stream closed early is remembered; max_tokens is
    capped at --max_new_tokens; a base model continues the last message."""
    import chat
    from model import load_checkpoint, model_from_checkpoint
    tok = Tokenizer.load(work / "tokenizer.json")
    model = model_from_checkpoint(load_checkpoint(work / "out" / "chat"))
    session = chat.Session(model, tok, True, chat.parse_args(["--temperature", "0"]))
    first = [{"role": "user", "content": "salam kidayr"}]
    assert "".join(session.stream(session.take(first))) == ANSWER_LATIN
    second = first + [{"role": "assistant", "content": ANSWER_LATIN}, {"role": "user", "content": "سلام"}]
    assert "".join(session.stream(session.take(second))) == ANSWER_AR
    assert session.stats["prompt"] == len(tok.render_for_completion(second))
    assert session.stats["cached"] == len(tok.render_for_completion(first)) + len(tok.encode_ordinary(ANSWER_LATIN))
    pieces = session.stream(session.take(first))
    sent = next(pieces) + next(pieces)
    pieces.close()  # the client left: the answer so far is remembered, the figures filled in
    assert session.stats["finish"] == "stopped" and session.stats["tokens"] == 2
    assert session.messages[-1] == {"role": "assistant", "content": sent} and ANSWER_LATIN.startswith(sent)
    with pytest.raises(ValueError, match="the last message must have role 'user'"):
        session.take(second[:2])
    server = chat.make_server(session, chat.parse_args(["--max_new_tokens", "4", "--port", "0"]), "chat")
    try:  # the reply --serve hands chat_server: a request's max_tokens is capped at --max_new_tokens
        pieces, stats = server.reply(first, {"temperature": 0, "top_p": None, "max_tokens": 100, "seed": None})
        assert ANSWER_LATIN.startswith("".join(pieces)) and (stats["tokens"], stats["finish"]) == (4, "length")
    finally:
        server.server_close()
    base = chat.Session(model, tok, False, chat.parse_args(["--temperature", "0", "--max_new_tokens", "5"]))
    assert "".join(base.stream(base.take(second))) == "".join(base.stream(base.take(second[-1:])))
    assert base.stats["prompt"] == 1 + len(tok.encode_ordinary("سلام"))  # <|endoftext|> and the message alone
