"""pretrain.py end to end on a tiny synthetic corpus: loss falls, exact resume, DDP, signals, errors."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT

TINY = ["--dataset=toy", "--n_layer=2", "--n_embd=64", "--n_head=2", "--n_kv_head=2", "--block_size=32",
        "--batch_size=8", "--eval_iters=2", "--sample_tokens=0", "--warmup_iters=5", "--log_interval=1"]


def make_data(root, name="toy"):
    """data/NAME/{train,val}.bin + meta.json in the format of docs/formats.md: phrases that repeat, so loss can fall."""
    rng = np.random.default_rng(0)
    phrases = [rng.integers(1, 200, size=rng.integers(3, 9)) for _ in range(30)]

    def corpus(n):
        out = []
        while len(out) < n:
            out.append(0)  # <|endoftext|> before each document
            for _ in range(rng.integers(2, 6)):
                out.extend(phrases[rng.integers(0, 30)])
        return np.array(out[:n], dtype=np.uint16)

    d = os.path.join(root, "data", name)
    os.makedirs(d, exist_ok=True)
    corpus(40_000).tofile(os.path.join(d, "train.bin"))
    corpus(4_000).tofile(os.path.join(d, "val.bin"))
    meta = {"vocab_size": 256, "dtype": "uint16", "eot_id": 0, "tokenizer": f"data/{name}/tokenizer.json",
            "tokenizer_sha256": "0" * 64, "train": {"docs": 1, "tokens": 40_000, "bytes": 90_000},
            "val": {"docs": 1, "tokens": 4_000, "bytes": 9_000}}
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f)


@pytest.fixture
def workdir(tmp_path):
    make_data(str(tmp_path))
    return tmp_path


def run(cwd, *args, script=os.path.join(ROOT, "pretrain.py"), launcher=()):
    return subprocess.run([sys.executable, *launcher, script, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})


def losses(path):
    with open(path) as f:
        return [(r["iter"], r["loss"]) for r in map(json.loads, f) if "loss" in r]


def test_train_and_resume_equals_uninterrupted(workdir):
    """Loss falls and outputs are written; 10 steps + resume to 30 == 30 uninterrupted steps."""
    common = [*TINY, "--eval_interval=10", "--lr_decay_iters=30", "--dropout=0.1", "--grad_accum_steps=2"]
    r = run(workdir, *common, "--max_iters=30", "--out_dir=out/full")
    assert r.returncode == 0, r.stderr
    assert {"best.pt", "last.pt", "log.jsonl"} <= set(os.listdir(workdir / "out/full"))
    assert "bits/byte" in r.stdout and "tok/s" in r.stdout
    full = losses(workdir / "out/full/log.jsonl")
    assert [i for i, _ in full] == list(range(1, 31))
    assert np.mean([v for _, v in full[-5:]]) < 0.8 * np.mean([v for _, v in full[:5]])

    assert run(workdir, *common, "--max_iters=10", "--out_dir=out/part").returncode == 0
    r = run(workdir, *common, "--max_iters=30", "--out_dir=out/part", "--init_from=resume")
    assert r.returncode == 0 and "resuming out/part/last.pt at step 10" in r.stdout
    assert losses(workdir / "out/part/log.jsonl") == full


@pytest.mark.slow
def test_nan_stops_and_existing_run_is_kept(workdir):
    assert run(workdir, *TINY, "--max_iters=4", "--eval_interval=4").returncode == 0
    r = run(workdir, *TINY, "--max_iters=4")
    assert r.returncode == 1 and "already holds a run: continue it with --init_from=resume" in r.stderr
    before = (workdir / "out/toy/last.pt").read_bytes()
    r = run(workdir, *TINY, "--max_iters=400", "--init_from=resume", "--learning_rate=1e30", "--grad_clip=0.0",
            "--eval_interval=1000")
    assert r.returncode == 1 and "stopping without saving" in r.stdout
    assert (workdir / "out/toy/last.pt").read_bytes() == before


@pytest.mark.slow
def test_ddp_two_processes_match_one(workdir):
    common = [*TINY, "--max_iters=6", "--eval_interval=6", "--grad_accum_steps=2"]
    one = run(workdir, *common, "--out_dir=out/one")
    two = run(workdir, *common, "--out_dir=out/two",
              launcher=("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"))
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    assert "2 process(es) on cpu" in two.stdout
    a, b = losses(workdir / "out/one/log.jsonl"), losses(workdir / "out/two/log.jsonl")
    assert [i for i, _ in a] == [i for i, _ in b] == list(range(1, 7))
    assert np.allclose([v for _, v in a], [v for _, v in b], rtol=1e-4)


@pytest.mark.slow
def test_sigterm_saves_and_exits(workdir):
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "pretrain.py"), *TINY, "--max_iters=100000",
                             "--eval_interval=100000"], cwd=workdir, stdout=subprocess.PIPE, text=True)
    log = workdir / "out/toy/log.jsonl"
    deadline = time.time() + 60
    while not (log.exists() and log.stat().st_size) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "continue with --init_from=resume" in out
    import torch
    step = torch.load(workdir / "out/toy/last.pt", weights_only=True)["step"]
    assert step >= 1 and step == losses(log)[-1][0]


def pretrain_defaults():
    """pretrain.py's settings (the top-level assignments before configure), without running it."""
    import ast
    from configurator import setting_names
    path = os.path.join(ROOT, "pretrain.py")
    tree = ast.parse(open(path, encoding="utf-8").read())
    names = set(setting_names(path))
    scope = {"__file__": path}
    for node in tree.body:
        if isinstance(node, (ast.Expr, ast.Assign)) and getattr(getattr(node.value, "func", None), "id", "") == "configure":
            break  # settings = configure(...): the end of the settings
        if isinstance(node, ast.Assign) and node.targets[0].id in names:
            scope[node.targets[0].id] = ast.literal_eval(node.value)
    return scope


