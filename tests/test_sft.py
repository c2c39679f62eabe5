"""sft.py: the chat mask, the dataset builder (both directions, no leak), training that lowers the
val loss, early stopping, the task metric (eval.py's, copied into metrics.json), and a clear error
for each bad input. A tiny tokenizer and a tiny GPT are made here, so nothing needs a pre-trained
model or ../shared."""
import hashlib
import io
import json
import os
import runpy
import signal
import subprocess
import sys
from collections import Counter
from contextlib import redirect_stdout

import pytest
import torch

import configurator
from bpe import Tokenizer
from conftest import ROOT, sft_mixture_parquet
from model import GPT, GPTConfig, load_checkpoint, save_checkpoint

PAIRS = [dict(darija=f"jomla {i} dyal darija", darija_ar=f"جملة {i} ديال الدارجة" if i % 2 else "",
              eng=f"sentence number {i}") for i in range(60)]
PAIRS += [dict(darija="ah", darija_ar="", eng="yes"), dict(darija="iyeh", darija_ar="", eng="yes"),
          dict(darija="ah", darija_ar="", eng="yes")]  # two share "yes"; the third is a duplicate
CONVS = [{"messages": [{"role": "user", "content": f"salam {i}"}, {"role": "assistant", "content": f"wa3alaykom salam {i}"}]}
         for i in range(10)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def make_base(workdir, name, merges_text, merges=40, block_size=64):
    """A tokenizer trained on merges_text and a random tiny GPT saved as out/NAME/best.pt."""
    (workdir / "data" / name).mkdir(parents=True, exist_ok=True)
    tok_path = f"data/{name}/tokenizer.json"
    tok = Tokenizer.train(merges_text, 256 + 5 + merges)
    tok.save(workdir / tok_path)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=1, n_head=2, n_kv_head=2, n_embd=32))
    save_checkpoint(workdir / "out" / name / "best.pt", model, kind="base", tokenizer=tok_path,
                    tokenizer_sha256=hashlib.sha256((workdir / tok_path).read_bytes()).hexdigest())
    return tok


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("sft")
    write_jsonl(d / "pairs.jsonl", PAIRS)
    write_jsonl(d / "conv.jsonl", CONVS)
    text = [json.dumps(r, ensure_ascii=False) for r in PAIRS + CONVS]
    make_base(d, "base", text)
    make_base(d, "other", ["a completely different text, so other merges " * 20], merges=20)
    cfg = d / "sft_test.py"
    cfg.write_text('init_from = "out/base"\nsft_dataset = "t"\nval_fraction = 0.25\n'
                   'sources = [dict(path="conv.jsonl", kind="conversations"),\n'
                   '           dict(path="pairs.jsonl", kind="pairs", latin="darija", arabic="darija_ar", english="eng")]\n'
                   'batch_size = 4\nblock_size = 48\nmetric_items = 0\neval_iters = 4\nwarmup_iters = 2\n'
                   'sample_prompts = ["salam 1"]\nmax_new_tokens = 4\n', encoding="utf-8")
    return d


def run_sft(work, monkeypatch, *args):
    """Run sft.py in-process (no new interpreter: fast) in `work`; return what it printed. The folders
    it locks (configurator.claim) are unlocked after the run: in-process, the locks would last until
    pytest exits and refuse the next run on the same folder."""
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "argv", ["sft.py", "sft_test.py", *args])
    locks, real_claim = [], configurator.claim

    def claim_and_remember(folder):
        locks.append(real_claim(folder))
        return locks[-1]

    monkeypatch.setattr(configurator, "claim", claim_and_remember)
    out = io.StringIO()
    try:
        with redirect_stdout(out):
            runpy.run_path(str(ROOT / "sft.py"), run_name="__main__")
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    finally:
        for lock in locks:
            if os.path.exists(lock):
                os.remove(lock)
    return out.getvalue()


def start_stage(work, script, *args):
    """Start a stage as its own process; return it once it prints its first "step" line (training has begun)."""
    proc = subprocess.Popen([sys.executable, "-u", str(ROOT / script), *args], cwd=work, text=True, encoding="utf-8",
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, OMP_NUM_THREADS="1"))
    for line in proc.stdout:
        if line.startswith("step"):
            return proc
    raise AssertionError(f"{script} ended before training (exit {proc.wait()}): {proc.stderr.read()}")


