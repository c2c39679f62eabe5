"""export.py: the folder it writes loads in Hugging Face transformers (no custom code) and computes what ours
computes: logits within 1e-4 (SwiGLU -> Llama, ReLU² -> Arcee, with and without grouped-query attention),
tokenizer ids equal bpe.py's (hard strings, each named split pattern, 200 documents of ../shared when present),
the chat template equal to render_for_completion, greedy generate equal to ours (and, slow, to chat.py
--temperature 0); the model card; one line for each bad input; (slow) the README's snippet runs. The models
are made here: random ones for the logits, one trained in seconds to answer three prompts three ways."""
import hashlib
import json
import os
import random
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import regex
import torch

transformers = pytest.importorskip("transformers", reason="export's checks need transformers (requirements-dev.txt)")
pytest.importorskip("safetensors", reason="export.py writes model.safetensors (requirements-dev.txt)")
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import configurator  # noqa: E402
import export  # noqa: E402
from bpe import PATTERNS, Tokenizer  # noqa: E402
from conftest import ROOT, SHARED  # noqa: E402
from model import GPT, GPTConfig, norm, save_checkpoint  # noqa: E402

ANSWERS = {"salam": "wa3alaykom salam, labas?", "chno": "ana darija-gpt", "شكرا": "بلا جميل آ خويا"}
WORDS = "kidayr labas 3afak sba7 lkhir wach nta mzyan smitek fin ghadi bghit m3ak سلام واش".split()
HARD = ["", " ", "salam 3afak sba7 lkhir l3iba 9raya", "مَرْحَبًا بِكْ، كِيدَايْرْ؟", "بيـــــــك الـــله",
        "3afak 123sba7 2024 12345678901 ٣٤٥٦٧ x2", "😀👨‍👩‍👧‍👦🏳️‍🌈 👍🏽!!", "a\r\nb\r\n\r\n  c\n\n\n", "   spaces   runs     \t\t ",
        "don't I'M we'll", "<|endoftext|>salam<|end|><|user|>", "<|assistant", "x\u200bz\u00a0y\ufeff", "ﷺ ﻻ ﷲ"]
ENV = {"OMP_NUM_THREADS": "1"}


def chat_example(rng):
    first = rng.choice(list(ANSWERS))
    return [{"role": "user", "content": " ".join([first, *rng.choices(WORDS, k=rng.randint(0, 4))])},
            {"role": "assistant", "content": ANSWERS[first]}]


def train_chat(tok, steps=120, block_size=64):
    """A 2-layer GPT that answers by the first word of the message (greedy), in a few seconds."""
    rng = random.Random(0)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=2, n_head=2, n_kv_head=1,
                          n_embd=64, mlp="relu2"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    inputs, targets = tok.pack_conversations([tok.render_conversation(chat_example(rng)) for _ in range(400)],
                                             block_size)
    for step in range(steps):
        rows = rng.sample(range(len(inputs)), 8)
        _, loss = model(torch.tensor([inputs[r] for r in rows]), torch.tensor([targets[r] for r in rows]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def save(work, name, model, kind="base"):
    tok_path = work / "data" / "t" / "tokenizer.json"
    save_checkpoint(work / "out" / name / "best.pt", model, kind=kind, step=7, best_val_loss=2.0,
                    config={"dataset": "t", "batch_size": 4, "block_size": 32},
                    tokenizer="data/t/tokenizer.json",
                    tokenizer_sha256=hashlib.sha256(tok_path.read_bytes()).hexdigest())


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    (d / "data" / "t").mkdir(parents=True)
    text = [" ".join(WORDS), *ANSWERS.values(), *ANSWERS, *HARD] * 5
    tok = Tokenizer.train(text, 256 + 5 + 120)
    tok.save(d / "data" / "t" / "tokenizer.json")
    (d / "data" / "t" / "meta.json").write_text(json.dumps({
        "val": {"tokens": 1000, "bytes": 4000},
        "sources": [{"name": "wiki", "spec": {"hub": "wikimedia/wikipedia"}, "docs_kept": 1234}]}))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        save(d, "chat", train_chat(tok), kind="sft")
    finally:
        torch.set_num_threads(threads)
    return d, tok


def run_export(work, monkeypatch, *args):
    """Run export.py in-process (fast) in `work`; its folder locks are released after the run."""
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "argv", ["export.py", *args])
    locks, real_claim = [], configurator.claim

    def claim_and_remember(folder):
        locks.append(real_claim(folder))
        return locks[-1]

    monkeypatch.setattr(configurator, "claim", claim_and_remember)
    try:
        runpy.run_path(str(ROOT / "export.py"), run_name="__main__")
    finally:
        for lock in locks:
            Path(lock).unlink(missing_ok=True)


def refused(work, monkeypatch, *args):
    with pytest.raises(SystemExit) as e:
        run_export(work, monkeypatch, *args)
    message = str(e.value.code)
    assert message.startswith("export.py: ") and "\n" not in message, message
    return message


# --- the model ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mlp,n_kv_head,tied", [("swiglu", 4, True), ("swiglu", 2, False), ("relu2", 4, False),
                                                ("relu2", 1, True)])
