"""LoRA: the adapter layers of lora.py (B = 0 changes nothing, merge is exact, only adapters learn, the
adapter file round-trips and refuses a wrong base) and lora.py's run end to end on a tiny base made here
(dataset built through sft.py, val loss falls, adapter + merged checkpoint agree, scored by eval.py)."""
import hashlib
import io
import json
import os
import runpy
import signal
import subprocess
import sys
from contextlib import redirect_stdout

import pytest
import torch
import torch.nn as nn

import configurator
from bpe import Tokenizer
from conftest import ROOT
from lora import LoRALinear, add_lora, apply_adapter, load_adapter, lora_state_dict, merge_lora, save_adapter
from model import GPT, GPTConfig, load_checkpoint, model_from_checkpoint, save_checkpoint, sha256_of

CFG = dict(vocab_size=300, block_size=32, n_layer=2, n_head=2, n_kv_head=1, n_embd=32)


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**CFG, **kw}))


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, CFG["vocab_size"], (4, 16), generator=g)


def train_adapters(model, steps, x):
    """A few Adam steps on a fixed next-token batch; returns the losses."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(steps):
        _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def test_lora_linear_starts_as_the_base_layer_and_is_initialised_like_nn_linear():
    torch.manual_seed(0)
    base = nn.Linear(64, 48, bias=False)
    layer = LoRALinear(base, rank=4, alpha=8)
    x = torch.randn(3, 64)
    assert torch.equal(layer(x), base(x))  # B = 0: exactly the base output
    assert layer.lora_A.shape == (4, 64) and layer.lora_B.shape == (48, 4) and layer.scale == 2.0
    assert not torch.any(layer.lora_B) and not base.weight.requires_grad
    bound = 1 / 64 ** 0.5  # kaiming-uniform with a = sqrt(5), as nn.Linear: U(-1/sqrt(in), 1/sqrt(in))
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.abs().max() > 0.9 * bound
    with torch.no_grad():
        layer.lora_B.normal_()
    expected = base(x) + 2.0 * (x @ layer.lora_A.T @ layer.lora_B.T)  # scaled by alpha / r, not alpha
    assert torch.allclose(layer(x), expected, atol=1e-6)
    with pytest.raises(ValueError, match="rank must be >= 1"):
        LoRALinear(base, rank=0, alpha=1)


def test_add_lora_with_b_zero_equals_the_base_model_and_names_targets_explicitly():
    model, x = tiny(), batch()
    before, _ = model(x)
    wrapped = add_lora(model, rank=4, alpha=8)
    assert wrapped == [f"blocks.{i}.{n}" for i in range(2) for n in
                       ("attn.c_q", "attn.c_k", "attn.c_v", "attn.c_proj", "mlp.c_proj")]  # "c_proj": both
    assert torch.equal(model(x)[0], before)
    only_attn = add_lora(tiny(), 4, 8, targets=("attn.c_proj", "mlp.c_gate"))
    assert only_attn == ["blocks.0.attn.c_proj", "blocks.0.mlp.c_gate", "blocks.1.attn.c_proj", "blocks.1.mlp.c_gate"]
    with pytest.raises(ValueError, match=r"LoRA target 'c_pro' matches no linear layer; choose among attn.c_k, "
                                         r"attn.c_proj, attn.c_q, attn.c_v, mlp.c_fc, mlp.c_gate, mlp.c_proj"):
        add_lora(tiny(), 4, 8, targets=("c_pro",))
    for tied in (True, False):  # the head is reached through the embedding options, never wrapped
        with pytest.raises(ValueError, match="the head is trained through chat_token_rows"):
            add_lora(tiny(tie_embeddings=tied), 4, 8, targets=("lm_head",))
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        add_lora(model, 4, 8)


def test_merge_lora_gives_a_plain_gpt_with_the_same_outputs():
    model, x = tiny(), batch()
    base_weights = {k: v.clone() for k, v in model.state_dict().items()}
    add_lora(model, rank=4, alpha=16, targets=("c_q", "c_v", "c_proj", "c_fc", "c_gate"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(std=0.05)
    unmerged, _ = model(x)
    merged = merge_lora(model)  # plain nn.Linear again, same state-dict names as a fresh GPT
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert set(merged.state_dict()) == set(base_weights)
    assert (merged(x)[0] - unmerged).abs().max() < 1e-5
    changed = {k for k, v in merged.state_dict().items() if not torch.equal(v, base_weights[k])}
    assert changed == {f"blocks.{i}.{n}.weight" for i in range(2)
                       for n in ("attn.c_q", "attn.c_v", "attn.c_proj", "mlp.c_fc", "mlp.c_gate", "mlp.c_proj")}


def test_only_adapter_parameters_get_gradients():
    model, x = tiny(), batch()
    n_base = model.num_params()
    add_lora(model, rank=2, alpha=4, targets=("attn.c_q", "attn.c_v"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"blocks.{i}.attn.{c}.lora_{ab}" for i in range(2) for c in ("c_q", "c_v") for ab in "AB"}
    n_adapter = 2 * 2 * ((32 + 32) + (32 + 16))  # layers x rank x (in + out) of c_q, and of c_v (one kv head)
    assert sum(p.numel() for n, p in model.named_parameters() if n in trainable) == n_adapter
    assert model.num_params() == n_base + n_adapter
    frozen = {n: p.clone() for n, p in model.named_parameters() if n not in trainable}
    _, loss = model(x[:, :-1], x[:, 1:])
    loss.backward()
    assert all((p.grad is not None) == (n in trainable) for n, p in model.named_parameters())
    model.zero_grad()
    train_adapters(model, 3, x)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


def test_token_rows_train_only_the_chosen_embedding_rows_shared_with_a_tied_head():
    ids = [297, 299]
    for tied in (True, False):
        model, x = tiny(tie_embeddings=tied), batch()
        base_wte, base_head = model.wte.weight.clone(), model.lm_head.weight.clone()
        before, _ = model(x)
        add_lora(model, rank=2, alpha=4, targets=("c_q",), token_ids=ids)
        assert torch.equal(model(x)[0], before)  # rows start as the base's rows: nothing changes
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == {f"blocks.{i}.attn.c_q.lora_{ab}" for i in range(2) for ab in "AB"} | (
            {"wte.rows"} if tied else {"wte.rows", "lm_head.rows"})  # tied: one parameter for both
        assert model.wte.rows.shape == (2, 32) and (model.lm_head.rows is model.wte.rows) == tied
        train_adapters(model, 3, x)
        assert not torch.equal(model.wte.rows, base_wte[ids])
        unmerged, _ = model(x)
        merged = merge_lora(model)  # the rows written into the base weights, plain modules again
        assert type(merged.wte) is nn.Embedding and type(merged.lm_head) is nn.Linear
        assert (merged.lm_head.weight is merged.wte.weight) == tied
        changed = (merged.wte.weight != base_wte).any(1).nonzero().flatten().tolist()
        assert changed == ids, changed  # every other row is untouched
        if not tied:
            assert (merged.lm_head.weight != base_head).any(1).nonzero().flatten().tolist() == ids
        assert (merged(x)[0] - unmerged).abs().max() < 1e-5
    with pytest.raises(ValueError, match=r"token ids \[5, 300\] are not all in the vocabulary \(0..299\)"):
        add_lora(tiny(), 2, 4, token_ids=[300, 5])


def test_embedding_rank_updates_every_row_at_low_rank_and_merges_exactly():
    for tied in (True, False):
        model, x = tiny(tie_embeddings=tied), batch()
        base_wte = model.wte.weight.clone()
        before, _ = model(x)
        add_lora(model, rank=2, alpha=4, targets=("c_v",), token_ids=[299], embedding_rank=3)
        assert torch.equal(model(x)[0], before)  # B = 0
        trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
        emb = {"wte.lora_A": 3 * 32, "wte.lora_B": 300 * 3, "wte.rows": 32}
        assert {k: v for k, v in trainable.items() if not k.startswith("blocks")} == (
            emb if tied else {**emb, **{k.replace("wte", "lm_head"): v for k, v in emb.items()}})
        train_adapters(model, 3, x)
        delta = model.wte.weight.detach() - base_wte
        assert torch.linalg.matrix_rank(delta[:299]) == 3 and torch.equal(model.wte.weight[299], model.wte.rows[0])
        unmerged, _ = model(x)
        merged = merge_lora(model)  # a tied head's shared weight is updated once, not twice
        assert (merged.lm_head.weight is merged.wte.weight) == tied
        assert torch.allclose(merged.wte.weight, base_wte + delta, atol=1e-6)
        assert (merged(x)[0] - unmerged).abs().max() < 1e-5


def test_a_few_adapter_steps_reduce_the_loss():
    model, x = tiny(), batch()
    # An embedding at a trained model's scale: with the N(0, 0.02) init every logit is ~0 and a
    # frozen head leaves the adapters almost nothing to move.
    nn.init.normal_(model.wte.weight, std=0.3)
    add_lora(model, rank=2, alpha=4)
    losses = train_adapters(model, 15, x)
    assert losses[-1] < losses[0] - 2.0, losses


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A saved base checkpoint and a trained adapter on it."""
    tmp_path = tmp_path_factory.mktemp("adapter")
    base = tiny()
    ckpt_path = tmp_path / "base.pt"
    save_checkpoint(ckpt_path, base, kind="base")
    model, x = model_from_checkpoint(load_checkpoint(str(ckpt_path))), batch()
    add_lora(model, rank=4, alpha=8, targets=("c_q", "c_k", "c_v", "c_proj"), token_ids=[298, 299], embedding_rank=2)
    train_adapters(model, 5, x)
    adapter_path = tmp_path / "adapter.pt"
    save_adapter(adapter_path, model, ckpt_path, sha256_of(ckpt_path), 4, 8, ["c_q", "c_k", "c_v", "c_proj"],
                 tokenizer="tok.json", tokenizer_sha256="ab" * 32, config={"lr": 1e-3}, token_ids=[299, 298],
                 embedding_rank=2)
    return ckpt_path, adapter_path, model, x


