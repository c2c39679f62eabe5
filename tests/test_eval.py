"""eval.py: chrF and BLEU (as sacrebleu's), bits per byte (as pretrain.py's), multiple choice by
log-likelihood, a report of a base and a chat checkpoint side by side (report.json, report.md, report.png,
the printed tables), hub files, and one line for each bad input. A tiny tokenizer, tiny GPTs, held-out
data in prepare.py's and sft.py's formats are made here, so nothing needs a trained model or ../shared."""
import csv
import hashlib
import io
import json
import os
import random
import runpy
import subprocess
import sys
from contextlib import redirect_stdout

import numpy as np
import pytest
import torch

import configurator
from bpe import Tokenizer
from conftest import ROOT
from eval import bleu, chrf, normalised
from model import GPT, GPTConfig, load_checkpoint, model_from_checkpoint, save_checkpoint

REFS = ["sba7 lkhir a sa7bi", "wach nta mzyan?", "I went home yesterday", "السلام عليكم", "كيداير؟ لاباس عليك",
        "3afak 3tini lma", "the weather is nice today", "ana ghadi l dar", "x", "ok"]


def fixed_pairs(n=50, seed=7):
    """n (hypothesis, reference) pairs: references in both scripts and English, hypotheses made from them by
    dropping, doubling and swapping characters and words, plus a few empty and unrelated ones."""
    rng, pairs = random.Random(seed), []
    for i in range(n):
        ref = rng.choice(REFS)
        if i % 10 == 0:
            hyp = ""
        elif i % 10 == 1:
            hyp = rng.choice(REFS)  # most likely another sentence
        else:
            chars = list(ref)
            for _ in range(rng.randint(0, 4)):
                j = rng.randrange(len(chars) + 1)
                chars[j:j + 1] = rng.choice([[], [rng.choice(ref)] * 2, chars[j:j + 1][::-1], [" "]])
            hyp = "".join(chars)
            if rng.random() < 0.3:
                hyp = " ".join(rng.sample(hyp.split(), len(hyp.split())))
        pairs.append((hyp, ref))
    return pairs


def test_chrf_by_hand():
    assert chrf(["sba7 lkhir"], ["sba7 lkhir"]) == 100.0 and chrf(["xyz"], ["abc"]) == 0.0
    # "ab" vs "abc": 1-grams P=1 R=2/3, 2-grams P=1 R=1/2: P=1, R=7/12, F2 = 5PR / (4P + R)
    assert chrf(["ab"], ["abc"]) == pytest.approx(100 * 5 * (7 / 12) / (4 + 7 / 12))
    assert chrf(["sba7  lkhir"], ["sba7 lkhir"]) == 100.0  # whitespace is not counted


def test_chrf_equals_sacrebleu_on_50_fixed_pairs():
    try:
        import sacrebleu
    except ImportError:
        pytest.skip("sacrebleu is not installed (pip install -r requirements-dev.txt): the reference chrF to compare with")
    pairs = fixed_pairs()
    hyps, refs = [h for h, _ in pairs], [r for _, r in pairs]
    assert len(set(pairs)) > 40 and "" in hyps
    assert chrf(hyps, refs) == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score, abs=0.01)
    for i in range(0, 50, 10):  # and on smaller corpora, down to one pair
        assert chrf(hyps[i:i + 3], refs[i:i + 3]) == pytest.approx(
            sacrebleu.corpus_chrf(hyps[i:i + 3], [refs[i:i + 3]]).score, abs=0.01)


def test_bleu_by_hand():
    assert bleu(["wach nta mzyan ?"], ["wach nta mzyan ?"]) == pytest.approx(100.0) and bleu(["xyz"], ["abc"]) == 0.0
    # "a b c d" vs "a b c e": precisions 3/4, 2/3, 1/2, and no 4-gram match: 1 / (2 x 1); no brevity penalty
    assert bleu(["a b c d"], ["a b c e"]) == pytest.approx(100 * (3 / 4 * 2 / 3 * 1 / 2 * 1 / 2) ** 0.25)
    assert bleu(["a b c d."], ["a b c d ."]) == pytest.approx(100.0)  # punctuation is split off (13a)
    assert bleu(["a b c d e"], ["a b c d e f g h"]) == pytest.approx(100 * np.exp(1 - 8 / 5))  # too short


