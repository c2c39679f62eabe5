"""Soak test: kill -9 prepare.py, pretrain.py and sft.py at several moments each, run again what a user
would run next, and check that nothing is lost and that nothing half-written ever looks finished.

What it guarantees, for each stage run as a user runs it (its script, the tiny config shrunk with
--key=value, in a fresh folder with the shipped sample corpus, one thread per process):
- after every kill, whatever looks finished is whole: data/NAME exists only with a valid meta.json,
  .bin files of the sizes it states and the tokenizer it names (sha256); data/sft/NAME has a
  stats.json only when its .jsonl files hold the examples it counts; every *.pt in out/ loads with
  model.load_checkpoint;
- the next command finishes, and its outputs equal an uninterrupted run's: train.bin, val.bin and
  tokenizer.json byte for byte (prepare.py is deterministic); the weights, step and log of last.pt
  and best.pt (resuming is exact). The next command is the same one, with --init_from=resume
  (pretrain.py) or --resume (sft.py) when a last.pt exists; a run that stops on its own either
  succeeds or refuses with one line (exit status 1, no traceback) that says to add --force, and
  the test then does so;
- a lock that a killed run left is taken over, with a notice naming the dead process, by the next
  run that needs it; and no lock is left once a run has finished.

The kill moments: seeded random delays (SEED), counted from the moment a run takes its lock and
scaled to the reference run's time from that moment on, so that they fall at the same points of the
work on a slow or a fast machine; and, at the narrowest places (between two renames), a kill from
inside the process just before a given os.replace. A kill takes the whole process group, as a crash
would: the prepare.py that pretrain.py starts dies with it.
Marked slow: python -m pytest -m slow tests/test_soak.py (about 2 minutes on 2 CPU cores).
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import namedtuple

import numpy as np
import pytest

from bpe import Tokenizer
from conftest import ROOT
from model import load_checkpoint, sha256_of

pytestmark = pytest.mark.slow

SEED = 14  # any seed; another one tries other moments
PREPARE = ["prepare.py", "config/darija_tiny.py"]
PRETRAIN = ["pretrain.py", "config/darija_tiny.py", "--max_iters=30", "--eval_interval=5", "--sample_tokens=4"]
SFT = ["sft.py", "config/sft_tiny.py", "--batch_size=4", "--max_iters=30", "--warmup_iters=2", "--eval_interval=5",
       "--eval_iters=2", "--metric_items=2", "--max_new_tokens=8"]
LOCK = {"prepare.py": "data/darija_tiny.lock",  # the lock each stage takes before its work: moments count from it
        "pretrain.py": "out/darija_tiny.lock", "sft.py": "out/darija_tiny_sft.lock"}
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")

# A stage script that kills itself (SIGKILL) just before its N-th os.replace onto PATH: a kill between two renames.
KILL_INSIDE = """
import os, runpy, signal, sys
script, target, nth, sys.argv = sys.argv[1], sys.argv[2], int(sys.argv[3]), [sys.argv[1], *sys.argv[4:]]
sys.path.insert(0, os.path.dirname(script))
replace, seen = os.replace, []
def replace_or_die(src, dst):
    if os.path.normpath(dst) == target:
        seen.append(dst)
        if len(seen) == nth:
            os.kill(os.getpid(), signal.SIGKILL)
    return replace(src, dst)