def test_adapter_file_round_trips_and_applies_like_the_trained_model(trained, tmp_path):
    ckpt_path, adapter_path, model, x = trained
    expected, _ = model(x)
    adapter = torch.load(adapter_path, weights_only=True)
    assert {k: adapter[k] for k in ("format", "version", "rank", "alpha", "targets", "token_ids", "embedding_rank",
                                    "base", "tokenizer")} == dict(
        format="darija-gpt-lora", version=1, rank=4, alpha=8.0, targets=["c_q", "c_k", "c_v", "c_proj"],
        token_ids=[298, 299], embedding_rank=2, base=str(ckpt_path), tokenizer="tok.json")
    assert adapter["base_sha256"] == hashlib.sha256(ckpt_path.read_bytes()).hexdigest()
    assert set(adapter["lora"]) == set(lora_state_dict(model)) and len(adapter["lora"]) == 2 * 5 * 2 + 2 * 3
    assert adapter["lora"]["wte.rows"].shape == (2, 32)  # and "lm_head.rows": the same tensor (tied)
    assert adapter["lora"]["wte.lora_B"].shape == (300, 2) and adapter["lora"]["wte.lora_B"].abs().sum() > 0
    assert all(torch.equal(adapter["lora"][k], v) for k, v in lora_state_dict(model).items())
    applied = apply_adapter(model_from_checkpoint(load_checkpoint(str(ckpt_path))), str(adapter_path),
                            sha256_of(ckpt_path))
    assert not any(isinstance(m, LoRALinear) for m in applied.modules())
    assert (applied(x)[0] - expected).abs().max() < 1e-5
    save_checkpoint(tmp_path / "merged.pt", applied, kind="lora_merged")  # a normal checkpoint again
    reloaded = model_from_checkpoint(load_checkpoint(str(tmp_path / "merged.pt")))
    assert torch.equal(reloaded(x)[0], applied(x)[0])