def test_bleu_equals_sacrebleu_on_50_fixed_pairs():
    try:
        import sacrebleu
    except ImportError:
        pytest.skip("sacrebleu is not installed (pip install -r requirements-dev.txt): the reference BLEU to compare with")
    pairs = fixed_pairs() + [("3afak, 3tini lma.", "3afak 3tini lma."), ("1-2 & 3.5,6", "1 - 2 &amp; 3.5, 6")]
    hyps, refs = [h for h, _ in pairs], [r for _, r in pairs]
    assert bleu(hyps, refs) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=0.01)
    for i in range(0, 52, 4):  # and on smaller corpora, down to one pair
        assert bleu(hyps[i:i + 3], refs[i:i + 3]) == pytest.approx(
            sacrebleu.corpus_bleu(hyps[i:i + 3], [refs[i:i + 3]]).score, abs=0.01)
        assert bleu(hyps[i:i + 1], refs[i:i + 1]) == pytest.approx(
            sacrebleu.corpus_bleu(hyps[i:i + 1], [refs[i:i + 1]]).score, abs=0.01)


def test_length_normalisation_by_hand():
    """lm-evaluation-harness's acc_norm: log-likelihood per character of " " + option. The longer option loses
    on the raw sum (-6 < -4) and wins per character (-6/7 > -4/3)."""
    logliks, options = [-4.0, -6.0], ["ab", "abcdef"]
    assert normalised(logliks, options) == [-4 / 3, -6 / 7]
    assert logliks.index(max(logliks)) == 0 and normalised(logliks, options).index(max(normalised(logliks, options))) == 1


# --- eval.py end to end ---------------------------------------------------------------------------

PAIRS = [dict(latin=f"jomla {i} dyal darija", arabic=f"جملة {i} ديال الدارجة", english=f"sentence number {i}")
         for i in range(40)]


REQUESTS = {"lat2ar": ("ktb b l7orof l3arbiya: {x}", "latin", "arabic"), "dar2en": ("Translate to English: {x}",
            "latin", "english"), "en2dar": ("Translate to Darija: {x}", "english", "latin"),
            "ar2lat": ("ktb b l7orof latiniya: {x}", "arabic", "latin")}


def examples(pairs):
    out = []
    for p in pairs:
        for task, (request, source, target) in REQUESTS.items():
            out.append(dict(messages=[{"role": "user", "content": request.format(x=p[source])},
                                      {"role": "assistant", "content": p[target]}], task=task, input=p[source]))
    out.append(dict(messages=[{"role": "user", "content": "salam"}, {"role": "assistant", "content": "wa3alaykom"}],
                    task="chat"))
    return out


def write_dataset(folder, tok_path, tok_sha, train, val):
    """An SFT dataset as sft.py writes it (the fields eval.py reads)."""
    folder.mkdir(parents=True)
    for split, rows in (("train", train), ("val", val)):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    stats = dict(tokenizer=tok_path, tokenizer_sha256=tok_sha, sources=[], train={}, val={})
    (folder / "stats.json").write_text(json.dumps(stats), encoding="utf-8")