os.replace = replace_or_die
runpy.run_path(script, run_name="__main__")
"""

Run = namedtuple("Run", "command moment returncode stdout stderr seconds")  # seconds: from taking its lock to the end


def workspace(path):
    """A fresh project folder: the shipped sample corpus and configs, read in place; nothing else."""
    (path / "data").mkdir(parents=True)
    (path / "data/sample").symlink_to(ROOT / "data/sample")
    (path / "config").symlink_to(ROOT / "config")
    return path


def lock_holder(path):
    try:
        return int(path.read_text().split(" ", 1)[0])
    except (OSError, ValueError):  # no lock, or one being written
        return None


def locks(work):
    """{lock file: pid} of the locks in work."""
    found = [*work.glob("data/*.lock"), *work.glob("data/sft/*.lock"), *work.glob("out/*.lock")]
    return {str(path.relative_to(work)): lock_holder(path) for path in found}


def launch(work, command, kill_after=None, kill_before=None):
    """Run command ([script, *args]) in work. kill_after: kill -9 its process group that many seconds after it
    takes its lock; kill_before=(path, n): it kills itself just before its n-th os.replace onto path."""
    script, *args = command
    argv = ([sys.executable, str(ROOT / script), *args] if kill_before is None else
            [sys.executable, "-c", KILL_INSIDE, str(ROOT / script), kill_before[0], str(kill_before[1]), *args])
    lock, locked_at, timed_out = work / LOCK[script], None, False
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, cwd=work, stdout=out, stderr=err, env=ENV, start_new_session=True)
        deadline = time.time() + 300
        while proc.poll() is None:
            if locked_at is None and lock_holder(lock) == proc.pid:
                locked_at = time.time()
            timed_out = time.time() > deadline
            if timed_out or kill_after is not None and locked_at is not None and time.time() >= locked_at + kill_after:
                os.killpg(proc.pid, signal.SIGKILL)  # the process and its children (pretrain.py's prepare.py)
                break
            time.sleep(0.005)
        proc.wait()
        assert not timed_out, f"{' '.join(command)} ran for over 300 s"
        seconds = time.time() - locked_at if locked_at else None
        for _ in range(600):  # until the whole group is gone: a killed child is a zombie until init reaps it,
            try:              # and a zombie's lock still looks held
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        out.seek(0)
        err.seek(0)
        return Run(command, dict(kill_after=kill_after, kill_before=kill_before), proc.returncode,
                   out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace"), seconds)


def story(runs):
    """What happened, for a failure's message."""
    return "\n".join(f"--- {' '.join(r.command)} {r.moment} -> exit {r.returncode}\n{r.stderr[-1500:]}" for r in runs)


def summary(work, run):
    """One line: the run, when it was killed, what it left."""
    flags = " ".join(arg for arg in run.command if arg in ("--force", "--init_from=resume", "--resume"))
    when = (f"killed {run.moment['kill_after']} s after its lock" if run.moment["kill_after"] is not None else
            f"killed before os.replace onto {run.moment['kill_before'][0]}" if run.moment["kill_before"] else
            "to its end")
    out = {"prepare.py": "data", "pretrain.py": "out/darija_tiny", "sft.py": "out/darija_tiny_sft"}[run.command[0]]
    left = sorted(str(p.relative_to(work)) for p in [*work.glob("data/darija_tiny*"), *work.glob("data/sft/*"),
                                                      *work.glob(f"{out}/*.pt*"), *work.glob("out/*.lock")])
    steps = {p.name: load_checkpoint(p)["step"] for p in sorted(work.glob(f"{out}/*.pt"))}
    return f"{run.command[0]} {flags}, {when}: exit {run.returncode}; left {', '.join(left)}; steps {steps}"


def refusal(run, runs):
    """None when the run succeeded; else the one line it refused with (a traceback or several lines fail)."""
    if run.returncode == 0:
        return None
    said = [line for line in run.stderr.splitlines() if line.strip() and not line.startswith("note: taking over")]
    assert run.returncode == 1 and len(said) == 1 and "Traceback" not in run.stderr, story(runs)
    return said[0]