def test_wrong_base_and_bad_files_are_clear_errors(trained, tmp_path):
    ckpt_path, adapter_path, _, _ = trained
    other = tmp_path / "other.pt"
    save_checkpoint(other, tiny(seed=1), kind="base")
    sha = sha256_of(ckpt_path)
    with pytest.raises(ValueError, match=rf"adapter {adapter_path} was trained on base {ckpt_path} \(sha "
                                         rf"{sha[:12]}\), not on this checkpoint \(sha {sha256_of(other)[:12]}\)"):
        apply_adapter(model_from_checkpoint(load_checkpoint(str(other))), str(adapter_path), sha256_of(other))
    with pytest.raises(ValueError, match="it looks like a checkpoint"):
        load_adapter(str(ckpt_path))
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="is not a readable adapter file"):
        load_adapter(str(tmp_path / "junk.pt"))
    wider = tmp_path / "wider.pt"
    save_checkpoint(wider, tiny(n_embd=64), kind="base")
    with pytest.raises(ValueError, match="has shape"):  # same sha passed on purpose: shapes still checked
        apply_adapter(model_from_checkpoint(load_checkpoint(str(wider))), str(adapter_path), sha)


# --- lora.py end to end -----------------------------------------------------------------------

PAIRS = [dict(darija=f"jomla {i} dyal darija", darija_ar=f"جملة {i} ديال الدارجة", eng=f"sentence number {i}")
         for i in range(60)]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("lora")
    (d / "pairs.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in PAIRS), "utf-8")
    (d / "data/base").mkdir(parents=True)
    tok = Tokenizer.train([json.dumps(r, ensure_ascii=False) for r in PAIRS], 256 + 5 + 60)
    tok.save(d / "data/base/tokenizer.json")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_kv_head=2, n_embd=32))
    save_checkpoint(d / "out/base/best.pt", model, kind="base", tokenizer="data/base/tokenizer.json",
                    tokenizer_sha256=hashlib.sha256((d / "data/base/tokenizer.json").read_bytes()).hexdigest())
    (d / "sft_test.py").write_text(
        'sources = [dict(path="pairs.jsonl", kind="pairs", latin="darija", arabic="darija_ar", english="eng")]\n'
        'val_fraction = 0.25\n', encoding="utf-8")
    (d / "lora_test.py").write_text(
        'init_from = "out/base"\nout_dir = "out/lora"\nsft_dataset = "t"\nsft_config = "sft_test.py"\n'
        'rank = 4\nalpha = 8.0\nbatch_size = 4\nblock_size = 48\neval_iters = 4\n'
        'warmup_iters = 2\nlearning_rate = 2e-2\nmax_iters = 30\neval_interval = 15\nmetric_items = 3\n'
        'max_new_tokens = 4\nsample_prompts = []\n', encoding="utf-8")
    return d