def write_val_bin(folder, tok, tok_sha, docs_per_source):
    """val.bin and meta.json as prepare.py writes them (the fields eval.py reads): documents in source order."""
    ids = [i for docs in docs_per_source.values() for doc in docs for i in [tok.eot_id] + tok.encode_ordinary(doc)]
    np.array(ids, dtype=np.uint16).tofile(folder / "val.bin")
    meta = dict(dtype="uint16", eot_id=tok.eot_id, tokenizer_sha256=tok_sha, val=dict(tokens=len(ids), bytes=sum(
        len(doc.encode()) for docs in docs_per_source.values() for doc in docs)),
        sources=[dict(name=name, val_docs=len(docs)) for name, docs in docs_per_source.items()])
    (folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")


def make_tokenizer(work, name, texts, merges):
    (work / "data" / name).mkdir(parents=True)
    tok = Tokenizer.train(texts, 256 + 5 + merges)
    tok.save(work / "data" / name / "tokenizer.json")
    return tok, f"data/{name}/tokenizer.json", hashlib.sha256((work / "data" / name / "tokenizer.json").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """out/base (kind base), out/chat (kind sft, fine-tuned on data/sft/t as its config says), data/sft/t,
    and data/sft/alien, built with another tokenizer."""
    d = tmp_path_factory.mktemp("eval")
    tok, tok_path, tok_sha = make_tokenizer(d, "base", [json.dumps(p, ensure_ascii=False) for p in PAIRS], 60)
    for seed, name, kind in ((0, "base", "base"), (1, "chat", "sft")):
        torch.manual_seed(seed)
        model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_kv_head=2, n_embd=32))
        with torch.no_grad():  # special tokens' logits 0 (tied head): random weights then say something
            model.wte.weight[list(tok.special_tokens.values())] = 0
        save_checkpoint(d / "out" / name / "best.pt", model, kind=kind, tokenizer=tok_path, tokenizer_sha256=tok_sha,
                        config=dict(init_from="out/base", sft_dataset="t") if kind == "sft" else {})
    write_dataset(d / "data/sft/t", tok_path, tok_sha, examples(PAIRS[:30]), examples(PAIRS[30:]))
    write_val_bin(d / "data/base", tok, tok_sha, {"wiki": [p["arabic"] for p in PAIRS[:6]],
                                                  "chat": [p["latin"] for p in PAIRS[6:10]]})
    files = {"pairs.jsonl": [dict(darija=p["latin"], darija_ar=p["arabic"], eng=p["english"]) for p in PAIRS[:8]],
             "no_eng.jsonl": [dict(darija="salam", darija_ar="سلام")], "empty.jsonl": [],
             "no_label.jsonl": [dict(ctx="salam", endings=["a", "b"])], "odd.jsonl": [dict(text="salam")],
             "texts.jsonl": [dict(text="salam 3likom", source="chat"), dict(text="السلام عليكم", source="wiki"),
                             dict(text="kif dayr? لاباس", source="chat")]}
    for name, rows in files.items():
        (d / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    (d / "empty.txt").write_text("\n\n", "utf-8")
    _, other_path, other_sha = make_tokenizer(d, "other", ["another text altogether, other merges " * 10], 20)
    write_dataset(d / "data/sft/alien", other_path, other_sha, examples(PAIRS[:30]), examples(PAIRS[30:]))
    return d


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run many times faster on one thread than on two busy ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_eval(work, monkeypatch, *args):
    """Run eval.py in-process in `work`; return what it printed. The report folder it locks is unlocked
    after the run (in-process, the lock would last until pytest exits)."""
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "argv", ["eval.py", *args])
    locks, real_claim = [], configurator.claim

    def claim_and_remember(folder):
        locks.append(real_claim(folder))
        return locks[-1]

    monkeypatch.setattr(configurator, "claim", claim_and_remember)
    out = io.StringIO()
    try:
        with redirect_stdout(out):
            runpy.run_path(str(ROOT / "eval.py"), run_name="__main__")
    finally:
        for lock in locks:
            if os.path.exists(lock):
                os.remove(lock)
    return out.getvalue()


def greedy_answer(work, ckpt_dir, messages, max_new_tokens=8):
    """What a chat model should answer, computed here without eval.py."""
    tok = Tokenizer.load(work / "data/base/tokenizer.json")
    model = model_from_checkpoint(load_checkpoint(str(work / ckpt_dir)))
    ids, stop = tok.render_for_completion(messages), set(tok.special_tokens.values())
    out = []
    for token in model.generate(ids, min(max_new_tokens, 64 - len(ids)), temperature=0):
        if token in stop:
            break
        out.append(token)
    return tok.decode(out).strip()