def assert_nothing_half_written_looks_finished(work, runs):
    data = work / "data/darija_tiny"
    if data.exists():  # prepare.py renames it into place only when whole
        meta = json.loads((data / "meta.json").read_text(encoding="utf-8"))
        assert meta["format"] == "darija-gpt-data", story(runs)
        for split in ("train", "val"):
            size = (data / f"{split}.bin").stat().st_size
            assert size == meta[split]["tokens"] * np.dtype(meta["dtype"]).itemsize > 0, story(runs)
        assert sha256_of(data / "tokenizer.json") == meta["tokenizer_sha256"], story(runs)
        assert Tokenizer.load(data / "tokenizer.json").vocab_size == meta["vocab_size"], story(runs)
    sft_data = work / "data/sft/darija_tiny"
    if (sft_data / "stats.json").exists():  # sft.py writes it last: the dataset counts as built with it
        stats = json.loads((sft_data / "stats.json").read_text(encoding="utf-8"))
        for split in ("train", "val"):
            lines = (sft_data / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
            assert len(lines) == stats[split]["examples"] and all(map(json.loads, lines)), story(runs)
    for path in work.glob("out/*/*.pt"):
        try:
            load_checkpoint(path)
        except ValueError as e:
            raise AssertionError(f"{e}\n{story(runs)}") from None


def soak(work, command, moments, next_command):
    """Run command, kill it at moments[0]; run next_command(previous command, its refusal or None), kill it at
    moments[1]; ... then run next commands to their end. Checks each run; returns them all."""
    runs, moments = [], list(moments)
    while True:
        held = locks(work)  # left by killed runs
        moment = moments.pop(0) if moments else {}
        run = launch(work, command, **moment)
        runs.append(run)
        now = locks(work)
        for path, pid in held.items():  # a lock this run claimed (released at its exit, or now its own)
            if now.get(path) != pid:
                assert f"note: taking over {path}, left by process {pid}, which is gone" in run.stderr, story(runs)
        assert_nothing_half_written_looks_finished(work, runs)
        killed = run.returncode == -signal.SIGKILL
        refused = None if killed else refusal(run, runs)
        print(summary(work, run))  # shown with pytest -s
        if not killed and not refused and not moments:
            return runs
        assert len(runs) < 20, story(runs)
        command = next_command(command, refused)


def kill_moments(script, seconds, n):
    """n seeded kill moments within a run of this stage that lasts `seconds` from taking its lock."""
    rng = random.Random(f"{SEED}:{script}")
    return [dict(kill_after=round(rng.uniform(0.02, 0.98) * seconds, 3)) for _ in range(n)]


def assert_same_files(a, b, names):
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{a / name} differs from the uninterrupted run's"


def assert_same_data(work, ref):
    assert_same_files(work / "data/darija_tiny", ref / "data/darija_tiny", ("train.bin", "val.bin", "tokenizer.json"))
    got, want = (json.loads((w / "data/darija_tiny/meta.json").read_text(encoding="utf-8")) for w in (work, ref))
    assert {**got, "seconds": None} == {**want, "seconds": None}  # all but the timings


def assert_same_checkpoints(out, ref_out, runs):
    for name in ("best.pt", "last.pt"):
        got, want = load_checkpoint(out / name), load_checkpoint(ref_out / name)
        assert got["model"].keys() == want["model"].keys()
        diff = max((got["model"][k] - want["model"][k]).abs().max().item() for k in want["model"])
        assert diff == 0, (f"{out / name}: weights differ from the uninterrupted run's by up to {diff:.2e}\n"
                           + story(runs))
        assert (got["step"], got["best_val_loss"]) == (want["step"], want["best_val_loss"]), story(runs)
    assert sorted(os.listdir(out)) == sorted(os.listdir(ref_out)), story(runs)  # no temporary file left either


def assert_no_locks_left(work, runs, allowed=()):
    left = {path: pid for path, pid in locks(work).items() if path not in allowed}
    assert not left, f"locks left after the last run finished: {left}\n{story(runs)}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Each stage run once without a kill: the outputs to match, and each run's seconds from taking its lock."""
    ref, seconds = workspace(tmp_path_factory.mktemp("reference")), {}
    for command in (PREPARE, PRETRAIN, SFT):
        run = launch(ref, command)
        assert run.returncode == 0, story([run])
        seconds[command[0]] = run.seconds
    return ref, seconds


def test_prepare_killed_then_run_again(tmp_path, reference):
    """A first build (no data/NAME yet), killed at random moments and between its work folder and its rename;
    then --force rebuilds killed at random moments and between the renames of data/NAME to .old and of the
    new one in. Each killed build is followed by the same command, which must build what an uninterrupted run does."""
    ref, seconds = reference
    work = workspace(tmp_path)

    def same(command, refused):  # the same command again: prepare.py has no reason to refuse
        assert not refused, f"the re-run refused: {refused}"
        return command

    runs = []
    for moment in [*kill_moments("prepare.py", seconds["prepare.py"], 3), dict(kill_before=("data/darija_tiny", 1))]:
        shutil.rmtree(work / "data/darija_tiny", ignore_errors=True)  # a first build: else nothing to do
        runs += soak(work, PREPARE, [moment], same)
        assert_same_data(work, ref)
    moments = [dict(kill_before=("data/darija_tiny.old", 1)), dict(kill_before=("data/darija_tiny", 1)),
               *kill_moments("prepare.py --force", seconds["prepare.py"], 3)]
    runs += soak(work, [*PREPARE, "--force"], moments, same)  # each re-run rebuilds: a kill in each
    assert_same_data(work, ref)
    assert sorted(os.listdir(work / "data")) == ["darija_tiny", "sample"], story(runs)  # no .partial, .old, .lock


def test_pretrain_killed_then_resumed(tmp_path, reference):
    """From a folder without data (pretrain.py runs prepare.py first), killed at random moments and resumed; then
    started over (--force) and killed between best.pt and the first last.pt: the re-run refuses in one line,
    saying to add --force, and then starts over."""
    ref, seconds = reference
    work = workspace(tmp_path)

    def next_command(command, refused):
        base = [arg for arg in command if arg not in ("--force", "--init_from=resume")]
        if refused:
            assert "already holds a run" in refused and "--force" in refused, f"the re-run refused: {refused}"
            return [*base, "--force"]
        return [*base, "--init_from=resume"] if (work / "out/darija_tiny/last.pt").exists() else base

    runs = soak(work, PRETRAIN, kill_moments("pretrain.py", seconds["pretrain.py"], 4), next_command)
    assert_same_data(work, ref)
    assert_same_checkpoints(work / "out/darija_tiny", ref / "out/darija_tiny", runs)
    moments = [dict(kill_before=("out/darija_tiny/last.pt", 1)),
               *kill_moments("pretrain.py --force", seconds["pretrain.py"], 2)]
    runs += soak(work, [*PRETRAIN, "--force"], moments, next_command)
    assert any("already holds a run" in r.stderr for r in runs), story(runs)
    assert_same_checkpoints(work / "out/darija_tiny", ref / "out/darija_tiny", runs)
    got, want = ([{**json.loads(line), "tokens_per_sec": None, "mfu": None}  # all but the timings
                  for line in (w / "out/darija_tiny/log.jsonl").read_text(encoding="utf-8").splitlines()]
                 for w in (work, ref))
    assert got == want, story(runs)  # each step once, in order, with the uninterrupted run's values
    assert_no_locks_left(work, runs)


def sft_workspace(path, ref):
    """A fresh folder with the reference's data and base model (copied), as sft.py needs them."""
    work = workspace(path)
    shutil.copytree(ref / "data/darija_tiny", work / "data/darija_tiny")
    shutil.copytree(ref / "out/darija_tiny", work / "out/darija_tiny")
    return work


def next_sft(work):
    def next_command(command, refused):
        base = [arg for arg in command if arg not in ("--force", "--resume")]
        if refused:
            assert "already holds a checkpoint" in refused and "--force" in refused, f"the re-run refused: {refused}"
            return [*base, "--force"]
        return [*base, "--resume"] if (work / "out/darija_tiny_sft/last.pt").exists() else base
    return next_command


def test_sft_killed_then_resumed(tmp_path, reference):
    """Building its dataset, then fine-tuning: killed at random moments, resumed with --resume."""
    ref, seconds = reference
    work = sft_workspace(tmp_path, ref)
    runs = soak(work, SFT, kill_moments("sft.py", seconds["sft.py"], 4), next_sft(work))
    assert_same_files(work / "data/sft/darija_tiny", ref / "data/sft/darija_tiny",
                      ("train.jsonl", "val.jsonl", "stats.json"))
    assert_same_checkpoints(work / "out/darija_tiny_sft", ref / "out/darija_tiny_sft", runs)
    got, want = (json.loads((w / "out/darija_tiny_sft/metrics.json").read_text(encoding="utf-8")) for w in (work, ref))
    for key in ("best_step", "best_val_loss", "steps", "base", "sft"):
        assert got[key] == want[key], f"metrics.json: {key} {got[key]} != {want[key]}\n{story(runs)}"
    # sft.py claims data/sft/NAME only to build it: a lock a kill left there waits for the next build
    assert_no_locks_left(work, runs, allowed=("data/sft/darija_tiny.lock",))


def test_sft_killed_between_its_dataset_files(tmp_path, reference):
    """Killed after writing train.jsonl, before val.jsonl: the same command builds the dataset again."""
    ref, _ = reference
    work = sft_workspace(tmp_path, ref)
    runs = soak(work, SFT, [dict(kill_before=("data/sft/darija_tiny/val.jsonl", 1))], next_sft(work))
    assert_same_files(work / "data/sft/darija_tiny", ref / "data/sft/darija_tiny",
                      ("train.jsonl", "val.jsonl", "stats.json"))
    assert sorted(os.listdir(work / "data/sft/darija_tiny")) == ["stats.json", "train.jsonl", "val.jsonl"], \
        story(runs)  # no temporary file left either
    assert_same_checkpoints(work / "out/darija_tiny_sft", ref / "out/darija_tiny_sft", runs)
    assert_no_locks_left(work, runs)
