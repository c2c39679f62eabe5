"""pretrain.py end to end on a tiny synthetic corpus: loss falls, exact resume, DDP, signals, errors,
and what it refuses: another folder's files, a second run, data with another tokenizer or settings."""
import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT

# pretrain.py hands its arguments to prepare.py on every start, so they carry the data settings too
DATA = ["--dataset=toy", "--sources=[{'path': 'corpus.txt'}]", "--vocab_size=320", "--val_fraction=0.1"]
MODEL = ["--n_layer=2", "--n_embd=64", "--n_head=2", "--n_kv_head=2", "--block_size=32", "--batch_size=8",
         "--eval_iters=2", "--sample_tokens=0", "--warmup_iters=5", "--log_interval=1"]
TINY = [*DATA, *MODEL]


def write_corpus(path):
    """Made-up words in 30 phrases that repeat, one document per line: a corpus whose loss falls fast."""
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=rng.integers(2, 7))) for _ in range(60)]
    phrases = [" ".join(rng.choice(words, size=rng.integers(2, 5))) for _ in range(30)]
    docs = [" ".join(phrases[i] for i in rng.integers(0, 30, size=rng.integers(2, 6))) for _ in range(3000)]
    path.write_text("\n".join(docs) + "\n")


def make_data(root, name="toy"):
    """data/NAME/{train,val}.bin + meta.json in the format of docs/formats.md, written directly (for the
    stand-in prepare.py below): phrases that repeat, so loss can fall."""
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


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    """data/toy built once by the real prepare.py, so that its check on every start finds it up to date."""
    root = tmp_path_factory.mktemp("toy")
    write_corpus(root / "corpus.txt")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "prepare.py"), *DATA], cwd=root, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return root


@pytest.fixture
def workdir(tmp_path, toy_data):
    shutil.copytree(toy_data / "data", tmp_path / "data")
    shutil.copy(toy_data / "corpus.txt", tmp_path)
    return tmp_path


def run(cwd, *args, script=os.path.join(ROOT, "pretrain.py"), launcher=()):
    return subprocess.run([sys.executable, *launcher, script, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})


def run_here(monkeypatch, cwd, *args):
    """pretrain.py in this process (no interpreter and torch to start: fast). Its signal handlers and the
    out_dir lock (released only when a process exits) are undone after it."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["pretrain.py", *args])
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        runpy.run_path(os.path.join(ROOT, "pretrain.py"), run_name="__main__")
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
        for lock in (cwd / "out").glob("*.lock"):
            lock.unlink()


def start(cwd, *args):
    """pretrain.py in the background (stopped by the test)."""
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "pretrain.py"), *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})


def wait_for_log(path, records=1):
    deadline = time.time() + 60
    while time.time() < deadline:
        if path.exists() and path.read_text().count("\n") >= records:
            return
        time.sleep(0.1)
    raise AssertionError(f"{path} did not get {records} records in 60 s")


def losses(path):
    with open(path) as f:
        return [(r["iter"], r["loss"]) for r in map(json.loads, f) if "loss" in r]


def one_line_error(r, *texts):
    """Exit status 1 and a single line on stderr (no traceback) that says each of texts."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and all(t in lines[0] for t in texts), r.stderr[-3000:]


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


def test_fp16_with_grad_scaler_trains_and_resumes_exactly(workdir, monkeypatch):
    """float16 autocast + GradScaler (what a T4 or V100 trains in) on the CPU: the loss falls, and 3 steps +
    resume to 6 equal 6 uninterrupted ones, the loss scale and its growth count included (kept in last.pt)."""
    import torch
    common = [*TINY, "--dtype=float16", "--eval_interval=3", "--lr_decay_iters=6", "--warmup_iters=2"]
    run_here(monkeypatch, workdir, *common, "--max_iters=6", "--out_dir=out/full")
    full = losses(workdir / "out/full/log.jsonl")
    assert len(full) == 6 and full[-1][1] < full[0][1] - 0.3, full
    run_here(monkeypatch, workdir, *common, "--max_iters=3", "--out_dir=out/part")
    run_here(monkeypatch, workdir, *common, "--max_iters=6", "--out_dir=out/part", "--init_from=resume")
    assert losses(workdir / "out/part/log.jsonl") == full
    scalers = [torch.load(workdir / f"out/{run_}/last.pt", weights_only=True)["scaler"] for run_ in ("full", "part")]
    assert scalers[0] == scalers[1] and scalers[0]["_growth_tracker"] > 0 and scalers[0]["scale"] > 0


