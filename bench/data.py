"""
Benchmark of the data stage (prepare.py) on ../shared/data/darija/pretrain (13.6 MB of Darija text).

    python bench/data.py           # per-step times, encoding vs raw tiktoken, peak memory (~2-3 min)
    python bench/data.py --big     # and peak memory on a ~200 MB input (the corpus x15, varied; ~5 min)

1. The whole stage, as a user runs it (tokenizer trained at vocab 16,384): seconds per step.
2. Encoding throughput, in one process, best of 5 rounds, same documents, same threads:
   - tiktoken's own batch call, encode_ordinary_batch (one thread task per document),
   - raw tiktoken at its fastest: encode_ordinary over the documents in chunks on N threads,
     the documents already in memory, nothing written,
   - prepare.py's encode step: reads the work file, encodes, writes train.bin/val.bin,
   each as a share of the faster raw tiktoken figure.
3. Peak memory (max RSS of the prepare.py process) with the tokenizer reused, so that the figure is
   the streaming part (read, clean, dedup, encode): it must stay roughly flat as the input grows.
Outputs go to bench/results/data/ (git-ignored); the tables are printed as Markdown (bench/README.md).
"""
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data", "darija", "pretrain")
WORK = os.path.join(ROOT, "bench", "results", "data")
# runs a command and writes the peak RSS (KB) of its process tree's largest member to a file
WRAP = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[2:]); "
        "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(rc)")