def run_lora(work, monkeypatch, *args):
    """Run lora.py in-process in `work` (sft.py still runs as its own process); return its output. The
    out_dir it locks is unlocked after the run: in-process, the lock would last until pytest exits."""
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "argv", ["lora.py", "lora_test.py", *args])
    locks, real_claim = [], configurator.claim

    def claim_and_remember(folder):
        locks.append(real_claim(folder))
        return locks[-1]

    monkeypatch.setattr(configurator, "claim", claim_and_remember)
    out = io.StringIO()
    try:
        with redirect_stdout(out):
            runpy.run_path(str(ROOT / "lora.py"), run_name="__main__")
    finally:
        for lock in locks:
            if os.path.exists(lock):
                os.remove(lock)
    return out.getvalue()


def start_lora(work, *args):
    """Start lora.py as its own process; return it once it prints its first "step" line (training has begun)."""
    proc = subprocess.Popen([sys.executable, "-u", str(ROOT / "lora.py"), "lora_test.py", *args], cwd=work,
                            text=True, encoding="utf-8", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    for line in proc.stdout:
        if line.startswith("step"):
            return proc
    raise AssertionError(f"lora.py ended before training (exit {proc.wait()}): {proc.stderr.read()}")


def test_lora_py_trains_saves_the_adapter_and_a_merged_checkpoint(work, monkeypatch):
    log = run_lora(work, monkeypatch, "--merge")
    assert "building it with" in log and (work / "data/sft/t/train.jsonl").is_file()  # made by sft.py
    losses = [float(l.split("val loss ")[1].split()[0]) for l in log.splitlines() if l.startswith("step") and "val loss" in l]
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2], log  # a random base: small steps
    metrics = json.loads((work / "out/lora/metrics.json").read_text("utf-8"))
    assert metrics["steps"] == 30 and set(metrics["lora"]) == {"lat2ar", "dar2en", "en2dar", "ar2lat"}
    report = json.loads((work / "out/lora/eval/report.json").read_text("utf-8"))  # eval.py's, on the merged model
    assert [(c["path"], c["kind"]) for c in report["checkpoints"]] == [("out/lora/best.pt", "lora_merged")]
    assert metrics["lora"] == report["checkpoints"][0]["translation"] and metrics["lora"]["lat2ar"]["items"] == 3
    # rank 4 on q k v attn.c_proj (32 -> 32), mlp.c_fc and mlp.c_proj (32 <-> 128), the default 4 chat-token
    # and 195 task-token rows of 32, and the default rank-2 update of the (321 x 32) embedding
    assert metrics["trainable_params"] == 4 * 4 * (32 + 32) + 2 * 4 * (128 + 32) + (4 + 195) * 32 + 2 * (321 + 32)
    merged = load_checkpoint(str(work / "out/lora"))
    assert merged["kind"] == "lora_merged"
    base_file = str(work / "out/base/best.pt")
    applied = apply_adapter(model_from_checkpoint(load_checkpoint(base_file)), str(work / "out/lora/adapter.pt"),
                            sha256_of(base_file))
    x = torch.randint(0, 300, (2, 10))
    assert torch.equal(model_from_checkpoint(merged)(x)[0], applied(x)[0])
    with pytest.raises(SystemExit, match="adapter.pt already exists: add --force"):
        run_lora(work, monkeypatch)