def test_speed_leaves_out_the_first_step(workdir, monkeypatch):
    """tokens/s (and MFU, ETA) are timed after the first step, which compiles and warms up: a first step of
    100 s (on a clock that jumps at its forward pass) must not show in the speed of the steps after it."""
    import model
    real_forward, real_time, offset = model.GPT.forward, time.time, [0.0]

    def slow_first_forward(self, *args, **kwargs):
        offset[0] = 100.0  # from the first forward on: 100 s later than the real clock
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(model.GPT, "forward", slow_first_forward)
    monkeypatch.setattr(time, "time", lambda: real_time() + offset[0])
    run_here(monkeypatch, workdir, *TINY, "--max_iters=5", "--eval_interval=5", "--out_dir=out/t")
    with open(workdir / "out/t/log.jsonl") as f:
        speeds = [r["tokens_per_sec"] for r in map(json.loads, f) if "loss" in r]
    tokens_per_step = 8 * 32
    # counting the first step, step 2 would average ~90 s a step (2.8 tokens/s); each real step takes under 20 s
    assert speeds[0] is None and all(s > tokens_per_step / 20 for s in speeds[1:]), speeds


def test_many_passes_stop_early_and_a_resumed_run_stops_at_the_same_step(workdir):
    """Over 4 passes over the data it says so, and stops `patience` evaluations after the best val (here val never
    improves: lr 0). Counted from best.pt's step, so a resumed run stops where an uninterrupted one does."""
    common = [*TINY, "--eval_interval=5", "--patience=2", "--learning_rate=0", "--min_lr=0", "--lr_decay_iters=900"]
    r = run(workdir, *common, "--max_iters=900", "--out_dir=out/full")
    assert r.returncode == 0, r.stderr
    assert "more than 4, so training stops once val has not improved for 2 evaluations" in r.stdout
    assert "stopped early at step 15: val has not improved for 2 evaluations; best.pt holds step 5" in r.stdout
    full = losses(workdir / "out/full/log.jsonl")
    assert [i for i, _ in full] == list(range(1, 16))

    r = run(workdir, *common, "--max_iters=10", "--out_dir=out/part")  # few passes: no early stop
    assert r.returncode == 0 and " passes over the " in r.stdout and "more than 4" not in r.stdout
    r = run(workdir, *common, "--max_iters=900", "--out_dir=out/part", "--init_from=resume")
    assert "stopped early at step 15" in r.stdout and losses(workdir / "out/part/log.jsonl") == full
    r = run(workdir, *common, "--max_iters=900", "--out_dir=out/full", "--init_from=resume")  # stopped: stays so
    assert r.returncode == 0 and "step 16" not in r.stdout and losses(workdir / "out/full/log.jsonl") == full


def test_muon_loss_falls_and_resume_equals_uninterrupted(workdir):
    common = [*TINY, "--optimizer=muon", "--muon_lr=0.02", "--eval_interval=6", "--lr_decay_iters=12"]
    assert run(workdir, *common, "--max_iters=12", "--out_dir=out/full").returncode == 0
    full = losses(workdir / "out/full/log.jsonl")
    assert np.mean([v for _, v in full[-3:]]) < 0.9 * np.mean([v for _, v in full[:3]])
    assert run(workdir, *common, "--max_iters=6", "--out_dir=out/part").returncode == 0
    r = run(workdir, *common, "--max_iters=12", "--out_dir=out/part", "--init_from=resume")
    assert r.returncode == 0 and losses(workdir / "out/part/log.jsonl") == full
    r = run(workdir, *TINY, "--max_iters=12", "--out_dir=out/part", "--init_from=resume")
    one_line_error(r, "out/part/last.pt was trained with --optimizer=muon: resume with it")


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
    r = run(workdir, *common, "--dataset=elsewhere",
            launcher=("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"))
    assert r.returncode != 0 and "data/elsewhere/train.bin not found: run `python prepare.py" in r.stderr
    a, b = losses(workdir / "out/one/log.jsonl"), losses(workdir / "out/two/log.jsonl")
    assert [i for i, _ in a] == [i for i, _ in b] == list(range(1, 7))
    assert np.allclose([v for _, v in a], [v for _, v in b], rtol=1e-4)


