"""prepare.py: cleaning rules, dedup, the split, .bin round trips, meta.json, the hub path (against a local
HTTP server), the offline fallback, and a clear error for each kind of bad input."""
import gzip
import hashlib
import importlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

from bpe import Tokenizer

OFFLINE = "http://127.0.0.1:9"  # nothing listens there: connection refused at once


@pytest.fixture(scope="module")
def P():
    """prepare.py imported as a module, with its default settings (no command line)."""
    argv, sys.argv = sys.argv, ["prepare.py"]
    try:
        return importlib.import_module("prepare")
    finally:
        sys.argv = argv


def isolated(cwd, env=None):
    """The environment for prepare.py in cwd: the Hugging Face cache in cwd/hf_home/, never ~/.cache, and the
    user's HF_* settings (token, cache, endpoint) left out."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))} | \
        {"HF_ENDPOINT": OFFLINE, "HF_HOME": str(Path(cwd) / "hf_home")} | (env or {})


def run(cwd, *args, env=None, ok=True):
    """Run prepare.py in cwd (outputs go to cwd/data/); assert success or failure."""
    r = subprocess.run([sys.executable, str(ROOT / "prepare.py"), *args], cwd=cwd, env=isolated(cwd, env),
                       capture_output=True, text=True, timeout=120)
    assert (r.returncode == 0) == ok, r.stdout + r.stderr
    return r


def src(**kw):
    return "--sources=" + repr([kw])


def read_bin(out, split):
    meta = json.loads((out / "meta.json").read_text())
    ids = np.fromfile(out / f"{split}.bin", dtype=meta["dtype"])
    tok = Tokenizer.load(out / "tokenizer.json")
    cuts = list(np.flatnonzero(ids == meta["eot_id"])) + [len(ids)]
    assert cuts[0] == 0, "every document starts with <|endoftext|>"
    return [tok.decode(ids[a + 1:b].tolist()) for a, b in zip(cuts, cuts[1:])], ids, meta


# --- cleaning, one rule at a time ---------------------------------------------------------------

def test_each_cleaning_rule_and_its_count(P):
    r = Counter()
    assert P.clean("ﻻ ﺑﺎﺱ", r) == "لا باس" and r["nfkc_docs"] == 1  # presentation forms fold
    assert P.clean("مـــزيان", r) == "مزيان" and r["tatweel_chars"] == 3
    assert P.clean("\ufeffsa\u200blam \u202bwa\u200f", r) == "salam wa" and r["invisible_chars"] == 4
    assert P.clean("a\r\nb\rc", r) == "a\nb\nc" and r["newlines_docs"] == 1
    assert P.clean("  salam \t  3lik\u00a0kh\n\n\n\n ok  ", r) == "salam 3lik kh\n\nok"
    assert P.clean("شُكْرًا", r) == "شُكْرًا"  # diacritics are kept by default
    assert P.clean("chof https://x.ma/a?b=1 w www.goud.ma, kteb l a.b@c.ma wla @sara_9", r) == "chof w , kteb l wla"
    assert r["urls_docs"] == 1
    assert P.clean("!!! 😂😂 ... 123", r) is None and r["dropped_no_letters"] == 1
    assert P.clean("ok", r) is None and r["dropped_too_short"] == 1  # min_doc_chars = 3


def test_cleaning_steps_switch_off(P, monkeypatch):
    for name in ("nfkc", "strip_tatweel", "strip_invisible", "drop_urls"):
        monkeypatch.setattr(P, name, False)
    monkeypatch.setattr(P, "strip_diacritics", True)
    monkeypatch.setattr(P, "max_doc_chars", 15)
    r = Counter()
    assert P.clean("ﻻ مـزيان\u200b @x", r) == "ﻻ مـزيان\u200b @x"
    assert P.clean("شُكْرًا", r) == "شكرا" and r["diacritics_chars"] == 3
    assert P.clean("salam labas 3lik", r) is None and r["dropped_too_long"] == 1


def test_split_hash_is_seeded_uniform_and_stable(P, monkeypatch):
    h = np.arange(1, 100_001, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    pick = P.in_random_fraction
    v = pick(h, 0, 0.1)
    assert abs(v.mean() - 0.1) < 0.005 and pick(h, 0, 1.0).all() and not pick(h, 0, 0.0).any()
    assert np.array_equal(v, pick(h, 0, 0.1)) and not np.array_equal(v, pick(h, 1, 0.1))
    assert (pick(h, 0, 0.05) <= v).all()  # a smaller fraction picks a subset
    monkeypatch.setattr(P, "seed", 7)
    assert not np.array_equal(v, pick(h, 0, 0.1))


def test_val_split_grows_to_val_min_bytes_on_a_small_corpus(P, monkeypatch):
    """A large corpus: exactly the random val_fraction. A small one: that fraction and the next documents in the
    same random order, until val_min_bytes (a quarter of the text at most); one document at least on each side."""
    h = np.arange(1, 10_001, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    lengths, keep = np.full(10_000, 100), np.ones(10_000, dtype=bool)
    keep[::7] = False
    fraction = keep & P.in_random_fraction(h, 0, 0.02)
    monkeypatch.setattr(P, "val_fraction", 0.02)
    monkeypatch.setattr(P, "val_min_bytes", 10_000)  # < the fraction's ~17 kB: the fraction alone
    assert np.array_equal(P.val_split(lengths, h, keep), fraction)
    monkeypatch.setattr(P, "val_min_bytes", 50_000)
    val = P.val_split(lengths, h, keep)
    assert val.sum() == 500 and not (val & ~keep).any() and (val >= fraction).all()  # a superset, of kept ones
    monkeypatch.setattr(P, "val_min_bytes", 10**9)  # a quarter of the text at most
    assert P.val_split(lengths, h, keep).sum() == keep.sum() // 4
    lengths[np.flatnonzero(keep)[-1]] = 10**6  # one document is most of the text: a quarter of the documents
    assert P.val_split(lengths, h, keep).sum() <= keep.sum() // 4
    two = np.zeros(10_000, dtype=bool)
    two[[3, 5]] = True
    assert P.val_split(lengths, h, two).sum() == 1  # two documents: one each side


# --- the whole stage on local files --------------------------------------------------------------

DOCS = [f"salam {i}: wach nta mzyan a khoya {i * 7}? ana ghadi l dar daba" for i in range(120)] + \
       [f"السلام {i} عليكم، كيداير؟ لاباس الحمد لله، شنو الأخبار {i}" for i in range(120)]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One corpus in four formats, with duplicates across files, prepared once."""
    d = tmp_path_factory.mktemp("corpus")
    (d / "c").mkdir()
    with open(d / "c/a.jsonl", "w") as f:
        for t in DOCS[:100]:
            f.write(json.dumps({"text": t, "source": "x"}, ensure_ascii=False) + "\n")
    with gzip.open(d / "c/b.jsonl.gz", "wt") as f:
        for t in DOCS[100:160] + DOCS[:5]:  # 5 exact duplicates of a.jsonl
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    (d / "c/c.txt").write_text("\n\n".join(DOCS[160:200] + [DOCS[160].upper() + " !!"]) + "\n")  # 1 near-exact
    with open(d / "c/d.csv", "w") as f:
        f.write("id,text\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(DOCS[200:])))
    args = [src(path="c", txt_docs="block"), "--vocab_size=400", "--val_fraction=0.1"]
    r = run(d, "--dataset=t", *args)
    return d, args, r


def test_bin_decodes_back_to_the_cleaned_documents(built, P):
    d, _, r = built
    train, ids, meta = read_bin(d / "data/t", "train")
    val, vids, _ = read_bin(d / "data/t", "val")
    assert sorted(train + val) == sorted(P.clean(t, Counter()) for t in DOCS)  # every doc once, exact
    assert not set(train) & set(val) and len(val) > 5  # disjoint, by document
    assert meta["cleaning"]["dropped_duplicate"] == 6
    assert (meta["train"]["docs"], meta["val"]["docs"]) == (len(train), len(val))
    assert meta["train"]["tokens"] == len(ids) and meta["val"]["tokens"] == len(vids)
    assert meta["train"]["bytes"] == sum(len(t.encode()) for t in train)
    assert meta["val"]["bytes"] == sum(len(t.encode()) for t in val)
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 400
    assert meta["tokenizer"] == os.path.join("data", "t", "tokenizer.json")
    assert meta["tokenizer_sha256"] == hashlib.sha256((d / "data/t/tokenizer.json").read_bytes()).hexdigest()
    s = meta["sources"][0]
    assert s["docs_read"] == 246 and s["docs_kept"] == 240
    assert not (d / "data/t.partial").exists() and "wrote data/t/" in r.stdout
    assert "reading and cleaning: " in r.stdout and "chars/s]" in r.stdout and "B/s]" in r.stdout  # rates, on stdout


def test_split_is_deterministic_and_seeded(built):
    d, args, _ = built
    run(d, "--dataset=t2", *args, "--tokenizer=data/t/tokenizer.json")
    run(d, "--dataset=t3", *args, "--tokenizer=data/t/tokenizer.json", "--seed=1")
    same = (d / "data/t/val.bin").read_bytes() == (d / "data/t2/val.bin").read_bytes()
    assert same and (d / "data/t/train.bin").read_bytes() == (d / "data/t2/train.bin").read_bytes()
    assert (d / "data/t/val.bin").read_bytes() != (d / "data/t3/val.bin").read_bytes()


def test_rerun_reuses_refuses_then_force_rebuilds(built):
    d, args, _ = built
    before = (d / "data/t/meta.json").stat().st_mtime
    assert "up to date" in run(d, "--dataset=t", *args).stdout
    r = run(d, "--dataset=t", *args[:-1], "--val_fraction=0.2", ok=False)
    command = "python prepare.py " + shlex.join(["--dataset=t", *args[:-1], "--val_fraction=0.2", "--force"])
    assert r.stderr.strip() == (f"prepare.py: data/t was built with other settings (val_fraction: 0.1 -> 0.2): "
                                f"rebuild it with `{command}`, or choose another --dataset")
    assert (d / "data/t/meta.json").stat().st_mtime == before  # untouched
    # the command in the message, pasted into a shell, rebuilds the folder
    run(d, "--dataset=t4", *args, "--tokenizer=data/t/tokenizer.json")
    r = run(d, "--dataset=t4", *args[:-1], "--val_fraction=0.2", "--tokenizer=data/t/tokenizer.json", ok=False)
    pasted = re.search(r"rebuild it with `python prepare.py (.*)`", r.stderr)[1]
    subprocess.run(f"{shlex.quote(sys.executable)} {shlex.quote(str(ROOT / 'prepare.py'))} {pasted}", shell=True,
                   cwd=d, env=isolated(d), check=True, capture_output=True)
    assert json.loads((d / "data/t4/meta.json").read_text())["settings"]["val_fraction"] == 0.2


def test_a_source_in_the_output_folder_is_refused(built):
    d, _, _ = built
    for force in ([], ["--force"]):  # even without --force: building there would replace the source
        r = run(d, "--dataset=t", src(path="data/t"), *force, ok=False)
        assert r.stderr.strip() == ("prepare.py: the source data/t is in data/t, the folder this run writes: "
                                    "choose another --dataset")
    assert (d / "data/t/meta.json").is_file()


def test_parquet_and_a_json_array(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa
    pq.write_table(pa.table({"Text": DOCS[:100], "n": list(range(100))}), tmp_path / "a.parquet")
    (tmp_path / "b.json").write_text(json.dumps([{"body": t} for t in DOCS[100:]], ensure_ascii=False))
    r = run(tmp_path, "--sources=[{'path': 'a.parquet', 'text_field': 'Text'}, {'path': 'b.json', 'text_field': 'body'}]",
            "--vocab_size=300", "--dataset=p")
    meta = json.loads((tmp_path / "data/p/meta.json").read_text())
    assert meta["train"]["docs"] + meta["val"]["docs"] == 240, r.stdout
    r = run(tmp_path, src(path="a.parquet"), "--dataset=q", ok=False)
    assert "a.parquet: no column 'text'; columns: Text, n (set text_field)" in r.stderr


# --- the folders it writes: plain names, only its own folders replaced, one run at a time -------------

def files_under(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_dataset_must_be_a_plain_name(tmp_path):
    (tmp_path / "a/victim").mkdir(parents=True)
    (tmp_path / "a/victim/keep.txt").write_text("mine")
    (tmp_path / "a/b").mkdir()
    (tmp_path / "a/b/x.txt").write_text("\n".join(DOCS))
    for name in ("../../victim", str(tmp_path / "a/victim"), ".."):  # data/../../victim is a/victim
        r = run(tmp_path / "a/b", f"--dataset={name}", src(path="x.txt"), "--vocab_size=300", "--force", ok=False)
        assert r.stderr.strip() == (f"config error: dataset must be a plain name (one folder name: no '/', no '..'), "
                                    f"got {name!r}")
    assert files_under(tmp_path / "a/victim") == {"keep.txt": b"mine"}


@pytest.mark.parametrize("name, files, source, message", [
    # the README's mistake: the corpus folder itself as the output
    ("mycorpus", {"a.txt": "\n\n".join(DOCS[:100]), "b.txt": "\n\n".join(DOCS[100:])}, "data/mycorpus",
     "holds files prepare.py did not write (a.txt, b.txt)"),
    # the shipped sample corpus (a copy of its layout)
    ("sample", {"README.md": "# sample", "pretrain/a.txt": "\n\n".join(DOCS), "sft/train.jsonl": "{}"}, "x.txt",
     "holds files prepare.py did not write (README.md, pretrain, sft)"),
    # only prepare.py's file names, but another program's meta.json
    ("other", {"train.bin": "", "meta.json": '{"format": "other"}'}, "x.txt", "has no meta.json written by prepare.py"),
])
def test_only_a_folder_prepare_wrote_is_replaced(tmp_path, name, files, source, message):
    for path, content in files.items():
        (tmp_path / "data" / name / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / name / path).write_text(content)
    (tmp_path / "x.txt").write_text("\n\n".join(DOCS))
    before = files_under(tmp_path / "data")
    for force in ([], ["--force"]):
        r = run(tmp_path, f"--dataset={name}", src(path=source, txt_docs="block"), "--vocab_size=300", *force, ok=False)
        refusal = f"prepare.py: data/{name} {message}: refusing to replace it; choose another --dataset (or delete it yourself)"
        assert r.stderr.strip() == refusal
    assert files_under(tmp_path / "data") == before


def test_a_leftover_old_folder_is_removed_only_when_prepare_wrote_it(tmp_path):
    (tmp_path / "x.txt").write_text("\n".join(DOCS))
    args = [src(path="x.txt"), "--vocab_size=300", "--dataset=o"]
    run(tmp_path, *args)
    shutil.copytree(tmp_path / "data/o", tmp_path / "data/o.old")  # a --force run stopped before its clean-up
    r = run(tmp_path, *args, "--val_fraction=0.1", "--force")  # was "Directory not empty", after the whole rebuild
    assert "prepare.py: removing data/o.old, left by an interrupted run" in r.stdout
    assert not (tmp_path / "data/o.old").exists()
    assert json.loads((tmp_path / "data/o/meta.json").read_text())["settings"]["val_fraction"] == 0.1
    (tmp_path / "data/new.old").mkdir()  # someone's folder: it was deleted at the end of a run
    (tmp_path / "data/new.old/notes.txt").write_text("mine")
    r = run(tmp_path, *args[:-1], "--dataset=new", ok=False)
    assert r.stderr.strip() == ("prepare.py: data/new.old holds files prepare.py did not write (notes.txt): "
                                "refusing to delete it; move it elsewhere")
    assert files_under(tmp_path / "data/new.old") == {"notes.txt": b"mine"} and not (tmp_path / "data/new").exists()


# --- bad input: each one a clear message, and no output left behind --------------------------------

@pytest.mark.parametrize("content, args, message", [
    (None, [], "source path not found: missing.jsonl"),
    ('{"txt": "salam"}\n', [], "x.jsonl: no field 'text' in the first record (line 1); fields there: txt"),
    ('{"text": "!!!"}\n{"text": "?? 😂"}\n', [], "no documents left after cleaning (read 2; {'dropped_no_letters': 2})"),
    (b'{"text": "salam labas"}\n{"text": "ok \xff\xfe"}\n', [], "x.jsonl: invalid UTF-8 at byte offset 37 (line 2)"),
    ('{"text": "salam labas"}\n{"text": \n{"text": "wakha"}\n', [],
     "x.jsonl: 1 of 3 records are malformed or lack 'text' (first at line 2)"),
    ('{"text": "salam"}\n', ["--bad_bytes=maybe"], "bad_bytes must be 'error', 'replace' or 'skip'"),
])
def test_bad_input_is_a_clear_error(tmp_path, content, args, message):
    name = "missing.jsonl" if content is None else "x.jsonl"
    if content is not None:
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    r = run(tmp_path, src(path=name), "--dataset=bad", *args, ok=False)
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "data/bad").exists() and not (tmp_path / "data/bad.partial").exists()


def truncated_gz(d):
    data = gzip.compress(jsonl(DOCS))
    (d / "x.jsonl.gz").write_bytes(data[:len(data) // 2])


def symlink_loops(d):
    (d / "c").mkdir()
    (d / "c/a.txt").write_text("\n".join(DOCS))
    (d / "c/up").symlink_to(".")  # a folder that loops: not followed
    (d / "c/b.txt").symlink_to("b.txt")  # a file link that loops


@pytest.mark.parametrize("setup, source, args, message", [
    (lambda d: (d / "x.parquet").write_bytes(b""), dict(path="x.parquet"), [],
     "prepare.py: x.parquet: cannot be read ("),  # pyarrow's reason: "Parquet file size is 0 bytes"
    (truncated_gz, dict(path="x.jsonl.gz"), [],
     "prepare.py: x.jsonl.gz: cannot be read (Compressed file ended before the end-of-stream marker was reached)"),
    (symlink_loops, dict(path="c"), [], "prepare.py: c/b.txt: cannot be read ([Errno "),  # too many levels of links
    (lambda d: (d / "x.txt").write_text("salam\nlabas\n"), dict(path="x.txt"), [],
     "prepare.py: cannot train the tokenizer (vocab_size=8192): the training text only allows"),
    (lambda d: (d / "tok.json").write_text("{"), dict(path="x.txt"), ["--tokenizer=tok.json"],
     "prepare.py: tok.json: cannot read tokenizer file (missing, truncated or not JSON"),
    (None, dict(path="x.txt", max_chars="abc"), [], "prepare.py: max_chars must be a positive whole number"),
    (None, dict(path="x.txt", max_chars=0), [], "prepare.py: max_chars must be a positive whole number"),
    (None, dict(path="x.txt", txt_docs="para"), [], "prepare.py: txt_docs must be 'line' or 'block'"),
    (None, dict(path="x.txt", text_field=3), [], "prepare.py: text_field must be a string"),
])
def test_bad_files_and_values_are_one_clear_line(tmp_path, setup, source, args, message):
    (tmp_path / "x.txt").write_text("\n".join(DOCS))
    if setup:
        setup(tmp_path)
    if "parquet" in source["path"]:
        pytest.importorskip("pyarrow.parquet")
    r = run(tmp_path, src(**source), "--dataset=bad", *args, ok=False)
    assert r.stderr.strip().splitlines()[-1].startswith(message) and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "data/bad").exists() and not (tmp_path / "data/bad.partial").exists()


def test_a_csv_field_over_128_kb_is_read_as_a_document(tmp_path):
    long = "wakha " * 34_000  # 204 KB: over csv's default field limit of 128 KB
    (tmp_path / "x.csv").write_text("text\n" + "".join(f'"{t}"\n' for t in DOCS + [long]))
    run(tmp_path, src(path="x.csv"), "--dataset=csv", "--vocab_size=300", "--max_doc_chars=300000")
    train, _, _ = read_bin(tmp_path / "data/csv", "train")
    val, _, _ = read_bin(tmp_path / "data/csv", "val")
    assert long.strip() in train + val and len(train + val) == len(DOCS) + 1  # cleaning only strips it


def test_bad_source_spec(tmp_path):
    r = run(tmp_path, "--sources=[{'pth': 'x.txt'}]", ok=False)
    assert "each source must be a dict with exactly one of hub= or path=" in r.stderr
    r = run(tmp_path, src(url="https://example.com/corpus.jsonl"), ok=False)  # no downloader: download, give path=
    assert r.stderr.strip() == ("prepare.py: each source must be a dict with exactly one of hub= or path=; got "
                                "{'url': 'https://example.com/corpus.jsonl'}")
    r = run(tmp_path, "--sources=[{'path': 'x.txt', 'text_feld': 'a'}]", ok=False)
    assert r.stderr.strip() == ("prepare.py: unknown source key 'text_feld' in {'path': 'x.txt', 'text_feld': 'a'}; "
                                "the keys are config, hub, max_chars, name, path, revision, split, "
                                "text_field, txt_docs")


def test_policies_replace_bad_bytes_and_tolerate_few_bad_lines(tmp_path):
    lines = [json.dumps({"text": t}, ensure_ascii=False) for t in DOCS[:200]]
    lines[50] = '{"text": broken'
    (tmp_path / "x.jsonl").write_bytes(("\n".join(lines) + "\n").encode() + b'{"text": "bghit \xff atay"}\n')
    run(tmp_path, src(path="x.jsonl"), "--dataset=ok", "--vocab_size=300", "--bad_bytes=replace")
    meta = json.loads((tmp_path / "data/ok/meta.json").read_text())
    assert meta["sources"][0]["malformed_records"] == 1 and meta["sources"][0]["bad_utf8_lines"] == 1
    train, _, _ = read_bin(tmp_path / "data/ok", "train")
    val, _, _ = read_bin(tmp_path / "data/ok", "val")
    assert "bghit \ufffd atay" in train + val


# --- the hub, against a local server --------------------------------------------------------------

def jsonl(docs):
    return "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in docs).encode()


DARIJA = {"cfg/train-00000.jsonl": jsonl(DOCS), "cfg/train-00001.jsonl": jsonl(["salam, this file comes second"]),
          "cfg/test-00000.jsonl": jsonl(["never read"] * 9), "cfg/README.md": b"# me/darija",
          "other/train-00000.jsonl": jsonl(["another config"] * 9)}


def test_hub_dataset_by_name_config_and_split(tmp_path, hub):
    hub.datasets["me/darija"] = DARIJA
    args = [src(hub="me/darija", config="cfg", split="train"), "--vocab_size=300"]
    run(tmp_path, "--dataset=h", *args, env={"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_abc"})
    meta = json.loads((tmp_path / "data/h/meta.json").read_text())
    assert meta["train"]["docs"] + meta["val"]["docs"] == 241 and not meta["fallback_used"]
    assert meta["sources"][0]["files"] == ["cfg/train-00000.jsonl", "cfg/train-00001.jsonl"]  # in data order
    (cached,) = (tmp_path / "hf_home/hub/datasets--me--darija/snapshots").glob("*/cfg/train-00000.jsonl")
    assert cached.read_bytes() == jsonl(DOCS) and not (tmp_path / "data/_downloads").exists()
    assert all(h["Authorization"] == "Bearer hf_abc" for p, h in hub.seen if "me/darija" in p)
    assert not any("test-00000" in p or "other/" in p for p, _ in hub.seen)
    # max_chars: the second file is never downloaded
    hub.seen.clear()
    run(tmp_path, "--dataset=h2", src(hub="me/darija", config="cfg", max_chars=500),
        "--tokenizer=data/h/tokenizer.json", env={"HF_ENDPOINT": hub.url})
    assert hub.seen and not any("train-00001" in p for p, _ in hub.seen)


def test_hub_dataset_downloaded_once_is_used_with_the_server_gone(tmp_path, hub):
    hub.datasets["me/darija"] = DARIJA
    args = [src(hub="me/darija", config="cfg"), "--vocab_size=300"]
    run(tmp_path, "--dataset=h", *args, env={"HF_ENDPOINT": hub.url})
    hub.shutdown()
    hub.server_close()
    r = run(tmp_path, "--dataset=h2", *args, "--tokenizer=data/h/tokenizer.json", env={"HF_ENDPOINT": hub.url})
    assert "cannot reach the hub" in r.stdout and "using me/darija from the Hugging Face cache" in r.stdout
    assert (tmp_path / "data/h2/train.bin").read_bytes() == (tmp_path / "data/h/train.bin").read_bytes()
    assert not json.loads((tmp_path / "data/h2/meta.json").read_text())["fallback_used"]
    run(tmp_path, "--dataset=h3", *args, "--tokenizer=data/h/tokenizer.json", env={"HF_HUB_OFFLINE": "1"})
    assert (tmp_path / "data/h3/val.bin").read_bytes() == (tmp_path / "data/h/val.bin").read_bytes()


@pytest.mark.slow  # huggingface_hub retries for a few seconds
def test_a_hub_file_that_comes_short_is_an_error_and_not_cached(tmp_path, hub):
    hub.datasets["me/darija"], hub.cut_short = DARIJA, True
    r = run(tmp_path, src(hub="me/darija", config="cfg"), env={"HF_ENDPOINT": hub.url}, ok=False)
    assert "prepare.py: downloading cfg/train-00000.jsonl from me/darija failed (" in r.stderr
    assert "run again to resume" in r.stderr and "Traceback" not in r.stderr
    assert not list((tmp_path / "hf_home/hub/datasets--me--darija").glob("snapshots/*/cfg/train-00000.jsonl"))


def test_a_hub_file_listed_outside_the_dataset_is_refused(tmp_path, hub):
    hub.datasets["me/evil"] = {"../../../../outside/train.jsonl": jsonl(DOCS), "data/train.jsonl": jsonl(DOCS)}
    r = run(tmp_path, src(hub="me/evil"), "--vocab_size=300", env={"HF_ENDPOINT": hub.url}, ok=False)
    assert r.stderr.strip() == ("prepare.py: me/evil lists a file outside the dataset, "
                                "'../../../../outside/train.jsonl': refusing to download anything")
    assert not [p for p in tmp_path.rglob("*") if "outside" in p.name]
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(tmp_path / "hf_home/hub")]


def parquet(docs):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    out = pa.BufferOutputStream()
    pq.write_table(pa.table({"text": docs}), out)
    return out.getvalue().to_pybytes()


@pytest.mark.parametrize("name", ["data/train-00000.jsonl.gz", "data/train-00000.parquet"])
def test_a_damaged_file_in_the_hub_cache_is_fetched_again(tmp_path, hub, name):
    body = gzip.compress(jsonl(DOCS)) if name.endswith(".gz") else parquet(DOCS)
    hub.datasets["me/darija"], env = {name: body}, {"HF_ENDPOINT": hub.url}
    run(tmp_path, "--dataset=h", src(hub="me/darija"), "--vocab_size=300", env=env)
    (cached,) = (tmp_path / "hf_home/hub/datasets--me--darija/snapshots").glob(f"*/{name}")
    cached.write_bytes(body[:len(body) // 2])  # cut short on disk (through the link, into the blob)
    r = run(tmp_path, "--dataset=h2", src(hub="me/darija"), "--tokenizer=data/h/tokenizer.json", env=env)
    assert f"prepare.py: {name} in the Hugging Face cache is damaged (" in r.stdout
    assert "): downloading it again" in r.stdout and cached.read_bytes() == body
    for split in ("train.bin", "val.bin"):  # the documents read before the damage showed are not taken twice
        assert (tmp_path / "data/h2" / split).read_bytes() == (tmp_path / "data/h" / split).read_bytes()
    hub.datasets["me/broken"] = {name: body[:len(body) // 2]}  # damaged on the hub itself: one more try, then stop
    r = run(tmp_path, "--dataset=h3", src(hub="me/broken"), "--vocab_size=300", env=env, ok=False)
    assert "in the Hugging Face cache is damaged" in r.stdout
    assert r.stderr.startswith(f"prepare.py: {name} from me/broken cannot be read, even downloaded again (")
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


@pytest.mark.parametrize("code, token, why", [(401, None, "no valid token was sent (HF_TOKEN is not set, nor "
                                               "`hf auth login` run, or the token is wrong)"),
                                              (403, "hf_x", "your token has not been granted access")])
def test_gated_dataset_says_what_to_do_in_one_line(tmp_path, hub, code, token, why):
    hub.datasets["atlasia/Atlaset"] = {"data/train-00000.jsonl": jsonl(DOCS)}
    hub.gated["atlasia/Atlaset"] = code
    env = {"HF_ENDPOINT": hub.url} | ({"HF_TOKEN": token} if token else {})
    r = run(tmp_path, src(hub="atlasia/Atlaset"), env=env, ok=False)
    assert r.stderr.strip() == (
        f"prepare.py: atlasia/Atlaset is a gated dataset and {why} (HTTP {code}). Open {hub.url}/datasets/atlasia/"
        f"Atlaset , log in and accept its terms, create a read token at {hub.url}/settings/tokens , then "
        "`export HF_TOKEN=hf_...` and run again.")


def test_hub_name_config_or_split_not_found(tmp_path, hub):
    hub.datasets["me/darija"] = DARIJA
    env = {"HF_ENDPOINT": hub.url}
    r = run(tmp_path, src(hub="me/nope"), env=env, ok=False)
    assert r.stderr.startswith("prepare.py: me/nope is gated, private or missing and no valid token was sent")
    r = run(tmp_path, src(hub="me/nope"), env=env | {"HF_TOKEN": "hf_abc"}, ok=False)
    assert r.stderr.strip() == "prepare.py: the hub answered HTTP 404 for me/nope: check the name, config and split"
    r = run(tmp_path, src(hub="me/darija", config="nope"), env=env, ok=False)  # the configs are in the list
    assert "no .txt/.jsonl/.json/.csv/.parquet (or .gz) files for split 'train' in me/darija (config 'nope'); found: " \
           "cfg/README.md, cfg/test-00000.jsonl" in r.stderr
    r = run(tmp_path, src(hub="me/darija", config="cfg", split="validation"), env=env, ok=False)
    assert "files for split 'validation' in me/darija (config 'cfg'); found: cfg/README.md, cfg/test-00000.jsonl, " \
           "cfg/train-00000.jsonl" in r.stderr


def test_offline_falls_back_to_the_sample_corpus(tmp_path):
    if not any((ROOT / "data/sample/pretrain").glob("*.txt")):
        pytest.skip("the sample corpus is not written yet")
    r = run(tmp_path, "--vocab_size=300")  # the default source is on the hub
    (line,) = [line for line in r.stdout.splitlines() if "cannot reach" in line]
    assert line.startswith("prepare.py: cannot reach the hub for wikimedia/wikipedia (")
    assert "Connection refused" in line
    assert line.endswith("not in the Hugging Face cache: connect to the internet, or use local files. Using the sample "
                         "corpus in data/sample/pretrain instead (a small demo, not a real training set)")
    assert "Retrying" not in r.stderr and "Traceback" not in r.stderr  # no network shows at once, quietly
    meta = json.loads((tmp_path / "data/darija_small/meta.json").read_text())
    assert meta["fallback_used"] and meta["train"]["docs"] > 100
    r = run(tmp_path, "--vocab_size=300", "--fallback=", "--dataset=nofb", ok=False)
    assert r.stderr.startswith("prepare.py: cannot reach the hub for wikimedia/wikipedia (")
    assert r.stderr.count("\n") == 1


def test_ctrl_c_leaves_nothing_that_looks_finished(tmp_path, hub):
    def stall(h):  # a download that hangs after its first byte
        h.send_response(200)
        h.send_header("Content-Length", str(len(DARIJA[file])))
        h.end_headers()
        h.wfile.write(DARIJA[file][:1])
        h.wfile.flush()
        downloading.set()
        time.sleep(5)
    downloading = threading.Event()
    file, hub.datasets["me/darija"] = "cfg/train-00000.jsonl", DARIJA
    hub.routes = {f"/datasets/me/darija/resolve/main/{file}": stall}
    p = subprocess.Popen([sys.executable, str(ROOT / "prepare.py"), src(hub="me/darija", config="cfg"), "--dataset=c"],
                         cwd=tmp_path, env=isolated(tmp_path, {"HF_ENDPOINT": hub.url}),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert downloading.wait(timeout=30), "prepare.py never started the download"
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 1 and "interrupted; data/c was not written" in err
    assert not (tmp_path / "data/c").exists() and not (tmp_path / "data/c.partial").exists()


def test_a_second_run_on_the_same_dataset_stops_and_names_the_first(tmp_path, hub):
    def slow(h):  # the first run's download: a part, a pause while the second run starts, the rest
        h.send_response(200)
        h.send_header("Content-Length", str(len(DARIJA[file])))
        h.end_headers()
        h.wfile.write(DARIJA[file][:100])
        h.wfile.flush()
        downloading.set()
        second_done.wait(timeout=60)
        h.wfile.write(DARIJA[file][100:])
    downloading, second_done = threading.Event(), threading.Event()
    file, hub.datasets["me/darija"] = "cfg/train-00000.jsonl", DARIJA
    hub.routes = {f"/datasets/me/darija/resolve/main/{file}": slow}
    first = subprocess.Popen([sys.executable, str(ROOT / "prepare.py"), src(hub="me/darija", config="cfg"),
                              "--dataset=c", "--vocab_size=300"], cwd=tmp_path,
                             env=isolated(tmp_path, {"HF_ENDPOINT": hub.url}),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert downloading.wait(timeout=30), "the first run never started its download"
        (tmp_path / "x.txt").write_text("\n".join(f"another corpus, line {i} of it" for i in range(300)))
        r = run(tmp_path, "--dataset=c", src(path="x.txt"), "--vocab_size=300", ok=False)
    finally:
        second_done.set()
    assert r.stderr.startswith(f"config error: data/c is in use by process {first.pid} ")
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, out + err
    meta = json.loads((tmp_path / "data/c/meta.json").read_text())
    assert meta["sources"][0]["name"] == "me/darija/cfg" and meta["train"]["docs"] + meta["val"]["docs"] == 241
    train, _, _ = read_bin(tmp_path / "data/c", "train")
    assert not [t for t in train if "another corpus" in t]
    assert not (tmp_path / "data/c.lock").exists()
