"""The whole pipeline on the sample corpus shipped in data/sample/, each stage run as a user runs it
(its script, a config file, --key=value overrides) in a fresh folder: prepare -> tokenizer ->
pretrain -> SFT -> LoRA -> eval -> chat.py --prompt, checking what each stage leaves on disk: token
counts and one <|endoftext|> per document, checkpoint kinds and tokenizer hashes, val losses that
fall, the adapter tied to its base's file, one report on all three models, and the same greedy
answer from base + adapter and from the merged checkpoint. The test prints each stage's seconds (on 2 shared CPU cores, once: pretrain with prepare
10 s, SFT 8 s, LoRA 8 s, three chat.py runs 11 s, mostly importing torch).

The tiny configs (config/darija_tiny.py, sft_tiny.py, lora_tiny.py) are used as shipped; for SFT
and LoRA the overrides below shrink them further (fewer steps and metric items), so the whole run
takes well under a minute on 2 CPU cores. One thread per process: at this size torch's
thread pool costs more than it gives (3x slower with 2 threads on a busy 2-core machine).
Marked slow: python -m pytest -m slow."""
import json
import math
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from bpe import Tokenizer
from conftest import ROOT
from model import load_checkpoint, sha256_of

FINETUNE = ["--batch_size=4", "--max_iters=20", "--warmup_iters=2", "--eval_interval=10", "--eval_iters=2",
            "--metric_items=2", "--max_new_tokens=8"]


def stage(work, times, script, *args):
    """Run one stage script in `work`; fail with its output when it fails; return its stdout."""
    t0 = time.time()
    r = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=work, capture_output=True, text=True,
                       encoding="utf-8", env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    times[script] = times.get(script, 0) + time.time() - t0
    assert r.returncode == 0, f"{script} {' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def val_losses(stdout):
    return [float(v) for v in re.findall(r"step \d+: val loss ([0-9.]+)", stdout)]


@pytest.mark.slow
def test_sample_corpus_to_chat(tmp_path):
    for name in ("data/sample", "config"):  # the shipped sample and configs, read in place
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).symlink_to(ROOT / name)
    times, t0 = {}, time.time()

    # prepare + tokenizer + pretrain: pretrain.py runs prepare.py first, which trains the tokenizer
    stage(tmp_path, times, "pretrain.py", "config/darija_tiny.py")
    data = tmp_path / "data" / "darija_tiny"
    meta = json.loads((data / "meta.json").read_text(encoding="utf-8"))
    tok = Tokenizer.load(data / "tokenizer.json")
    assert meta["vocab_size"] == tok.vocab_size == 1024
    assert meta["tokenizer_sha256"] == sha256_of(data / "tokenizer.json")
    for split in ("train", "val"):
        ids = np.fromfile(data / f"{split}.bin", dtype=meta["dtype"])
        assert len(ids) == meta[split]["tokens"] > 0
        assert ids[0] == tok.eot_id and (ids == tok.eot_id).sum() == meta[split]["docs"]  # one per document
        assert ids.max() < tok.vocab_size
    base = load_checkpoint(tmp_path / "out" / "darija_tiny")
    assert base["kind"] == "base" and base["tokenizer"] == "data/darija_tiny/tokenizer.json"
    assert base["tokenizer_sha256"] == meta["tokenizer_sha256"]
    evals = [r for r in map(json.loads, open(tmp_path / "out/darija_tiny/log.jsonl")) if "val_loss" in r]
    assert evals[-1]["val_loss"] < math.log(1024) - 1  # well below a uniform guess: it learned

    # SFT: builds data/sft/darija_tiny from data/sample/sft, then fine-tunes the base
    r = stage(tmp_path, times, "sft.py", "config/sft_tiny.py", *FINETUNE)
    sft_data = tmp_path / "data" / "sft" / "darija_tiny"
    rows = [json.loads(line) for line in open(sft_data / "train.jsonl", encoding="utf-8")]
    assert len(rows) > 300 and all(tok.render_conversation(row["messages"]) for row in rows[:50])
    sft = load_checkpoint(tmp_path / "out" / "darija_tiny_sft")
    assert sft["kind"] == "sft" and sft["tokenizer_sha256"] == meta["tokenizer_sha256"]
    losses = val_losses(r.stdout)
    assert sft["best_val_loss"] == pytest.approx(min(losses), abs=1e-4) and min(losses) < losses[0]
    assert set(json.loads((tmp_path / "out/darija_tiny_sft/metrics.json").read_text())) >= {"base", "sft"}
    assert (tmp_path / "out/darija_tiny_sft/eval/report.md").is_file()  # eval.py's, which sft.py runs

    # LoRA on the base: an adapter tied to the base's exact file, and a merged checkpoint
    r = stage(tmp_path, times, "lora.py", "config/lora_tiny.py", "--merge", *FINETUNE)
    adapter = torch.load(tmp_path / "out/darija_tiny_lora/adapter.pt", weights_only=True)
    assert adapter["base_sha256"] == sha256_of(tmp_path / "out/darija_tiny/best.pt")
    n_lora = sum(v.numel() for v in adapter["lora"].values())
    assert 0 < n_lora < 0.1 * sum(v.numel() for v in base["model"].values())
    assert load_checkpoint(tmp_path / "out" / "darija_tiny_lora")["kind"] == "lora_merged"
    losses = val_losses(r.stdout)
    assert min(losses) < losses[0]

    # eval: the three models side by side, on the dataset named after the base (as sft.py names it)
    stage(tmp_path, times, "eval.py", "out/darija_tiny", "out/darija_tiny_sft", "out/darija_tiny_lora",
          "--metric_items=2", "--max_new_tokens=8")
    report = json.loads((tmp_path / "reports/darija_tiny_lora/report.json").read_text(encoding="utf-8"))
    assert report["data"]["translation"] == "data/sft/darija_tiny" and report["tasks"] == ["bpb", "translation"]
    assert all(0 < c["bpb"]["all"]["bpb"] < 8 for c in report["checkpoints"])  # on data/darija_tiny/val.bin
    assert [c["kind"] for c in report["checkpoints"]] == ["base", "sft", "lora_merged"]
    assert all(c["translation"]["dar2en"]["items"] == 2 for c in report["checkpoints"])

    # chat: the base + adapter, and (no --ckpt) the newest chat checkpoint: the merged one, same answer
    prompt = ["--prompt", "salam, kidayr?", "--temperature", "0", "--max_new_tokens", "12"]
    with_adapter = stage(tmp_path, times, "chat.py", "--ckpt", "out/darija_tiny", "--adapter",
                         "out/darija_tiny_lora/adapter.pt", *prompt)
    merged = stage(tmp_path, times, "chat.py", *prompt)
    assert "using out/darija_tiny_lora/best.pt (lora_merged, the newest chat checkpoint" in merged.stderr
    assert with_adapter.stdout == merged.stdout and with_adapter.stdout.endswith("\n")
    sft_answer = stage(tmp_path, times, "chat.py", "--ckpt", "out/darija_tiny_sft", *prompt)
    assert sft_answer.returncode == 0 and sft_answer.stderr == ""

    print(f"\npipeline stages (s): {', '.join(f'{k} {v:.1f}' for k, v in times.items())}; "
          f"total {time.time() - t0:.1f}")