@pytest.mark.slow
def test_several_machines_must_share_out_dir(workdir, tmp_path_factory):
    """Two "machines" (a process each, each its own working folder, so out/toy is not one folder): only rank 0
    writes checkpoints, yet every process resumes from them; a one-line refusal, not a hang or a mix."""
    import socket
    other = tmp_path_factory.mktemp("machine2")
    shutil.copytree(workdir / "data", other / "data")
    shutil.copy(workdir / "corpus.txt", other)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, "pretrain.py"), *TINY, "--max_iters=2"], cwd=cwd,
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "WORLD_SIZE": "2",
                                   "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": str(port)})
             for rank, cwd in enumerate((workdir, other))]
    (_, first), (_, second) = (proc.communicate(timeout=120) for proc in procs)
    assert [proc.returncode for proc in procs] == [1, 1] and second.strip() == "", second
    assert first.strip().splitlines()[-1] == ("out_dir out/toy is not one folder shared by all machines (another "
                                              "machine does not see the first one's out/toy.lock): put it on a "
                                              "shared file system"), first
    assert not (other / "out/toy").exists()


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


def stand_in(tmp_path, body):
    """A copy of pretrain.py next to a stand-in prepare.py that prints its arguments, then runs body."""
    for f in ("pretrain.py", "model.py", "bpe.py", "configurator.py"):
        shutil.copy(os.path.join(ROOT, f), tmp_path)
    (tmp_path / "prepare.py").write_text(
        "import sys\nsys.path.insert(0, %r)\ndataset = 'x'\nfrom configurator import configure\n"
        "configure(globals(), also_from=('pretrain.py',))\nprint('PREPARE', sys.argv[1:], flush=True)\n%s\n"
        % (os.path.dirname(__file__), body))
    return str(tmp_path / "pretrain.py")


def test_prepare_runs_on_every_start_without_force(tmp_path):
    """A stand-in prepare.py writes the data when it is missing, and is asked again on every start (so
    that it can refuse changed settings), never with --force: that flag means "start training over"."""
    script = stand_in(tmp_path, "from test_pretrain import make_data\nmake_data('.', dataset)")
    r = run(tmp_path, "--dataset=toy", *MODEL, "--max_iters=2", "--eval_interval=2", script=script)
    assert r.returncode == 0, r.stderr
    assert "data/toy/train.bin not found: running prepare.py first" in r.stdout
    assert "PREPARE ['--dataset=toy'," in r.stdout and (tmp_path / "out/toy/last.pt").exists()
    r = run(tmp_path, "--dataset=toy", "--force", *MODEL, "--max_iters=2", "--eval_interval=2", script=script)
    assert r.returncode == 0, r.stderr
    assert "PREPARE ['--dataset=toy', '--n_layer=2'," in r.stdout and "not found" not in r.stdout