def test_lora_py_trains_in_fp16_with_a_grad_scaler(work, monkeypatch):
    """--dtype=float16 (a T4's or V100's training) on the CPU: autocast + a GradScaler that scales every step
    (lora.py keeps no last.pt: an interrupted run restarts, so there is no loss scale to resume)."""
    real_update, updates = torch.amp.GradScaler.update, []

    def counted_update(self, *args, **kwargs):
        updates.append(self.get_scale())  # 1.0 when disabled: a scaling one is far above
        return real_update(self, *args, **kwargs)

    monkeypatch.setattr(torch.amp.GradScaler, "update", counted_update)
    log = run_lora(work, monkeypatch, "--dtype=float16", "--out_dir=out/fp16", "--metric_items=0", "--max_iters=20",
                   "--eval_interval=10")
    assert "training on cpu (float16)" in log
    losses = [float(l.split("val loss ")[1].split()[0]) for l in log.splitlines() if l.startswith("step") and "val loss" in l]
    assert len(losses) == 3 and losses[0] > losses[2], log
    assert len(updates) == 20 and all(scale > 1 for scale in updates)
    with pytest.raises(SystemExit, match="dtype must be auto, bfloat16, float16 or float32; got 'fp16'"):
        run_lora(work, monkeypatch, "--dtype=fp16", "--out_dir=out/fp16x")