def test_config_errors():
    from configurator import configure
    with pytest.raises(SystemExit, match="config error: unknown config key 'batch_sise' in the command line; "
                                          "did you mean 'batch_size'\\?"):
        configure(pretrain_defaults(), ["--batch_sise=4"], also_from=("prepare.py",))
    with pytest.raises(SystemExit, match="config key 'batch_size' in the command line expects int"):
        configure(pretrain_defaults(), ["--batch_size=many"], also_from=("prepare.py",))
    scope = pretrain_defaults()
    configure(scope, ["--vocab_size=512", "--n_layer=3"], also_from=("prepare.py",))  # a prepare.py key is fine
    assert scope["n_layer"] == 3 and "vocab_size" not in scope


@pytest.mark.slow
def test_config_errors_end_to_end(workdir):
    r = run(workdir, *TINY, "--batch_sise=4")
    assert r.returncode == 1
    assert "unknown config key 'batch_sise' in the command line; did you mean 'batch_size'?" in r.stderr
    r = run(workdir, *TINY, "--lr_schedule=linear")
    assert "lr_schedule must be one of cosine, wsd; got 'linear'" in r.stderr


def test_missing_data_runs_prepare_first(tmp_path):
    """A stand-in prepare.py (next to a copy of pretrain.py) writes the data; pretrain.py then trains."""
    for f in ("pretrain.py", "model.py", "bpe.py", "configurator.py"):
        shutil.copy(os.path.join(ROOT, f), tmp_path)
    (tmp_path / "prepare.py").write_text(
        "import sys\nsys.path.insert(0, %r)\ndataset = 'x'\nfrom configurator import configure\n"
        "configure(globals(), also_from=('pretrain.py',))\nprint('PREPARE', sys.argv[1:])\n"
        "from test_pretrain import make_data\nmake_data('.', dataset)\n" % os.path.dirname(__file__))
    r = run(tmp_path, *TINY, "--max_iters=2", "--eval_interval=2", script=str(tmp_path / "pretrain.py"))
    assert r.returncode == 0, r.stderr
    assert "data/toy/train.bin not found: running prepare.py first" in r.stdout
    assert "PREPARE ['--dataset=toy'," in r.stdout and (tmp_path / "out/toy/last.pt").exists()