def test_logits_equal_ours(work, monkeypatch, mlp, n_kv_head, tied):
    work, tok = work
    torch.manual_seed(1)
    ours = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=48, n_layer=2, n_head=4, n_kv_head=n_kv_head,
                         n_embd=64, mlp=mlp, tie_embeddings=tied, rope_theta=500.0)).eval()
    with torch.no_grad():  # weights far from init: logits of several units, so differences would show
        for p in ours.parameters():
            p.normal_(0, 0.2)
    name = f"{mlp}{n_kv_head}{tied}"
    save(work, name, ours)
    run_export(work, monkeypatch, f"out/{name}")
    hf = AutoModelForCausalLM.from_pretrained(f"export/{name}").eval()
    assert type(hf).__name__ == ("LlamaForCausalLM" if mlp == "swiglu" else "ArceeForCausalLM")
    idx = torch.randint(0, tok.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = ours(idx)[0], hf(idx).logits
    difference = (expected - got).abs().max().item()
    print(f"{name}: max |logits difference| {difference:.2e} (logits up to {expected.abs().max():.1f})")
    assert expected.abs().max() > 3 and difference <= 1e-4


def test_norm_epsilon_is_ours():
    """At tiny activations the epsilon decides the norm: transformers' RMSNorm must use model.py's."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    x = torch.randn(3, 64) * 1e-3
    eps = export.hf_config(GPTConfig(), 0, 0)["rms_norm_eps"]
    assert torch.allclose(LlamaRMSNorm(64, eps=eps)(x), norm(x), atol=1e-6)


# --- the tokenizer --------------------------------------------------------------------------------
def tokenizer_folder(tmp_path, tok, eos="<|end|>"):
    """tokenizer.json and tokenizer_config.json as export.py writes them, loaded with AutoTokenizer."""
    (tmp_path / "tokenizer.json").write_text(json.dumps(export.tokenizer_json(tok)), encoding="utf-8")
    config = export.tokenizer_config(tok, eos, 1 << 16)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return AutoTokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_tokenizer_ids_equal_bpe_on_hard_strings(tmp_path, pattern):
    tok = Tokenizer.train([*HARD, " ".join(WORDS), *ANSWERS.values()] * 3, 256 + 5 + 150, pattern=pattern)
    hf = tokenizer_folder(tmp_path, tok)
    for text in HARD:
        ids = hf(text)["input_ids"]
        assert ids == tok.encode(text, allowed_special="all"), (pattern, text)  # special text is its token
        assert hf(text, split_special_tokens=True)["input_ids"] == tok.encode_ordinary(text), (pattern, text)
        assert hf.decode(ids) == text


def test_tokenizer_ids_equal_bpe_on_shared_documents(tmp_path):
    files = sorted((SHARED / "data" / "darija" / "pretrain").glob("*.jsonl"))
    if not files:
        pytest.skip("../shared/data is absent")
    docs = []
    for path in files:  # every source: both scripts, emoji, news
        with open(path, encoding="utf-8") as f:
            docs += [json.loads(line)["text"] for _, line in zip(range(600), f)]
    random.Random(0).shuffle(docs)
    tok = Tokenizer.train(docs[200:], 4096)
    hf = tokenizer_folder(tmp_path, tok)
    for doc in docs[:200]:
        assert hf(doc)["input_ids"] == tok.encode_ordinary(doc), doc[:80]
        assert hf.decode(tok.encode_ordinary(doc)) == doc


@pytest.mark.slow
def test_split_differs_only_on_code_points_newer_than_unicode_14():
    """Every code point, in several contexts: where Oniguruma (tokenizers) cuts text otherwise than bpe.py's
    regex, the character is one that Unicode 14 (Python 3.11's unicodedata) had not assigned yet."""
    import unicodedata
    from tokenizers import Regex, pre_tokenizers
    pattern = PATTERNS["darija"]
    split = pre_tokenizers.Split(Regex(export.oniguruma_pattern(pattern)), behavior="isolated")
    contexts = ["a", " ", "1", "\u064e", "  ", "\n", "'s", "\r\n", "!"]

    def same(text):
        return [t for t, _ in split.pre_tokenize_str(text)] == regex.findall(pattern, text)

    def probe(c):  # the character in every context, then doubled and before a letter
        return "".join(x + chr(c) for x in contexts) + chr(c) + chr(c) + "a"

    differ = []
    for start in range(0, 0x110000, 256):  # a block at a time; only a block that differs is searched
        block = [c for c in range(start, start + 256) if not 0xD800 <= c < 0xE000]
        if block and not same("".join(map(probe, block))):
            differ += [c for c in block if not same(probe(c))]
    print(f"{len(differ)} code points cut differently, from U+{differ[0]:04X}" if differ else "none")
    assert unicodedata.unidata_version >= "14" and all(unicodedata.category(chr(c)) == "Cn" for c in differ)


def test_chat_template_equals_render_for_completion(tmp_path):
    tok = Tokenizer.train([*HARD, " ".join(WORDS)] * 3, 256 + 5 + 100)
    hf = tokenizer_folder(tmp_path, tok)
    rng = random.Random(3)
    conversations = [[{"role": "user", "content": "salam"}],
                     [{"role": "system", "content": "jaweb b darija"}, {"role": "user", "content": HARD[3]}],
                     chat_example(rng) + chat_example(rng) + [{"role": "user", "content": "3afak\r\n  wach?"}]]
    for messages in conversations:
        ids = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        assert ids == tok.render_for_completion(messages)


# --- the whole export -----------------------------------------------------------------------------
PROMPTS = ["salam kidayr", "chno smitek", "شكرا بزاف"]


def hf_greedy(model, tok, prompt, max_new_tokens=24):
    """The answer transformers gives greedily to one user message: (ids, text)."""
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)[0, ids.size(1):].tolist()
    return out, tok.decode(out, skip_special_tokens=True)


def test_greedy_generate_equals_ours(work, monkeypatch):
    """transformers' greedy answers are model.generate's at temperature 0, as chat.py runs it (below)."""
    work, tok = work
    run_export(work, monkeypatch, "out/chat", "--force")
    ckpt = torch.load(work / "out" / "chat" / "best.pt", weights_only=True)
    ours = GPT(GPTConfig(**ckpt["model_config"]))
    ours.load_state_dict(ckpt["model"])
    stops = set(tok.special_tokens.values())
    folder = work / "export" / "chat"
    hf, hf_tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    for prompt, expected in zip(PROMPTS, ANSWERS.values()):
        out, answer = hf_greedy(hf, hf_tok, prompt)
        assert out == list(ours.generate(tok.render_for_completion([{"role": "user", "content": prompt}]), 24,
                                         temperature=0, stop_ids=stops))
        assert answer == expected and out[-1] == tok.special_tokens["<|end|>"], (prompt, answer)  # stopped there


@pytest.mark.slow
def test_greedy_generate_equals_chat_py(work, monkeypatch):
    work, _ = work
    run_export(work, monkeypatch, "out/chat", "--out_dir=export/chat_py", "--force")
    runs = [subprocess.Popen([sys.executable, str(ROOT / "chat.py"), "--ckpt", "out/chat", "--prompt", prompt,
                              "--temperature", "0", "--max_new_tokens", "24"], cwd=work, stdout=subprocess.PIPE,
                             text=True, encoding="utf-8", env={**os.environ, **ENV}) for prompt in PROMPTS]
    folder = work / "export" / "chat_py"
    hf, hf_tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    for prompt, run in zip(PROMPTS, runs):
        assert run.communicate(timeout=120)[0] == hf_greedy(hf, hf_tok, prompt)[1] + "\n", prompt


def test_files_and_model_card(work, monkeypatch):
    work, tok = work
    run_export(work, monkeypatch, "out/chat", "--out_dir=export/card")
    folder = work / "export" / "card"
    assert sorted(p.name for p in folder.iterdir()) == sorted(["config.json", "model.safetensors", "README.md",
                                                               "generation_config.json", "tokenizer.json",
                                                               "tokenizer_config.json"])
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"][0] == tok.special_tokens["<|end|>"]
    card = (folder / "README.md").read_text(encoding="utf-8")
    for wanted in ["ArceeForCausalLM", "2 layers", "`wikimedia/wikipedia`: 1,234 documents kept; licence: CC BY-SA",
                   "python sft.py \\\n    --dataset=t", "python export.py out/chat",
                   'pipeline("text-generation", "export/card")']:
        assert wanted in card, wanted
    base = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_kv_head=2, n_embd=32))
    save(work, "base", base)
    run_export(work, monkeypatch, "out/base")
    card = (work / "export" / "base" / "README.md").read_text(encoding="utf-8")
    # 7 steps x 4 rows x 32 tokens; 2.0 nats x 1000 tokens / 4000 bytes / ln 2
    assert "7 steps, 896 tokens seen, validation loss 2.0000 (0.721 bits per byte)" in card
    assert json.loads((work / "export" / "base" / "generation_config.json").read_text())["eos_token_id"] == tok.eot_id
    # a LoRA-merged checkpoint exports like any other; its card goes back to the base it was merged into
    ckpt = torch.load(work / "out" / "chat" / "best.pt", weights_only=True)
    torch.save({**ckpt, "kind": "lora_merged", "config": {"base": "out/base/best.pt", "rank": 2, "step": 5}},
               work / "merged.pt")
    run_export(work, monkeypatch, "merged.pt", "--out_dir=export/merged")
    card = (work / "export" / "merged" / "README.md").read_text(encoding="utf-8")
    assert card.index("python pretrain.py") < card.index("python lora.py \\\n    --rank=2\n")
    assert json.loads((work / "export" / "merged" / "config.json").read_text())["eos_token_id"] == \
        tok.special_tokens["<|end|>"]