def test_a_report_of_a_base_and_a_chat_checkpoint(work, monkeypatch):
    log = run_eval(work, monkeypatch, "out/base", "--sft_dataset=t", "--metric_items=6", "--max_new_tokens=8",
                   "out/chat/best.pt", "--out=reports/both")  # checkpoints before and after the settings
    report = json.loads((work / "reports/both/report.json").read_text("utf-8"))
    assert report["command"] == (f"python {ROOT / 'eval.py'} out/base --sft_dataset=t --metric_items=6 "
                                 f"--max_new_tokens=8 out/chat/best.pt --out=reports/both")  # as run (runpy: its path)
    assert [(c["path"], c["kind"]) for c in report["checkpoints"]] == [("out/base", "base"), ("out/chat/best.pt", "sft")]
    assert report["data"]["translation"] == "data/sft/t" and report["tasks"] == ["bpb", "translation"]
    val = [json.loads(line) for line in (work / "data/sft/t/val.jsonl").read_text("utf-8").splitlines()]
    for column in report["checkpoints"]:
        assert set(column["translation"]) == {"lat2ar", "dar2en", "en2dar", "ar2lat"}
        for task, scores in column["translation"].items():
            assert set(scores) == {"items", "chrf", "bleu", "example"} and scores["items"] == 6
            assert 0 <= scores["chrf"] <= 100 and 0 <= scores["bleu"] <= 100
            assert scores["example"]["input"] == next(ex["input"] for ex in val if ex["task"] == task)
            assert "\n" not in scores["example"]["output"]
        bpb = column["bpb"]  # data/base/val.bin: 6 Arabic-script documents from "wiki", 4 Latin ones from "chat"
        assert list(bpb) == ["all", "source chat", "source wiki", "Arabic script", "Latin script"]
        assert [bpb[g]["docs"] for g in bpb] == [10, 4, 6, 6, 4] and bpb["source wiki"] == bpb["Arabic script"]
        assert bpb["all"]["bytes"] == sum(len(p[k].encode()) for p in PAIRS[:6] for k in ["arabic"]) + sum(
            len(p["latin"].encode()) for p in PAIRS[6:10])
        assert bpb["all"]["tokens"] == os.path.getsize(work / "data/base/val.bin") // 2
        assert min(b["bpb"] for b in bpb.values()) > 1  # random weights: over 8 bits per token
    first = next(ex for ex in val if ex["task"] == "lat2ar")  # the chat model answers the request as phrased
    answer = report["checkpoints"][1]["translation"]["lat2ar"]["example"]["output"]
    assert answer and answer == greedy_answer(work, "out/chat", first["messages"][:-1])
    md = (work / "reports/both/report.md").read_text("utf-8")
    assert f"`{report['command']}`" in md and md.count("| | out/base (base) | out/chat/best.pt (sft) |") == 2
    assert "## bpb" in md and "## translation" in md and "![chart](report.png)" in md
    assert "## Published figures (quoted, not measured here)" in md and "| Atlas-Chat-2B | 44.97 | 35.08 | 44.86 |" in md
    chrf_row = f"| dar2en chrf | {report['checkpoints'][0]['translation']['dar2en']['chrf']} | "
    assert chrf_row in md and chrf_row in log  # the tables are printed too
    assert sorted(os.listdir(work / "reports/both")) == ["report.json", "report.md", "report.png"]
    assert (work / "reports/both/report.png").read_bytes()[:4] == b"\x89PNG"


def test_the_dataset_and_the_folder_default_to_the_checkpoints(work, monkeypatch):
    run_eval(work, monkeypatch, "out/chat", "--metric_items=2", "--max_new_tokens=2", "--tasks=translation")
    report = json.loads((work / "reports/chat/report.json").read_text("utf-8"))  # reports/<its folder's name>
    assert report["data"]["translation"] == "data/sft/t" and report["checkpoints"][0]["translation"]["dar2en"]["items"] == 2
    run_eval(work, monkeypatch, "out/chat", "--metric_items=3", "--metric_skip=2", "--max_new_tokens=2", "--force",
             "--tasks=translation")
    report = json.loads((work / "reports/chat/report.json").read_text("utf-8"))
    held_out = [json.loads(line)["input"] for line in (work / "data/sft/t/val.jsonl").read_text("utf-8").splitlines()
                if json.loads(line)["task"] == "dar2en"]
    assert report["checkpoints"][0]["translation"]["dar2en"]["example"]["input"] == held_out[2]  # two passed over