def prepare(name, source, *extra):
    """Run prepare.py in WORK; return (meta.json, peak RSS in MB, wall seconds)."""
    rss_file = os.path.join(WORK, name + ".rss")
    args = [f"--dataset={name}", f"--sources=[{{'path': {source!r}, 'text_field': 'text'}}]", "--force", *extra]
    t = time.time()
    subprocess.run([sys.executable, "-c", WRAP, rss_file, sys.executable, os.path.join(ROOT, "prepare.py"), *args],
                   cwd=WORK, check=True)
    wall = time.time() - t
    with open(os.path.join(WORK, "data", name, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    with open(rss_file) as f:
        return meta, int(f.read()) / 1024, wall


def encoding_rates(name, threads, rounds=5):
    """MB/s of tiktoken's batch call, raw tiktoken on N threads, and prepare.py's encode step."""
    sys.argv = ["prepare.py"]
    sys.path.insert(0, ROOT)
    import prepare
    from bpe import Tokenizer
    out = os.path.join(WORK, "data", name)
    tok = Tokenizer.load(os.path.join(out, "tokenizer.json"))
    enc, eot = tok.to_tiktoken(), tok.eot_id
    docs = []
    for split in ("train", "val"):  # the cleaned documents, back from the .bin files
        ids = np.fromfile(os.path.join(out, f"{split}.bin"), np.uint16)
        cuts = list(np.flatnonzero(ids == eot)) + [len(ids)]
        docs += [enc.decode(ids[a + 1:b].tolist()) for a, b in zip(cuts, cuts[1:])]
    data = [d.encode("utf-8") for d in docs]
    nbytes = sum(map(len, data))
    work = os.path.join(WORK, "encode_work")
    os.makedirs(work, exist_ok=True)
    with open(os.path.join(work, "docs.txt"), "wb") as f:
        f.write(b"".join(data))
    lengths = np.array([len(d) for d in data], np.uint32)
    keep, val = np.ones(len(docs), bool), np.arange(len(docs)) % 50 == 0
    prepare.num_threads = threads

    def raw_chunk(chunk):
        return [enc.encode_ordinary(d) for d in chunk]

    def raw_threads():
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(raw_chunk, [docs[i:i + 2000] for i in range(0, len(docs), 2000)]))
    runs = {"tiktoken encode_ordinary_batch": lambda: enc.encode_ordinary_batch(docs, num_threads=threads),
            f"raw tiktoken, {threads} threads": raw_threads,
            "prepare.py encode step": lambda: prepare.encode(work, lengths, keep, val, tok)}
    best = {k: float("inf") for k in runs}
    for _ in range(rounds):  # interleaved, so that a noisy neighbour hits all three alike
        for k, fn in runs.items():
            t = time.time()
            fn()
            best[k] = min(best[k], time.time() - t)
    shutil.rmtree(work)
    return {k: nbytes / v / 1e6 for k, v in best.items()}, nbytes


def make_big(copies=15):
    """The corpus `copies` times; copy k rotates each document's words by k, so that few collapse."""
    path = os.path.join(WORK, "big", "corpus_x15.jsonl")
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    texts = [json.loads(line)["text"] for f in sorted(os.listdir(SHARED)) if f.endswith(".jsonl")
             for line in open(os.path.join(SHARED, f), encoding="utf-8")]
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        for k in range(copies):
            for t in texts:
                w = t.split(" ")
                r = k % len(w)
                f.write(json.dumps({"text": " ".join(w[r:] + w[:r]) + ("" if k == 0 else f" {k}")},
                                   ensure_ascii=False) + "\n")
    os.replace(path + ".tmp", path)
    return path


def main():
    big = "--big" in sys.argv
    if not os.path.isdir(SHARED):
        sys.exit(f"bench/data.py needs {SHARED} (the shared Darija corpus); it is not here")
    os.makedirs(WORK, exist_ok=True)
    threads = os.cpu_count()
    print(f"1. the whole stage on {SHARED}, vocab 16,384", flush=True)
    meta, rss_full, wall = prepare("shared16k", SHARED, "--vocab_size=16384")
    mb = (meta["train"]["bytes"] + meta["val"]["bytes"]) / 1e6
    print("2. encoding throughput, best of 5", flush=True)
    rates, nbytes = encoding_rates("shared16k", threads)
    print("3. peak memory of the streaming part (tokenizer reused)", flush=True)
    tok = f"--tokenizer={os.path.join(WORK, 'data', 'shared16k', 'tokenizer.json')}"
    size = sum(os.path.getsize(os.path.join(SHARED, f)) for f in os.listdir(SHARED)) / 1e6
    mem = [(size, *prepare("mem_small", SHARED, tok)[1:])]
    if big:
        path = make_big()
        mem.append((os.path.getsize(path) / 1e6, *prepare("mem_big", path, tok)[1:]))

    s = meta["seconds"]
    print(f"\n| step (13.6 MB corpus, {meta['train']['docs'] + meta['val']['docs']:,} documents kept) | seconds | MB/s |")
    print("|---|---:|---:|")
    for k, what in (("read", "read + parse JSON lines + clean + dedup"),
                    ("tokenizer", "train the tokenizer, vocab 16,384, on a 10 MB sample"), ("encode", "encode to .bin")):
        print(f"| {what} | {s[k]:.1f} | {mb / s[k] if k != 'tokenizer' else 10 / s[k]:.1f} |")
    print(f"| whole stage (wall, with start-up) | {wall:.1f} | {mb / wall:.2f} |")
    raw = max(v for k, v in rates.items() if k.startswith(("raw", "tiktoken")))
    print(f"\n| encoding, {threads} threads, {nbytes / 1e6:.1f} MB, best of 5 | MB/s | vs fastest raw tiktoken |")
    print("|---|---:|---:|")
    for k, v in rates.items():
        print(f"| {k} | {v:.2f} | {v / raw:.0%} |")
    ours = rates["prepare.py encode step"] / raw
    print(f"prepare.py's encode step: {ours:.0%} of raw tiktoken's speed")
    print("\n| input | peak RSS (MB) | seconds |\n|---|---:|---:|")
    for size, rss, secs in mem:
        print(f"| {size:.0f} MB of JSON lines | {rss:.0f} | {secs:.0f} |")
    print(f"(the whole stage with tokenizer training at 16,384 on 13.6 MB: {rss_full:.0f} MB peak)")
    if len(mem) > 1:
        print(f"x{mem[1][0] / mem[0][0]:.0f} the input -> x{mem[1][1] / mem[0][1]:.2f} the peak memory")
    with open(os.path.join(WORK, "results.json"), "w") as f:
        json.dump(dict(seconds=s, wall=wall, rates=rates, memory=mem, rss_full=rss_full), f, indent=1)


if __name__ == "__main__":
    main()