def test_mask_is_exactly_the_assistant_tokens_and_their_end(work):
    tok = Tokenizer.load(work / "data/base/tokenizer.json")
    msgs = [{"role": "system", "content": "kun mzyan"}, {"role": "user", "content": "salam"},
            {"role": "assistant", "content": "wa3alaykom"}, {"role": "user", "content": "labas?"},
            {"role": "assistant", "content": "labas hamdollah"}]
    ids, mask = tok.render_conversation(msgs)
    end = tok.special_tokens["<|end|>"]
    assert [i for i, m in zip(ids, mask) if m] == (tok.encode_ordinary("wa3alaykom") + [end]
                                                  + tok.encode_ordinary("labas hamdollah") + [end])
    assert tok.decode(ids) == ("<|endoftext|><|system|>kun mzyan<|end|><|user|>salam<|end|><|assistant|>"
                               "wa3alaykom<|end|><|user|>labas?<|end|><|assistant|>labas hamdollah<|end|>")
    prompt = tok.render_for_completion(msgs[:4])
    assert prompt == ids[:len(prompt)] and prompt[-1] == tok.special_tokens["<|assistant|>"]


def test_builder_makes_both_directions_without_leaks(work, monkeypatch):
    out = run_sft(work, monkeypatch, "--build_only", "--sft_dataset=build")
    d = work / "data/sft/build"
    train, val = ([json.loads(x) for x in (d / f"{s}.jsonl").read_text("utf-8").splitlines()] for s in ("train", "val"))
    stats = json.loads((d / "stats.json").read_text("utf-8"))
    assert set(Counter(ex["task"] for ex in train)) == {"dar2en", "en2dar", "lat2ar", "ar2lat", "chat"}
    assert stats["sources"][1]["duplicates"] == 1 and stats["items"] == 10 + 62
    assert stats["train"]["examples"] == len(train) and stats["val"]["examples"] == len(val) > 0
    assert 0 < stats["train"]["assistant_share"] < 1 and "assistant share" in out

    def sentences(examples):
        return {m["content"] for ex in examples for m in ex["messages"] if m["role"] == "assistant"} | \
               {ex["input"] for ex in examples if "input" in ex}
    assert not sentences(train) & sentences(val)  # no sentence on both sides, "yes" included
    phrasings = {ex["messages"][-2]["content"].replace(ex["input"], "{x}") for ex in train if ex["task"] == "dar2en"}
    assert len(phrasings) >= 4  # not one fixed template
    with pytest.raises(SystemExit, match="already exists; add --force"):
        run_sft(work, monkeypatch, "--build_only", "--sft_dataset=build")


def val_losses(log):
    return [float(line.split("val loss ")[1].split()[0]) for line in log.splitlines() if line.startswith("step") and "val loss" in line]


def test_a_few_steps_lower_the_val_loss_and_write_an_sft_checkpoint(work, monkeypatch):
    log = run_sft(work, monkeypatch, "--out_dir=out/train", "--max_iters=30", "--eval_interval=15",
                  "--learning_rate=1e-2", "--metric_items=3")
    losses = val_losses(log)
    assert len(losses) == 3 and losses[-1] < losses[0] - 0.5, log
    ckpt = load_checkpoint(str(work / "out/train"))
    assert ckpt["kind"] == "sft" and ckpt["tokenizer"] == "data/base/tokenizer.json"
    metrics = json.loads((work / "out/train/metrics.json").read_text())
    report = json.loads((work / "out/train/eval/report.json").read_text("utf-8"))  # eval.py's, base vs best.pt
    assert [(c["path"], c["kind"]) for c in report["checkpoints"]] == [("out/base", "base"), ("out/train/best.pt", "sft")]
    assert (metrics["base"], metrics["sft"]) == tuple(c["translation"] for c in report["checkpoints"])
    assert set(metrics["sft"]) == {"lat2ar", "dar2en", "en2dar", "ar2lat"} and metrics["sft"]["lat2ar"]["items"] == 3
    with pytest.raises(SystemExit, match="already holds a checkpoint: add --force"):
        run_sft(work, monkeypatch, "--out_dir=out/train", "--max_iters=1")