def test_existing_report_needs_force_and_other_files_are_never_touched(work, monkeypatch):
    args = ["out/chat", "--metric_items=1", "--max_new_tokens=1", "--out=reports/again", "--tasks=translation"]
    run_eval(work, monkeypatch, *args)
    with pytest.raises(SystemExit, match=r"^eval.py: reports/again/ already holds a report: add --force to replace it"):
        run_eval(work, monkeypatch, *args)
    (work / "reports/again/report.md.tmp999").write_text("half", encoding="utf-8")  # a killed run's
    run_eval(work, monkeypatch, *args, "--force")
    assert sorted(os.listdir(work / "reports/again")) == ["report.json", "report.md", "report.png"]
    (work / "reports/again/notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"reports/again/ holds files eval.py did not write: notes.txt; pick another"):
        run_eval(work, monkeypatch, *args, "--force")
    assert (work / "reports/again/notes.txt").read_text("utf-8") == "mine"


@pytest.fixture(scope="module")
def lost(work):
    """A checkpoint whose tokenizer file is gone."""
    save_checkpoint(work / "out/lost/best.pt", GPT(GPTConfig(vocab_size=300, block_size=16, n_layer=1, n_head=2,
                                                             n_kv_head=2, n_embd=16)),
                    kind="base", tokenizer="data/lost/tokenizer.json", tokenizer_sha256="ab" * 32)
    return "out/lost"


@pytest.mark.parametrize("args, message", [
    (["out/chat", "--tasks=translation,bleu"], r"unknown task bleu: choose among bpb, translation, mc"),
    (["--sft_dataset=t"], r"no checkpoint given: python eval.py out/NAME"),
    (["out/base", "out/none"], r"no checkpoint at out/none: train one first"),
    (["out/chat", "out/lost"], r"out/lost was trained with the tokenizer data/lost/tokenizer.json, which does not exist"),
    (["out/chat", "--sft_dataset=nope"], r"no SFT dataset at data/sft/nope/ \(--sft_dataset\): build it with "
                                         r"`python sft.py CONFIG --build_only --sft_dataset=nope`"),
    (["out/base"], r"no SFT dataset at data/sft/base/ \(the dataset of out/base\)"),
    (["out/chat", "--sft_dataset=../t"], r"sft_dataset must be a plain name"),
    (["out/chat", "--sft_dataset=alien"], r"data/sft/alien/ was built with tokenizer data/other/tokenizer.json "
                                          r"\(sha256 \w{12}\), but out/chat uses data/base/tokenizer.json"),
    (["out/chat", "--metric_items=0"], r"metric_items and max_new_tokens must be at least 1"),
    (["out/chat", "--tasks=translation", "--pairs=no_eng.jsonl"], r"eval.py: no_eng.jsonl has no column eng "
                                                                  r"\(its columns: darija, darija_ar\)"),
    (["out/chat", "--tasks=mc", "--mc=['no_label.jsonl']"], r"no_label.jsonl has no column label \(its columns: ctx, "),
    (["out/chat", "--tasks=mc", "--mc=['odd.jsonl']"], r"odd.jsonl is no multiple-choice set: its columns are text; "
                                                       r"expected those of DarijaHellaSwag \(ctx, endings, label\)"),
    (["out/chat", "--tasks=mc", "--mc=['empty.jsonl']"], r"empty.jsonl holds no rows: an empty set scores nothing"),
    (["out/chat", "--tasks=bpb", "--bpb_data=empty.txt"], r"empty.txt holds no rows: an empty set scores nothing"),
    (["out/chat", "--tasks=mc"], r"the mc task needs its sets: --mc="),
    (["out/chat", "--tasks=mc", "--mc=['hub:me/mc']"], r"a hub file is hub:OWNER/NAME/PATH"),
    (["out/chat", "--metric_itmes=3"], r"unknown config key 'metric_itmes' .* did you mean 'metric_items'"),
])
def test_bad_input_is_one_line(work, monkeypatch, lost, args, message):
    with pytest.raises(SystemExit, match=message) as e:
        run_eval(work, monkeypatch, *args, "--out=reports/bad")
    assert "\n" not in str(e.value.code)
    assert not (work / "reports/bad/report.json").exists()


def test_device_cuda_without_cuda_is_one_line(work, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match=r"eval.py: --device=cuda: no CUDA device here \(use --device=cpu, or auto\)"):
        run_eval(work, monkeypatch, "out/chat", "--device=cuda", "--out=reports/cuda")


def test_a_mistake_is_one_line_on_stderr_with_exit_status_1(work):
    r = subprocess.run([sys.executable, str(ROOT / "eval.py"), "out/chat", "--tasks=mmlu"], cwd=work,
                       capture_output=True, text=True, encoding="utf-8", env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 1 and r.stderr == "eval.py: unknown task mmlu: choose among bpb, translation, mc (comma-separated)\n"


# --- bits per byte ----------------------------------------------------------------------------------

@pytest.mark.slow  # ~40 s: prepare.py and pretrain.py run first
def test_bpb_equals_pretrain_validation_bpb_when_both_count_every_token(tmp_path):
    """pretrain.py's val bpb (mean loss of its windows x tokens / bytes / ln 2) on a val.bin one window long
    (block_size + 2 tokens: its windows all start at 0 and count every token but the last), against eval.py's
    over every token of the same file, with the checkpoint pretrain.py saved at that evaluation."""
    rng = np.random.default_rng(0)
    words = ["salam", "kifach", "3afak", "bzaf", "mzyan", "lyoum", "ghadi", "nta", "dyal", "wakha"]
    lines = [" ".join(rng.choice(words, size=rng.integers(4, 12))) for _ in range(400)]
    last = " ".join(rng.choice(words, size=150))  # the one val document (val_fraction is tiny): the last
    (tmp_path / "corpus.txt").write_text("\n".join(lines) + f"\nhada l2akhir: {last}\n")
    data = ["--dataset=toy", "--sources=[{'path': 'corpus.txt'}]", "--vocab_size=300", "--val_fraction=0.0001"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "prepare.py"), *data], cwd=tmp_path, capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    tokens = json.loads((tmp_path / "data/toy/meta.json").read_text())["val"]["tokens"]
    r = subprocess.run([sys.executable, str(ROOT / "pretrain.py"), *data, f"--block_size={tokens - 2}",
                        "--batch_size=1", "--eval_iters=1", "--max_iters=30", "--eval_interval=30", "--n_layer=1",
                        "--n_embd=32", "--n_head=2", "--n_kv_head=2", "--sample_tokens=0", "--warmup_iters=2"],
                       cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    logged = [json.loads(line) for line in (tmp_path / "out/toy/log.jsonl").read_text().splitlines()]
    pretrain_bpb = [rec["val_bpb"] for rec in logged if "val_bpb" in rec][-1]
    r = subprocess.run([sys.executable, str(ROOT / "eval.py"), "out/toy/last.pt", "--tasks=bpb", "--out=rep"],
                       cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    scores = json.loads((tmp_path / "rep/report.json").read_text())["checkpoints"][0]["bpb"]
    assert scores["all"]["tokens"] == tokens and list(scores) == ["all", "source corpus.txt", "Latin script"]
    assert abs(scores["all"]["bpb"] - pretrain_bpb) < 1e-3


def test_bpb_of_a_jsonl_file_by_hand(work, monkeypatch):
    """Three short documents (one window): each group's bpb is its mean loss per predicted token x its tokens /
    its bytes / ln 2, recomputed here from the model's logits."""
    run_eval(work, monkeypatch, "out/base", "--tasks=bpb", "--bpb_data=texts.jsonl", "--out=reports/texts")
    scores = json.loads((work / "reports/texts/report.json").read_text("utf-8"))["checkpoints"][0]["bpb"]
    tok = Tokenizer.load(work / "data/base/tokenizer.json")
    texts = [json.loads(line) for line in (work / "texts.jsonl").read_text("utf-8").splitlines()]
    docs = [[tok.eot_id] + tok.encode_ordinary(t["text"]) for t in texts]
    ids = torch.tensor([sum(docs, [])])
    assert ids.shape[1] <= 64  # one window
    logits = model_from_checkpoint(load_checkpoint(str(work / "out/base")))(ids[:, :-1])[0][0]
    nats = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none").tolist()
    doc_of = [i for i, doc in enumerate(docs) for _ in doc][1:]

    def by_hand(chosen):
        counted = [n for n, d in zip(nats, doc_of) if d in chosen]
        n_tokens, n_bytes = sum(len(docs[d]) for d in chosen), sum(len(texts[d]["text"].encode()) for d in chosen)
        return sum(counted) / len(counted) * n_tokens / n_bytes / np.log(2)
    expected = {"all": [0, 1, 2], "source chat": [0, 2], "source wiki": [1], "Arabic script": [1], "Latin script": [0, 2]}
    assert list(scores) == list(expected)  # "kif dayr? لاباس": 7 Latin letters, 5 Arabic ones
    for group, chosen in expected.items():
        assert scores[group]["bpb"] == pytest.approx(by_hand(chosen), abs=1e-4), group


def test_translation_from_a_pairs_file(work, monkeypatch):
    """DODa's columns by default: the first few_shot rows are the base model's examples, the next ones are scored;
    a chat model gets sft.py's first English phrasing of each task."""
    run_eval(work, monkeypatch, "out/chat", "--tasks=translation", "--pairs=pairs.jsonl", "--few_shot=2",
             "--metric_items=3", "--max_new_tokens=4", "--out=reports/pairs")
    scores = json.loads((work / "reports/pairs/report.json").read_text("utf-8"))["checkpoints"][0]["translation"]
    assert list(scores) == ["dar2en", "en2dar", "lat2ar", "ar2lat"] and {s["items"] for s in scores.values()} == {3}
    assert scores["en2dar"]["example"]["input"] == PAIRS[2]["english"]  # rows 0 and 1 are the shots
    phrasings = json.loads((ROOT / "data/sample/sft/prompts.json").read_text("utf-8"))
    request = next(t for lang, t, _ in phrasings["lat2ar"] if lang == "en").format(x=PAIRS[2]["latin"])
    assert scores["lat2ar"]["example"]["output"] == greedy_answer(work, "out/chat", [{"role": "user", "content": request}],
                                                                  max_new_tokens=4)


def test_no_matplotlib_no_chart_and_a_notice(work, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    log = run_eval(work, monkeypatch, "out/base", "--tasks=bpb", "--out=reports/nochart")
    assert "note: matplotlib is not installed, so there is no report.png (pip install matplotlib)" in log
    assert sorted(os.listdir(work / "reports/nochart")) == ["report.json", "report.md"]
    assert "report.png" not in (work / "reports/nochart/report.md").read_text("utf-8")


# --- multiple choice ------------------------------------------------------------------------------

FOODS = ["atay", "lben", "khobz", "zit", "3sel", "lma", "7lib", "sukkar", "tmer", "louz"]


def mc_rows(n=40, seed=3):
    """n questions of 4 options; the right one is drawn at random."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        options = rng.sample(FOODS, 4)
        rows.append(dict(ctx=f"f sbah {i} kanakol", endings=options, label=rng.randrange(4)))
    return rows


@pytest.fixture(scope="module")
def mc_model(work):
    """out/mc: a tiny GPT trained here on each context followed by its right option (and nothing else)."""
    tok = Tokenizer.load(work / "data/base/tokenizer.json")
    rows, starts = [], []  # the loss is on the right option's tokens only
    for r in mc_rows():
        starts.append(len(tok.encode_ordinary(r["ctx"])))
        rows.append([tok.eot_id] + tok.encode_ordinary(f"{r['ctx']} {r['endings'][r['label']]}"))
    width = max(map(len, rows))
    batch = torch.tensor([r + [tok.eot_id] * (width - len(r)) for r in rows])
    targets = torch.tensor([[-1] * start + r[start + 1:] + [-1] * (width - len(r)) for r, start in zip(rows, starts)])
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_kv_head=2, n_embd=48))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(400):
        loss = model(batch[:, :-1], targets)[1]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    save_checkpoint(work / "out/mc/best.pt", model, kind="base", tokenizer="data/base/tokenizer.json",
                    tokenizer_sha256=hashlib.sha256((work / "data/base/tokenizer.json").read_bytes()).hexdigest())
    rows = mc_rows()
    for name, labels in (("right", [r["label"] for r in rows]), ("shuffled", random.Random(9).choices(range(4), k=40))):
        (work / f"hs_{name}.jsonl").write_text("".join(json.dumps(r | {"label": label}) + "\n" for r, label
                                                      in zip(rows, labels)), "utf-8")
    with open(work / "mmlu.csv", "w", newline="", encoding="utf-8") as f:  # DarijaMMLU's columns; choices as JSON
        writer = csv.DictWriter(f, ["question", "context", "choices", "answer"])
        writer.writeheader()
        writer.writerows(dict(question=r["ctx"], context="", choices=json.dumps(r["endings"]), answer=r["label"])
                         for r in rows)
    import pyarrow
    import pyarrow.parquet
    belebele = [dict(flores_passage="f sbah", question=r["ctx"], **{f"mc_answer{i + 1}": e for i, e in enumerate(
        r["endings"])}, correct_answer_num=str(r["label"] + 1)) for r in rows]
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(belebele), work / "belebele.parquet")
    return "out/mc"


def test_multiple_choice_right_answers_score_1_and_shuffled_labels_chance(work, monkeypatch, mc_model):
    run_eval(work, monkeypatch, mc_model, "--tasks=mc", "--out=reports/mc",
             "--mc=['hs_right.jsonl', 'hs_shuffled.jsonl', 'mmlu.csv', 'belebele.parquet']")
    scores = json.loads((work / "reports/mc/report.json").read_text("utf-8"))["checkpoints"][0]["mc"]
    assert list(scores) == ["DarijaHellaSwag hs_right", "DarijaHellaSwag hs_shuffled", "DarijaMMLU mmlu",
                            "Belebele belebele"]
    right, shuffled = scores["DarijaHellaSwag hs_right"], scores["DarijaHellaSwag hs_shuffled"]
    assert right["items"] == 40 and right["acc"] == 1.0 and right["chance"] == 0.25 and right["acc_centered"] == 1.0
    assert scores["DarijaMMLU mmlu"]["acc"] == 1.0  # the same questions in DarijaMMLU's shape
    assert abs(shuffled["acc"] - 0.25) <= 0.1 and shuffled["acc_centered"] == pytest.approx(
        (shuffled["acc"] - 0.25) / 0.75, abs=1e-4)
    assert scores["Belebele belebele"]["items"] == 40  # read; its context (passage + question) is not the trained one


def test_hub_sets_are_fetched_and_reused_offline(work, mc_model, tmp_path, hub):
    """A hub:OWNER/NAME/PATH set comes through huggingface_hub (from a local stand-in for the hub, HF_ENDPOINT),
    is reused from the cache offline, and offline without it the one line says which file to fetch and how."""
    from test_prepare import OFFLINE, isolated
    hub.datasets["me/hellaswag"] = {"data/test.jsonl": (work / "hs_right.jsonl").read_bytes()}
    args = [sys.executable, str(ROOT / "eval.py"), mc_model, "--tasks=mc", "--metric_items=8",
            "--mc=['hub:me/hellaswag/data/test.jsonl']"]
    for endpoint, out in ((hub.url, "hub1"), (OFFLINE, "hub2")):  # online, then offline from the cache
        r = subprocess.run([*args, f"--out={tmp_path / out}"], cwd=work, capture_output=True, text=True,
                           env=isolated(tmp_path, {"HF_ENDPOINT": endpoint, "OMP_NUM_THREADS": "1"}), timeout=120)
        assert r.returncode == 0, r.stderr
        scores = json.loads((tmp_path / out / "report.json").read_text("utf-8"))["checkpoints"][0]["mc"]
        assert scores["DarijaHellaSwag test"]["acc"] == 1.0
    r = subprocess.run([*args, f"--out={tmp_path / 'hub3'}"], cwd=work, capture_output=True, text=True,
                       env=isolated(tmp_path / "fresh", {"HF_ENDPOINT": OFFLINE, "OMP_NUM_THREADS": "1"}), timeout=120)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("eval.py: cannot fetch data/test.jsonl of the hub dataset me/hellaswag (")
    assert "`hf download me/hellaswag data/test.jsonl --repo-type=dataset --local-dir=DIR`" in r.stderr