def test_lora_py_errors_are_clear(work, monkeypatch):
    with pytest.raises(SystemExit, match="no base checkpoint at out/none: pre-train one"):
        run_lora(work, monkeypatch, "--init_from=out/none")
    with pytest.raises(SystemExit, match="LoRA target 'qkv' matches no linear layer"):
        run_lora(work, monkeypatch, "--targets=['qkv']", "--out_dir=out/lora2")
    with pytest.raises(SystemExit, match="is missing and so is nope.py"):
        run_lora(work, monkeypatch, "--sft_dataset=new", "--sft_config=nope.py")


def test_lora_py_task_token_rows_are_tokens_of_the_sft_data(work, monkeypatch):
    log = run_lora(work, monkeypatch, "--task_token_rows=5", "--out_dir=out/lora_rows", "--max_iters=2",
                   "--metric_items=0")
    tok = Tokenizer.load(work / "data/base/tokenizer.json")
    chat = {tok.special_tokens[t] for t in ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")}
    token_ids = load_adapter(str(work / "out/lora_rows/adapter.pt"))["token_ids"]
    task = set(token_ids) - chat
    assert set(token_ids) >= chat and len(task) == 5 and "the 5 task tokens:" in log
    seen = set()  # every token of the training conversations, prompts and answers
    for line in (work / "data/sft/t/train.jsonl").read_text("utf-8").splitlines():
        seen.update(tok.render_conversation(json.loads(line)["messages"])[0])
    assert task <= seen  # of 321 tokens, rows of tokens the data never uses get ~no gradient
    metrics = json.loads((work / "out/lora_rows/metrics.json").read_text("utf-8"))
    assert metrics["token_rows"] == 9 and metrics["task_token_rows"] == 5
    assert metrics["trainable_params"] == 4 * 4 * (32 + 32) + 2 * 4 * (128 + 32) + 9 * 32 + 2 * (321 + 32)
    # an untied head: its rows are chosen and trained with the embedding's
    torch.manual_seed(0)
    untied = GPT(GPTConfig(vocab_size=321, block_size=64, n_layer=1, n_head=2, n_kv_head=2, n_embd=32,
                           tie_embeddings=False))
    base = load_checkpoint(str(work / "out/base/best.pt"))
    save_checkpoint(work / "out/untied/best.pt", untied, kind="base", tokenizer=base["tokenizer"],
                    tokenizer_sha256=base["tokenizer_sha256"])
    run_lora(work, monkeypatch, "--init_from=out/untied", "--task_token_rows=5", "--out_dir=out/lora_untied",
             "--max_iters=2", "--metric_items=0")
    lora = load_adapter(str(work / "out/lora_untied/adapter.pt"))["lora"]
    assert lora["wte.rows"].shape == lora["lm_head.rows"].shape == (9, 32)
    assert not torch.equal(lora["wte.rows"], lora["lm_head.rows"])  # two matrices, two sets of rows
    with pytest.raises(SystemExit, match=r"task_token_rows=400: choose between 0 and 317 \(the vocabulary has 321 "
                                         r"tokens, 4 of them chat tokens\)"):
        run_lora(work, monkeypatch, "--task_token_rows=400", "--out_dir=out/lora_rows2")


# --- reliability (issue 14): adapter files, folders, locks, one-line errors, Ctrl-C ------------------

def test_an_empty_or_incomplete_adapter_file_is_one_clear_error(trained, tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")  # torch.load raises EOFError with an empty message
    with pytest.raises(ValueError, match=rf"{empty} is not a readable adapter file \(truncated or corrupt\): EOFError"):
        load_adapter(str(empty))
    _, adapter_path, _, _ = trained
    adapter = torch.load(adapter_path, weights_only=True)
    del adapter["base_sha256"], adapter["rank"]
    torch.save(adapter, tmp_path / "incomplete.pt")
    with pytest.raises(ValueError, match=r"incomplete.pt is an incomplete adapter file: it lacks rank, base_sha256;"):
        load_adapter(str(tmp_path / "incomplete.pt"))


def test_merge_adapter_on_an_empty_file_is_one_line(work, monkeypatch):
    (work / "empty_adapter.pt").write_bytes(b"")
    with pytest.raises(SystemExit, match=r"lora.py: empty_adapter.pt is not a readable adapter file"):
        run_lora(work, monkeypatch, "--merge_adapter=empty_adapter.pt", "--init_from=out/base")


def test_sft_dataset_must_be_a_plain_name(work, monkeypatch):
    with pytest.raises(SystemExit, match=r"sft_dataset must be a plain name .*got '../t'"):
        run_lora(work, monkeypatch, "--sft_dataset=../t", "--out_dir=out/plain")


def test_out_dir_holding_other_files_is_refused_even_with_force(work, monkeypatch):
    folder = work / "out/lora_notes"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine", encoding="utf-8")
    for force in ([], ["--force"]):
        with pytest.raises(SystemExit, match=r"out/lora_notes/ holds files lora.py did not write: notes.txt;"):
            run_lora(work, monkeypatch, "--out_dir=out/lora_notes", "--max_iters=1", "--metric_items=0", *force)
    assert os.listdir(folder) == ["notes.txt"]


def test_dataset_built_with_another_tokenizer_names_both(work, monkeypatch):
    data = work / "data/sft/alien"  # as sft.py writes it, but for another tokenizer
    data.mkdir(parents=True)
    for split in ("train", "val"):
        (data / f"{split}.jsonl").write_text("", encoding="utf-8")
    stats = dict(tokenizer="data/alien/tokenizer.json", tokenizer_sha256="ab" * 32, sources=[], train={}, val={})
    (data / "stats.json").write_text(json.dumps(stats), encoding="utf-8")
    base_sha = sha256_of(work / "data/base/tokenizer.json")
    with pytest.raises(SystemExit, match=rf"data/sft/alien/ was built with tokenizer data/alien/tokenizer.json \(sha256 "
                                         rf"abababababab\), not with the base's data/base/tokenizer.json \(sha256 {base_sha[:12]}\)"):
        run_lora(work, monkeypatch, "--sft_dataset=alien", "--out_dir=out/alien")


def test_device_cuda_without_cuda_is_one_line(work, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match=r"--device=cuda: no CUDA device here \(use --device=cpu, or auto\)"):
        run_lora(work, monkeypatch, "--out_dir=out/lora_cuda", "--device=cuda", "--max_iters=1", "--metric_items=0")


def test_a_second_run_on_the_same_out_dir_names_the_first(work, monkeypatch):
    first = start_lora(work, "--out_dir=out/lora_locked", "--max_iters=100000", "--eval_interval=100000",
                       "--task_token_rows=5")
    try:
        with pytest.raises(SystemExit, match=rf"out/lora_locked is in use by process {first.pid} "):
            run_lora(work, monkeypatch, "--out_dir=out/lora_locked", "--force", "--max_iters=1", "--metric_items=0",
                     "--task_token_rows=5")
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)


def test_ctrl_c_keeps_the_best_adapter_and_says_so(work):
    run = start_lora(work, "--out_dir=out/lora_ctrlc", "--max_iters=100000", "--eval_interval=100000",
                     "--log_interval=1", "--task_token_rows=5")
    os.kill(run.pid, signal.SIGINT)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 130 and "Traceback" not in err, err
    stopped = [line for line in out.splitlines() if line.startswith("stopped at step ")]
    assert len(stopped) == 1 and stopped[0].endswith(": out/lora_ctrlc/adapter.pt holds the best adapter (step 0)"), out
    assert load_adapter(str(work / "out/lora_ctrlc/adapter.pt"))["config"]["step"] == 0
    assert not (work / "out/lora_ctrlc/metrics.json").exists()  # stopped: no merge, no metric