def test_metric_skip_scores_later_held_out_items(work, monkeypatch):
    run_sft(work, monkeypatch, "--out_dir=out/skip", "--max_iters=0", "--metric_items=2", "--metric_skip=1")
    val = [json.loads(line) for line in (work / "data/sft/t/val.jsonl").read_text("utf-8").splitlines()]
    held_out = [ex for ex in val if ex["task"] == "lat2ar"]
    scored = json.loads((work / "out/skip/metrics.json").read_text("utf-8"))["sft"]["lat2ar"]
    assert len(held_out) >= 2 and scored["items"] == min(2, len(held_out) - 1)
    assert scored["example"]["input"] == held_out[1]["input"]  # the first item was passed over


def test_early_stopping_when_val_stops_improving(work, monkeypatch):
    log = run_sft(work, monkeypatch, "--out_dir=out/stop", "--learning_rate=0.0", "--min_lr=0.0",
                  "--max_iters=1000", "--eval_interval=5", "--patience=2")
    assert "early stop at step 10: val has not improved for 2 evals (best" in log
    assert len(val_losses(log)) == 3 and load_checkpoint(str(work / "out/stop"))["step"] == 0


@pytest.mark.parametrize("rows, message", [
    ([CONVS[0], {"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "salam"}]}],
     r"bad.jsonl line 2: message 0: expected .*user.*got .*assistant"),  # bpe.py's words after the place
    ([{"messages": [{"role": "user", "content": "salam"}, {"role": "assistant", "content": ""}]}],
     r"bad.jsonl line 1: message 1.*content"),
    ([CONVS[0], CONVS[1], {"turns": []}], "bad.jsonl line 3: missing field 'messages'"),
])
def test_bad_conversations_name_file_and_line(work, monkeypatch, rows, message):
    write_jsonl(work / "bad.jsonl", rows)
    with pytest.raises(SystemExit, match=message):
        run_sft(work, monkeypatch, "--build_only", "--sft_dataset=bad", "--sources=[{'path': 'bad.jsonl', 'kind': 'conversations'}]")


def test_bad_pairs_name_file_and_line(work, monkeypatch):
    write_jsonl(work / "badpairs.jsonl", PAIRS[:2] + [{"darija": "wakha", "darija_ar": ""}])
    with pytest.raises(SystemExit, match="badpairs.jsonl line 3: missing field 'eng'"):
        run_sft(work, monkeypatch, "--build_only", "--sft_dataset=badpairs", "--sources=[{'path': 'badpairs.jsonl', "
                "'kind': 'pairs', 'latin': 'darija', 'arabic': 'darija_ar', 'english': 'eng'}]")


def test_missing_base_checkpoint_says_how_to_make_it(work, monkeypatch):
    with pytest.raises(SystemExit, match=r"no base checkpoint at out/darija_small: .*`python pretrain.py config/darija_small.py`"):
        run_sft(work, monkeypatch, "--init_from=out/darija_small")


def test_tokenizer_mismatch_between_checkpoint_and_data(work, monkeypatch):
    run_sft(work, monkeypatch, "--build_only", "--sft_dataset=mismatch")
    with pytest.raises(SystemExit, match="was built with tokenizer data/base/tokenizer.json .* but out/other uses"):
        run_sft(work, monkeypatch, "--sft_dataset=mismatch", "--init_from=out/other", "--out_dir=out/mismatch")


# --- reliability (issue 14): folders, locks, resume, one-line errors, Ctrl-C, odd files -------------

def test_sft_dataset_must_be_a_plain_name(work, monkeypatch):
    with pytest.raises(SystemExit, match=r"sft_dataset must be a plain name .*got '../../victim'"):
        run_sft(work, monkeypatch, "--build_only", "--sft_dataset=../../victim")
    assert not (work.parent / "victim").exists()


def test_build_never_overwrites_a_users_file_in_the_dataset_folder(work, monkeypatch):
    mine = work / "data/sft/mychats/train.jsonl"  # the user's own conversations, stored where sft.py builds
    mine.parent.mkdir(parents=True)
    write_jsonl(mine, CONVS)
    before = mine.read_bytes()
    for force in ([], ["--force"]):
        with pytest.raises(SystemExit, match=r"data/sft/mychats/ holds files sft.py did not write: train.jsonl;"):
            run_sft(work, monkeypatch, "--build_only", "--sft_dataset=mychats", *force)
    assert mine.read_bytes() == before and os.listdir(mine.parent) == ["train.jsonl"]
    run_sft(work, monkeypatch, "--build_only", "--sft_dataset=ours")  # a folder sft.py wrote is rebuilt
    (work / "data/sft/ours/train.jsonl.tmp99").write_text("", encoding="utf-8")  # a killed build's temporary
    run_sft(work, monkeypatch, "--build_only", "--sft_dataset=ours", "--force")


def test_a_source_inside_the_dataset_folder_is_refused(work, monkeypatch):
    run_sft(work, monkeypatch, "--build_only", "--sft_dataset=self")
    before = (work / "data/sft/self/train.jsonl").read_bytes()
    with pytest.raises(SystemExit, match=r"source data/sft/self/train.jsonl lies inside data/sft/self/"):
        run_sft(work, monkeypatch, "--build_only", "--force", "--sft_dataset=self",
                "--sources=[{'path': 'data/sft/self/train.jsonl', 'kind': 'conversations'}]")
    assert (work / "data/sft/self/train.jsonl").read_bytes() == before


def test_out_dir_holding_other_files_is_refused_even_with_force(work, monkeypatch):
    folder = work / "out/notes"  # a pre-training run's folder, say
    folder.mkdir(parents=True)
    (folder / "log.jsonl").write_text("{}\n", encoding="utf-8")
    (folder / "notes.txt").write_text("mine", encoding="utf-8")
    for force in ([], ["--force"]):
        with pytest.raises(SystemExit, match=r"out/notes/ holds files sft.py did not write: log.jsonl, notes.txt;"):
            run_sft(work, monkeypatch, "--out_dir=out/notes", "--max_iters=0", *force)
    assert sorted(os.listdir(folder)) == ["log.jsonl", "notes.txt"]


def test_a_second_run_on_the_same_out_dir_names_the_first(work, monkeypatch):
    first = start_stage(work, "sft.py", "sft_test.py", "--out_dir=out/locked", "--max_iters=100000",
                        "--eval_interval=100000")
    try:
        with pytest.raises(SystemExit, match=rf"out/locked is in use by process {first.pid} "):
            run_sft(work, monkeypatch, "--out_dir=out/locked", "--force", "--max_iters=1")
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)


def test_ctrl_c_saves_last_pt_and_says_how_to_continue(work, monkeypatch):
    run = start_stage(work, "sft.py", "sft_test.py", "--out_dir=out/ctrlc", "--max_iters=100000",
                      "--eval_interval=100000", "--log_interval=1")
    os.kill(run.pid, signal.SIGINT)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 130 and "Traceback" not in err, err
    stopped = [line for line in out.splitlines() if line.startswith("stopped at step ")]
    assert len(stopped) == 1 and stopped[0].endswith(": saved out/ctrlc/last.pt; continue with --resume"), out
    step = int(stopped[0].split()[3].rstrip(":"))
    assert step >= 1 and load_checkpoint(str(work / "out/ctrlc/last.pt"))["step"] == step
    log = run_sft(work, monkeypatch, "--out_dir=out/ctrlc", "--resume", f"--max_iters={step + 2}")
    assert f"resuming out/ctrlc/last.pt at step {step}" in log


def test_fp16_with_grad_scaler_trains_and_resumes_exactly(work, monkeypatch):
    """float16 autocast + GradScaler (a T4's or V100's training) on the CPU: the run saved at step 4, resumed,
    reaches step 8 with the very weights and loss scale (kept in last.pt) of the uninterrupted run."""
    import model
    real_save, at_step_4 = model.save_checkpoint, {}

    def save_and_keep(path, *args, **kwargs):  # the run's folder as it stood at step 4
        real_save(path, *args, **kwargs)
        if kwargs["step"] <= 4:
            at_step_4[os.path.basename(path)] = open(path, "rb").read()

    monkeypatch.setattr(model, "save_checkpoint", save_and_keep)
    common = ["--dtype=float16", "--max_iters=8", "--eval_interval=4", "--patience=100", "--learning_rate=1e-2"]
    log = run_sft(work, monkeypatch, *common, "--out_dir=out/fp16")
    assert " on cpu (float16)" in log and val_losses(log)[-1] < val_losses(log)[0]
    os.makedirs(work / "out/fp16_resumed")
    for name, data in at_step_4.items():
        (work / "out/fp16_resumed" / name).write_bytes(data)
    assert "resuming out/fp16_resumed/last.pt at step 4" in run_sft(work, monkeypatch, *common, "--resume",
                                                                     "--out_dir=out/fp16_resumed")
    full, resumed = (torch.load(work / f"out/{d}/last.pt", weights_only=True) for d in ("fp16", "fp16_resumed"))
    assert full["scaler"] == resumed["scaler"] and full["scaler"]["_growth_tracker"] > 0
    assert all(torch.equal(full["model"][k], resumed["model"][k]) for k in full["model"])


def test_resume_refuses_data_built_with_another_tokenizer(work, monkeypatch):
    run_sft(work, monkeypatch, "--sft_dataset=swap", "--out_dir=out/swap", "--max_iters=2")
    run_sft(work, monkeypatch, "--build_only", "--force", "--sft_dataset=swap", "--init_from=out/other")
    other_sha = json.loads((work / "data/sft/swap/stats.json").read_text("utf-8"))["tokenizer_sha256"]
    base_sha = load_checkpoint(str(work / "out/swap/last.pt"))["tokenizer_sha256"]
    with pytest.raises(SystemExit, match=rf"--resume: out/swap/last.pt was trained with tokenizer data/base/tokenizer.json "
                                         rf"\(sha256 {base_sha[:12]}, vocab 301\), but data/sft/swap/ was built with "
                                         rf"data/other/tokenizer.json \(sha256 {other_sha[:12]}, vocab 281\)"):
        run_sft(work, monkeypatch, "--sft_dataset=swap", "--out_dir=out/swap", "--init_from=out/other", "--resume",
                "--max_iters=3")


@pytest.mark.parametrize("content", [b"PK\x03\x04 half a zip file", b""])  # b"": model.py names the EOFError
def test_resume_from_a_corrupt_last_pt_is_one_line(work, monkeypatch, content):
    run_sft(work, monkeypatch, "--out_dir=out/corrupt", "--max_iters=0", "--force")
    (work / "out/corrupt/last.pt").write_bytes(content)
    with pytest.raises(SystemExit, match=r"--resume: out/corrupt/last.pt is not a readable checkpoint \(truncated"):
        run_sft(work, monkeypatch, "--out_dir=out/corrupt", "--resume", "--max_iters=1")


def test_device_cuda_without_cuda_is_one_line(work, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match=r"--device=cuda: no CUDA device here \(use --device=cpu, or auto\)"):
        run_sft(work, monkeypatch, "--out_dir=out/cuda", "--device=cuda", "--max_iters=1")
    assert not (work / "out/cuda").exists()


@pytest.mark.parametrize("name", ["latin1.jsonl", "latin1.csv"])
def test_invalid_utf8_names_the_file_and_the_line(work, monkeypatch, name):
    if name.endswith(".csv"):
        text = b"darija,eng\nwakha,ok\nca va,\xe7a va\n"
    else:
        text = b'{"darija": "wakha", "eng": "ok"}\n{"darija": "ca va", "eng": "\xe7a va"}\n'
    (work / name).write_bytes(text)  # Latin-1, not UTF-8: the third line of the CSV, the second of the JSONL
    line = 3 if name.endswith(".csv") else 2
    with pytest.raises(SystemExit, match=rf"{name} line {line}: not valid UTF-8 \(byte 0xe7\): save it as UTF-8"):
        run_sft(work, monkeypatch, "--build_only", "--sft_dataset=latin1",
                f"--sources=[{{'path': '{name}', 'kind': 'pairs', 'latin': 'darija', 'english': 'eng'}}]")


def test_a_csv_field_over_128_kb_is_read(work, monkeypatch):
    long_answer = "sentence number one " * 8000  # 160 KB: over csv's default field limit of 131,072
    rows = [f"jomla {i} dyal darija,sentence number {i}" for i in range(40)] + [f"twila,{long_answer}"]
    (work / "long.csv").write_text("darija,eng\n" + "\n".join(rows) + "\n", encoding="utf-8")
    run_sft(work, monkeypatch, "--build_only", "--sft_dataset=long",
            "--sources=[{'path': 'long.csv', 'kind': 'pairs', 'latin': 'darija', 'english': 'eng'}]")
    examples = (work / "data/sft/long/train.jsonl").read_text("utf-8") + (work / "data/sft/long/val.jsonl").read_text("utf-8")
    assert json.loads((work / "data/sft/long/stats.json").read_text("utf-8"))["items"] == 41
    assert long_answer.strip() in examples


# --- sources in parquet files and on the hub (Darija-SFT-Mixture's shape) ----------------------------

def chat(i, answer=None, first="user"):
    second = "assistant" if first == "user" else "user"
    return [{"role": first, "content": f"salam {i}"}, {"role": second, "content": f"labas {i}" if answer is None else answer}]


BAD_ROWS = {"roles out of order": (chat(90, first="assistant"), "message 0: expected role 'user', got 'assistant'"),
            "an empty turn": (chat(91, answer=""), "message 1 (assistant): content must be a non-empty string"),
            "over-long": (chat(92, answer="bzaf " * 40), "over-long: over max_tokens=60 tokens, even cut to its first")}
MIXTURE = [chat(i) for i in range(12)]
MIXTURE[1:1] = [BAD_ROWS["roles out of order"][0]]  # rows 2, 4 and 6 of the first file are bad
MIXTURE[3:3] = [BAD_ROWS["an empty turn"][0]]
MIXTURE[5:5] = [BAD_ROWS["over-long"][0]]


@pytest.mark.parametrize("bad", BAD_ROWS)
def test_each_bad_row_is_named_then_skipped_and_counted_within_max_bad_fraction(work, monkeypatch, bad):
    conversation, message = BAD_ROWS[bad]
    name = bad.replace(" ", "_").replace("-", "_")
    (work / "mix.parquet").write_bytes(sft_mixture_parquet([chat(1), chat(2), conversation, chat(3)]))
    source = "--sources=[{'path': 'mix.parquet', 'kind': 'conversations'}]"
    with pytest.raises(SystemExit) as e:
        run_sft(work, monkeypatch, "--build_only", f"--sft_dataset={name}", "--max_tokens=60", source)
    assert str(e.value).startswith(f"sft.py: mix.parquet row 3: {message}")
    assert str(e.value).endswith("; fix the source, or allow a share of bad rows with --max_bad_fraction")
    out = run_sft(work, monkeypatch, "--build_only", f"--sft_dataset={name}", "--max_tokens=60",
                  source.replace("'conversations'", "'conversations', 'max_bad_fraction': 0.25"))
    assert f"skipped mix.parquet row 3: {message}" in out
    stats = json.loads((work / f"data/sft/{name}/stats.json").read_text("utf-8"))
    assert stats["sources"] == [dict(path="mix.parquet", kind="conversations", items=3, duplicates=0, bad_rows=1)]


def test_a_missing_column_is_named_with_the_columns_there(work, monkeypatch):
    (work / "mix.parquet").write_bytes(sft_mixture_parquet([chat(1), chat(2)]))
    with pytest.raises(SystemExit, match=r"^sft.py: mix.parquet row 1: missing field 'conversation' \(the row has "
                                         r"dataset, direction, id, messages, metadata\) \(and 1 more bad rows of 2\)"):
        run_sft(work, monkeypatch, "--build_only", "--sft_dataset=nocol",
                "--sources=[{'path': 'mix.parquet', 'kind': 'conversations', 'messages': 'conversation'}]")
    with pytest.raises(SystemExit, match=r"source .*'max_row'.*: a dict with path= or hub=, and the keys .*max_rows"):
        run_sft(work, monkeypatch, "--build_only", "--sft_dataset=typo",
                "--sources=[{'path': 'mix.parquet', 'kind': 'conversations', 'max_row': 5}]")


def run_hub(work, hub_url, *args, ok=True):
    """sft.py --build_only as its own process (huggingface_hub reads HF_ENDPOINT when imported), with the Hugging
    Face cache in work/hf_home/ and none of the user's HF_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env |= {"HF_ENDPOINT": hub_url, "HF_HOME": str(work / "hf_home")}
    r = subprocess.run([sys.executable, str(ROOT / "sft.py"), "sft_test.py", "--build_only", *args], cwd=work,
                       env=env, capture_output=True, text=True, timeout=120)
    assert (r.returncode == 0) == ok, r.stdout + r.stderr
    return r


def hub_mixture(hub):
    """me/mix: MIXTURE in two parquet files (train) and a test file; me/pairs: two configs of parallel rows."""
    hub.datasets["me/mix"] = {"data/train-00000-of-00002.parquet": sft_mixture_parquet(MIXTURE[:8]),
                              "data/train-00001-of-00002.parquet": sft_mixture_parquet(MIXTURE[8:]),
                              "data/test-00000-of-00001.parquet": b"never read", "README.md": b"license: odc-by\n"}
    hub.datasets["me/pairs"] = {f"{config}/train.jsonl": "".join(json.dumps(p) + "\n" for p in PAIRS[i:i + 20]).encode()
                                for i, config in ((0, "doda"), (20, "other"))}
    return [dict(hub="me/mix", kind="conversations", max_bad_fraction=0.25),
            dict(hub="me/pairs", config="doda", split="train", kind="pairs", latin="darija", english="eng")]


def test_hub_sources_conversations_and_pairs_by_config_and_split(work, hub):
    sources = hub_mixture(hub)
    r = run_hub(work, hub.url, "--sft_dataset=hub", "--max_tokens=60", f"--sources={sources!r}")
    for row, (_, message) in zip((2, 4, 6), BAD_ROWS.values()):
        assert f"skipped me/mix/data/train-00000-of-00002.parquet row {row}: {message}" in r.stdout
    d = work / "data/sft/hub"
    stats = json.loads((d / "stats.json").read_text("utf-8"))
    assert [(s["hub"], s.get("config"), s["items"], s["bad_rows"]) for s in stats["sources"]] == [
        ("me/mix", None, 12, 3), ("me/pairs", "doda", 20, 0)]
    examples = (d / "train.jsonl").read_text("utf-8") + (d / "val.jsonl").read_text("utf-8")
    assert '"origin": "me/mix/data/train-00001-of-00002.parquet:4"' in examples and '"task": "dar2en"' in examples
    assert not any("test-0000" in path or "other/" in path for path, _ in hub.seen)


@pytest.mark.slow  # five runs of sft.py, each in its own process
def test_hub_max_rows_a_damaged_cache_file_and_no_network(work, hub):
    sources = hub_mixture(hub)
    run_hub(work, hub.url, "--sft_dataset=hubs", "--max_tokens=60", f"--sources={sources!r}")
    d = work / "data/sft/hubs"
    # max_rows: the first rows only, and the second file is never downloaded
    hub.seen.clear()
    run_hub(work, hub.url, "--sft_dataset=hubs3", f"--sources={[dict(sources[0], max_rows=3, max_bad_fraction=0.5)]!r}")
    assert json.loads((work / "data/sft/hubs3/stats.json").read_text())["sources"][0]["items"] == 2
    assert not any("train-00001" in path for path, _ in hub.seen)
    # a damaged file in the cache is fetched again; then, the hub gone, the cache serves, saying so
    (cached,) = (work / "hf_home/hub/datasets--me--mix/snapshots").glob("*/data/train-00000-of-00002.parquet")
    cached.write_bytes(cached.read_bytes()[:100])
    r = run_hub(work, hub.url, "--sft_dataset=hubs2", "--max_tokens=60", f"--sources={sources!r}")
    assert "sft.py: data/train-00000-of-00002.parquet in the Hugging Face cache is damaged (" in r.stdout
    for name in ("train.jsonl", "val.jsonl"):
        assert (work / "data/sft/hubs2" / name).read_bytes() == (d / name).read_bytes()
    offline = "http://127.0.0.1:9"  # nothing listens there
    r = run_hub(work, offline, "--sft_dataset=hubs4", "--max_tokens=60", f"--sources={sources!r}")
    assert "sft.py: cannot reach the hub (" in r.stdout and "): using me/mix from the Hugging Face cache" in r.stdout
    assert (work / "data/sft/hubs4/train.jsonl").read_bytes() == (d / "train.jsonl").read_bytes()
    r = run_hub(work, offline, "--sft_dataset=hubs5", "--sources=[{'hub': 'me/other', 'kind': 'conversations'}]", ok=False)
    assert r.stderr.startswith("sft.py: cannot reach the hub for me/other (") and r.stderr.count("\n") == 1
    assert r.stderr.endswith("and it is not in the Hugging Face cache: connect to the internet, or use local files\n")


def test_a_gated_hub_dataset_says_what_to_do_in_one_line(work, hub):
    hub.datasets["me/gated"], hub.gated["me/gated"] = {"data/train.jsonl": b"{}\n"}, 401
    r = run_hub(work, hub.url, "--sft_dataset=gated", "--sources=[{'hub': 'me/gated', 'kind': 'conversations'}]", ok=False)
    assert r.stderr.startswith("sft.py: me/gated is a gated dataset and no valid token was sent (HF_TOKEN is "
                               "not set, nor `hf auth login` run, or the token is wrong) (HTTP 401). Open ")
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
