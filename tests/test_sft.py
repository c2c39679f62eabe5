"""sft.py: the chat mask, the dataset builder (both directions, no leak), training that lowers the
val loss, early stopping, chrF, and a clear error for each bad input. A tiny tokenizer and a tiny
GPT are made here, so nothing needs a pre-trained model or ../shared."""
import ast
import hashlib
import io
import json
import runpy
import sys
from collections import Counter
from contextlib import redirect_stdout

import pytest
import torch

from bpe import Tokenizer
from conftest import ROOT
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
    """Run sft.py in-process (no new interpreter: fast) in `work`; return what it printed."""
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "argv", ["sft.py", "sft_test.py", *args])
    out = io.StringIO()
    try:
        with redirect_stdout(out):
            runpy.run_path(str(ROOT / "sft.py"), run_name="__main__")
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    return out.getvalue()


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
    assert "lat2ar" in json.loads((work / "out/train/metrics.json").read_text())["sft"]
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


def load_chrf():
    """sft.py is a script (it trains when run), so take just its chrf function out of the source."""
    tree = ast.parse((ROOT / "sft.py").read_text(encoding="utf-8"))
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "chrf")
    scope = {"Counter": Counter}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), "sft.py", "exec"), scope)
    return scope["chrf"]


def test_chrf():
    chrf = load_chrf()
    assert chrf(["sba7 lkhir"], ["sba7 lkhir"]) == 100.0 and chrf(["xyz"], ["abc"]) == 0.0
    # "ab" vs "abc": 1-grams P=1 R=2/3, 2-grams P=1 R=1/2: P=1, R=7/12, F2 = 5PR / (4P + R)
    assert chrf(["ab"], ["abc"]) == pytest.approx(100 * 5 * (7 / 12) / (4 + 7 / 12))
    sacrebleu = pytest.importorskip("sacrebleu")
    hyps, refs = ["wach nta mzyan", "I went home", "سلام عليكم", ""], ["wach nta bikhir", "I go home", "السلام عليكم", "x"]
    assert chrf(hyps, refs) == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