def test_ctrl_c_while_prepare_runs_is_one_line(tmp_path):
    script = stand_in(tmp_path, "import time\ntry:\n    print('WORKING', flush=True)\n    time.sleep(60)\n"
                                "except KeyboardInterrupt:\n    sys.exit('prepare.py: interrupted')")
    proc = subprocess.Popen([sys.executable, script, "--dataset=toy", *MODEL], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    for line in proc.stdout:
        if "WORKING" in line:
            break
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group: both scripts
    _, err = proc.communicate(timeout=60)
    lines = err.strip().splitlines()
    assert proc.returncode == 1 and "Traceback" not in err and "interrupted" in lines[-1], err


@pytest.mark.slow
def test_force_starts_over_only_in_a_folder_of_its_own(workdir):
    """out_dir holding anything pretrain.py does not write is refused, with or without --force."""
    out = workdir / "out/mine"
    out.mkdir(parents=True)
    (out / "last.pt").write_bytes(b"not ours?")
    (out / "notes.txt").write_text("a user's notes")
    (out / "runs").mkdir()
    for flag in ([], ["--force"], ["--init_from=resume"]):
        r = run(workdir, *TINY, "--max_iters=2", "--out_dir=out/mine", *flag)
        one_line_error(r, "out/mine holds files that pretrain.py did not write: notes.txt, runs/")
    assert sorted(os.listdir(out)) == ["last.pt", "notes.txt", "runs"] and (out / "last.pt").read_bytes() == b"not ours?"
    one_line_error(run(workdir, *TINY, "--out_dir=corpus.txt", "--force"), "out_dir corpus.txt is a file, not a folder")
    # only its own outputs (and a temporary file a kill left): --force starts over, nothing of the old run left
    os.remove(out / "notes.txt")
    (out / "runs").rmdir()
    (out / "best.pt").write_bytes(b"old")
    (out / "log.jsonl").write_text('{"iter": 99, "loss": 1.0}\n')
    (out / "last.pt.tmp4242").write_bytes(b"half")
    r = run(workdir, *TINY, "--max_iters=2", "--out_dir=out/mine")
    one_line_error(r, "out/mine already holds a run")
    r = run(workdir, *TINY, "--max_iters=2", "--eval_interval=100", "--out_dir=out/mine", "--force")
    assert r.returncode == 0, r.stderr
    assert set(os.listdir(out)) <= {"best.pt", "last.pt", "log.jsonl", "loss.png"} and (out / "best.pt").stat().st_size > 3
    assert [i for i, _ in losses(out / "log.jsonl")] == [1, 2]


def test_dataset_must_be_a_plain_name(workdir):
    cwd = workdir / "a/b"  # a name that escapes data/ would land in workdir/a, never outside workdir
    cwd.mkdir(parents=True)
    shutil.copy(workdir / "corpus.txt", cwd)
    r = run(cwd, *TINY, "--dataset=../../victim", "--max_iters=2")
    one_line_error(r, "dataset must be a plain name (one folder name: no '/', no '..'), got '../../victim'")
    assert sorted(os.listdir(workdir / "a")) == ["b"] and sorted(os.listdir(cwd)) == ["corpus.txt"]


@pytest.mark.slow
def test_a_second_run_on_the_same_out_dir_is_refused(workdir):
    first = start(workdir, *TINY, "--max_iters=100000", "--eval_interval=100000")
    try:
        wait_for_log(workdir / "out/toy/log.jsonl")
        r = run(workdir, *TINY, "--max_iters=2", "--force")
        one_line_error(r, f"out/toy is in use by process {first.pid}")
    finally:
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=60)
    assert first.returncode == 0 and "saved out/toy/last.pt" in out, err
    assert not (workdir / "out/toy.lock").exists()  # released at exit


def test_resume_refuses_data_with_another_tokenizer(workdir):
    """Rebuilding the data with another tokenizer, then resuming, is refused naming both tokenizers;
    the checkpoint is left as it was (its tokenizer hash is what chat.py checks)."""
    assert run(workdir, *TINY, "--max_iters=2", "--eval_interval=2").returncode == 0
    old_meta = json.loads((workdir / "data/toy/meta.json").read_text())
    before = (workdir / "out/toy/last.pt").read_bytes()
    other = ["--pattern=gpt4", "--vocab_size=300"]
    r = subprocess.run([sys.executable, os.path.join(ROOT, "prepare.py"), *DATA, *other, "--force"], cwd=workdir,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    new_meta = json.loads((workdir / "data/toy/meta.json").read_text())
    r = run(workdir, *TINY, *other, "--max_iters=4", "--init_from=resume")
    one_line_error(r, "cannot resume", "data/toy", "out/toy/last.pt", new_meta["tokenizer_sha256"][:12],
                   old_meta["tokenizer_sha256"][:12], "vocab_size 300", "vocab_size 320")
    assert (workdir / "out/toy/last.pt").read_bytes() == before


def test_changed_data_settings_are_refused(tmp_path):
    """data/darija_tiny built at vocab_size 1024, then pretrain.py asks for 2048: prepare.py refuses
    (it used to train a 1,024-token model silently)."""
    shutil.copytree(os.path.join(ROOT, "data/sample/pretrain"), tmp_path / "data/sample/pretrain")
    config = os.path.join(ROOT, "config/darija_tiny.py")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "prepare.py"), config], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = run(tmp_path, config, "--vocab_size=2048", "--out_dir=out/x")
    one_line_error(r, "prepare.py: data/darija_tiny", "vocab_size", "2048", "--force")  # with the rebuild command
    assert not (tmp_path / "out/x").exists()


