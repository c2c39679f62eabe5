"""Shared test set-up: the project root on sys.path, offline tiktoken, the shared data folder, and a local
stand-in for the Hugging Face hub (the `hub` fixture: point HF_ENDPOINT at hub.url)."""
import hashlib
import http.server
import json
import os
import re
import sys
import threading
import urllib.parse
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))

# tiktoken downloads its rank files unless they are cached; ../shared holds a cache for offline machines.
if (SHARED / "tiktoken_cache").is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken_cache"))


# --- the hub, as a local HTTP server ------------------------------------------------------------
COMMIT = "c0ffee" * 6 + "c0ff"  # 40 hex digits: the commit every fake dataset is at


class Hub(http.server.ThreadingHTTPServer):
    """A local stand-in for the hub, answering what huggingface_hub asks: a dataset's info
    (/api/datasets/R/revision/REV), its file tree (/api/datasets/R/tree/REV/FOLDER) and its files
    (/datasets/R/resolve/REV/PATH, HEAD then GET, with the ETag, X-Repo-Commit and Content-Length it checks),
    and errors with the hub's X-Error-Code header. datasets[R] = {path: bytes}; gated[R] = 401 or 403, the
    hub's answer for the files of a gated dataset; cut_short: file bodies stop halfway. routes[path] =
    (status, body) or a function(handler) answers a GET of that path instead."""
    daemon_threads = True

    def __init__(self):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(h):
                self.seen.append((h.path, h.headers))  # headers: case-insensitive
                route = self.routes.get(h.path)
                if callable(route):
                    return route(h)
                status, headers, body = (route[0], {}, route[1]) if route else self.hub_answer(h)
                if self.cut_short and "/resolve/" in h.path:  # the full Content-Length, half the body
                    headers, body = headers | {"Content-Length": str(len(body))}, body[:len(body) // 2]
                self.send(h, status, headers, body)

            def do_HEAD(h):
                self.seen.append((h.path, h.headers))  # headers: case-insensitive
                status, headers, body = self.hub_answer(h)
                self.send(h, status, headers | {"Content-Length": str(len(body))}, b"")

            def log_message(h, *a):
                pass
        super().__init__(("127.0.0.1", 0), Handler)
        self.routes, self.seen, self.datasets, self.gated, self.cut_short = {}, [], {}, {}, False
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def hub_answer(self, h):
        """(status, headers, body) for a request to the hub."""
        path = urllib.parse.unquote(urllib.parse.urlparse(h.path).path)
        api = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/(revision|tree)/([^/]+)/?(.*)", path)
        file = re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        repo = (api or file)[1] if api or file else None
        if repo not in self.datasets:  # like the hub: 401 without a token (it might be private), else 404
            return 404 if "Authorization" in h.headers else 401, {"X-Error-Code": "RepoNotFound"}, b"not found"
        files = self.datasets[repo]
        if api and api[2] == "revision":
            info = {"id": repo, "sha": COMMIT, "siblings": [{"rfilename": p} for p in files]}
            return 200, {}, json.dumps(info).encode()
        if api:  # the tree, recursive, of a folder
            under = [p for p in files if p.startswith(api[4] + "/" if api[4] else "")]
            tree = [{"type": "file", "path": p, "size": len(files[p]), "oid": hashlib.sha1(files[p]).hexdigest()}
                    for p in under]
            return (200, {}, json.dumps(tree).encode()) if under else (404, {"X-Error-Code": "EntryNotFound"}, b"")
        if repo in self.gated:
            return self.gated[repo], {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access to dataset "
                                      f"{repo} is restricted. You must have access to it."}, b"gated"
        if file[3] not in files:
            return 404, {"X-Error-Code": "EntryNotFound"}, b""
        body = files[file[3]]
        return 200, {"ETag": f'"{hashlib.sha256(body).hexdigest()}"', "X-Repo-Commit": COMMIT}, body

    @staticmethod
    def send(h, status, headers, body):
        h.send_response(status)
        for key, value in ({"Content-Length": str(len(body))} | headers).items():
            h.send_header(key, value)
        h.end_headers()
        h.wfile.write(body)


@pytest.fixture
def hub():
    server = Hub()
    yield server
    server.shutdown()
    server.server_close()


def sft_mixture_parquet(conversations):
    """A parquet file in the shape of MBZUAI-Paris/Darija-SFT-Mixture (its dataset card's columns: dataset, id,
    messages as a list of {content, role}, direction, metadata) holding these conversations."""
    import pyarrow as pa  # pyarrow is in requirements.txt
    import pyarrow.parquet as pq
    n = len(conversations)
    table = pa.table({"dataset": ["doda"] * n, "id": [f"doda-{i}" for i in range(n)],
                      "messages": [[{"content": m["content"], "role": m["role"]} for m in c] for c in conversations],
                      "direction": ["dr_en"] * n, "metadata": [None] * n})
    out = pa.BufferOutputStream()
    pq.write_table(table, out)
    return out.getvalue().to_pybytes()