@pytest.mark.slow
def test_readme_and_model_card_snippets_load_the_export(work, monkeypatch):
    """The README's three lines and the model card's, run as written (after the export they follow)."""
    work, _ = work
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    snippet = re.search(r"```python\n(from transformers import pipeline\n.*?)```", readme, re.S).group(1)
    assert len(snippet.strip().splitlines()) == 3
    folder = re.search(r'"(export/\w+)"', snippet).group(1)
    run_export(work, monkeypatch, "out/chat", f"--out_dir={folder}", "--force")
    card = (work / folder / "README.md").read_text(encoding="utf-8")
    card_snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    r = subprocess.run([sys.executable, "-c", snippet + card_snippet], cwd=work, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr[-2000:]


# --- bad input: one line each ---------------------------------------------------------------------
def test_bad_inputs_are_one_line(work, monkeypatch, tmp_path):
    work, tok = work
    (work / "notackpt.pt").write_bytes(b"not a checkpoint")
    assert "not a readable checkpoint" in refused(work, monkeypatch, "notackpt.pt", "--out_dir=export/x")
    assert "no checkpoint at" in refused(work, monkeypatch, "out/nothing", "--out_dir=export/x")
    assert "give one checkpoint" in refused(work, monkeypatch)
    (work / "export" / "chat").mkdir(parents=True, exist_ok=True)
    assert "already holds an export: add --force" in refused(work, monkeypatch, "out/chat")
    (work / "export" / "mine").mkdir(parents=True, exist_ok=True)
    (work / "export" / "mine" / "notes.txt").write_text("mine")
    assert "holds files export.py did not write (notes.txt)" in refused(work, monkeypatch, "out/chat",
                                                                         "--out_dir=export/mine", "--force")
    ckpt = torch.load(work / "out" / "chat" / "best.pt", weights_only=True)
    torch.save({**ckpt, "model_config": {**ckpt["model_config"], "logit_softcap": 15.0}}, work / "softcap.pt")
    assert "sets logit_softcap=15.0, which export.py has no exact transformers equivalent" in \
        refused(work, monkeypatch, "softcap.pt", "--out_dir=export/x")
    torch.save({**ckpt, "model": {**ckpt["model"], "blocks.0.attn.q_norm.weight": torch.ones(32)}}, work / "qk.pt")
    assert "weights export.py does not know how to map (blocks.0.attn.q_norm.weight)" in \
        refused(work, monkeypatch, "qk.pt", "--out_dir=export/x")
    other = Tokenizer(r"\w+|\s+|.", tok.merges, tok.special_tokens)  # the same merges, a pattern of one's own
    other.save(work / "data" / "own.json")
    torch.save({**ckpt, "tokenizer": "data/own.json", "tokenizer_sha256": None}, work / "own.pt")
    assert "split pattern is not one of bpe.py's" in refused(work, monkeypatch, "own.pt", "--out_dir=export/x")
    torch.save({**ckpt, "tokenizer": "data/gone.json"}, work / "gone.pt")
    assert "which does not exist" in refused(work, monkeypatch, "gone.pt", "--out_dir=export/x")
    tok_path = work / "data" / "t" / "tokenizer.json"
    original = tok_path.read_bytes()
    try:
        tok_path.write_bytes(original.replace(b"[", b" [", 1))
        assert "has changed since" in refused(work, monkeypatch, "out/chat", "--out_dir=export/x")
    finally:
        tok_path.write_bytes(original)
    assert not (work / "export" / "x").exists()