@pytest.mark.slow
def test_damaged_data_is_one_line(workdir):
    meta = workdir / "data/toy/meta.json"
    meta.rename(workdir / "meta.json")
    one_line_error(run(workdir, *TINY, "--max_iters=2"), "data/toy", "meta.json")
    (workdir / "meta.json").rename(meta)
    (workdir / "data/toy/val.bin").write_bytes(b"")
    one_line_error(run(workdir, *TINY, "--max_iters=2"), "data/toy/val.bin holds 0 tokens", "--force")


def test_empty_checkpoint_is_one_line(workdir):
    (workdir / "out/toy").mkdir(parents=True)
    (workdir / "out/toy/last.pt").write_bytes(b"")  # a full disk
    r = run(workdir, *TINY, "--max_iters=2", "--init_from=resume")
    one_line_error(r, "cannot resume: out/toy/last.pt is not a readable checkpoint")


@pytest.mark.parametrize("device", ["cuda", pytest.param("cuda:1", marks=pytest.mark.slow),
                                    pytest.param("mps", marks=pytest.mark.slow)])
def test_a_missing_device_is_one_line(workdir, device):
    import torch
    count = torch.cuda.device_count() if device.startswith("cuda") else int(torch.backends.mps.is_available())
    if count > (1 if device == "cuda:1" else 0):
        pytest.skip(f"this machine has {device}")
    from model import GPT, GPTConfig, save_checkpoint  # a good checkpoint: it used to be blamed as a corrupt one
    save_checkpoint(str(workdir / "out/toy/last.pt"), GPT(GPTConfig(n_layer=1, n_embd=32, n_head=2, n_kv_head=2)))
    for flags in ([], ["--init_from=resume"]):
        r = run(workdir, *TINY, "--max_iters=2", f"--device={device}", *flags)
        one_line_error(r, f"device {device!r}", "this machine has", "--device=cpu")


@pytest.mark.slow
def test_resume_keeps_the_log_up_to_the_resumed_step(workdir):
    """A run killed after logging past its last checkpoint: the resumed run logs each step once, in order."""
    common = [*TINY, "--eval_interval=5", "--lr_decay_iters=20"]
    assert run(workdir, *common, "--max_iters=10").returncode == 0
    log = workdir / "out/toy/log.jsonl"
    with open(log, "a") as f:  # steps 11-13 logged, then killed (mid-line) before step 15's checkpoint
        f.writelines(json.dumps({"iter": i, "loss": 9.0}) + "\n" for i in (11, 12, 13))
        f.write('{"iter": 14, "lo')
    r = run(workdir, *common, "--max_iters=20", "--init_from=resume")
    assert r.returncode == 0 and "resuming out/toy/last.pt at step 10" in r.stdout, r.stderr
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["iter"] for r in records if "loss" in r] == list(range(1, 21))
    assert [r["iter"] for r in records if "val_loss" in r] == [5, 10, 15, 20]
    assert 9.0 not in [r["loss"] for r in records if "loss" in r]


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(workdir):
    common = [*TINY, "--eval_interval=7", "--max_iters=60"]
    assert run(workdir, *common, "--out_dir=out/full").returncode == 0
    for flags, records in (([], 12), (["--init_from=resume"], 30)):  # killed with steps logged past a checkpoint
        proc = start(workdir, *common, *flags)
        wait_for_log(workdir / "out/toy/log.jsonl", records)
        proc.kill()
        proc.communicate()
    r = run(workdir, *common, "--init_from=resume")
    assert r.returncode == 0 and "taking over out/toy.lock" in r.stderr, r.stderr
    assert losses(workdir / "out/toy/log.jsonl") == losses(workdir / "out/full/log.jsonl")
