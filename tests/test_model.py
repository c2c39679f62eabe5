"""model.py: shapes, causality, KV-cache generation == recomputation, the loss (plain and chunked), the
learning-rate schedule, checkpoints and the tokenizer each names."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT  # noqa: F401  (puts the project root on sys.path)
from bpe import Tokenizer
from model import (GPT, ContextFullError, GPTConfig, apply_rotary, chunked_cross_entropy, estimate_mfu,
                   learning_rate_at, load_checkpoint, orthogonalise, load_with_tokenizer, model_from_checkpoint, norm,
                   rotary_angles, sample, save_checkpoint, sha256_of)


def tiny(**kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
    return GPT(GPTConfig(**{**cfg, **kw})).eval()


@pytest.mark.parametrize("mlp", ["swiglu", "relu2"])
def test_shapes_and_loss(mlp):
    model = tiny(mlp=mlp)
    idx = torch.randint(0, 97, (3, 10))
    logits, loss = model(idx)
    assert logits.shape == (3, 10, 97) and loss is None
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 10, 97) and loss.shape == () and 3.5 < loss.item() < 5.5  # ~ln(97) = 4.57 at init
    model.chunked_loss = True  # CPU training: the head's loss a chunk at a time, no logits built
    chunked_logits, chunked = model(idx, idx)
    assert chunked_logits is None and torch.allclose(chunked, loss)


def test_ignored_targets_do_not_count():
    model = tiny()
    idx = torch.randint(0, 97, (2, 8))
    targets = idx.clone()
    targets[:, :5] = -1
    logits = model(idx)[0]
    expected = torch.nn.functional.cross_entropy(logits[:, 5:].reshape(-1, 97), idx[:, 5:].reshape(-1))
    assert torch.allclose(model(idx, targets)[1], expected)      # logits + F.cross_entropy
    model.chunked_loss = True
    assert torch.allclose(model(idx, targets)[1], expected)      # training: the chunked head loss
    with torch.no_grad():
        assert model(idx, targets)[0] is not None                # evaluation: the plain path again
    assert torch.isnan(model(idx, torch.full_like(idx, -1))[1])  # nothing to count: NaN, as F.cross_entropy


def test_chunked_head_loss_equals_plain_cross_entropy():
    # a 131,072-token vocabulary makes chunks of 16 rows: 50 rows are 4 chunks, the last one short
    torch.manual_seed(0)
    h = torch.randn(50, 8, requires_grad=True)
    weight = torch.randn(2 ** 17, 8, requires_grad=True)
    targets = torch.randint(0, 2 ** 17, (50,))
    targets[[3, 17, 49]] = -1
    loss = chunked_cross_entropy(h, weight, targets)
    (2 * loss).backward()
    grads = h.grad, weight.grad
    h.grad = weight.grad = None
    expected = torch.nn.functional.cross_entropy(h @ weight.t(), targets, ignore_index=-1)
    (2 * expected).backward()
    assert torch.allclose(loss, expected)
    # sums over 131,072 logits in float32, in another order: equal to ~1e-6 (the gradients are ~0.1)
    assert torch.allclose(grads[0], h.grad, atol=1e-5) and torch.allclose(grads[1], weight.grad, atol=1e-7)
    assert grads[0][[3, 17, 49]].abs().sum() == 0 and grads[0][[0, 16, 48]].abs().min() > 0


def test_causality():
    model = tiny()
    idx = torch.randint(0, 97, (2, 16))
    changed = idx.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % 97
    a, b = model(idx)[0], model(changed)[0]
    assert torch.equal(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_rotary_turns_each_pair_by_position_times_its_frequency():
    cos, sin = rotary_angles(8, 10000.0, 3, 5, "cpu")
    x = torch.randn(2, 5, 4, 8)
    rotated = apply_rotary(x, cos, sin)
    assert torch.allclose(rotated.norm(dim=-1), x.norm(dim=-1), atol=1e-5)  # a rotation keeps lengths
    for pair, frequency in ((0, 1.0), (2, 10000.0 ** -0.5)):  # pair i turns by position x theta^(-2i/8)
        turned = torch.atan2(rotated[..., 2 * pair + 1], rotated[..., 2 * pair]) - \
            torch.atan2(x[..., 2 * pair + 1], x[..., 2 * pair])
        angle = torch.arange(3.0, 8.0)[:, None] * frequency
        assert torch.allclose(turned.cos(), angle.cos(), atol=1e-4) and torch.allclose(turned.sin(), angle.sin(), atol=1e-4)
    assert torch.equal(apply_rotary(x, *rotary_angles(8, 10000.0, 0, 5, "cpu"))[:, 0], x[:, 0])  # position 0


def test_rms_norm():
    x = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    y = norm(x)
    assert torch.allclose(y, x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6))
    assert torch.allclose((y * y).mean(-1), torch.ones(3, 5, dtype=torch.float64), atol=1e-6)


def test_learning_rate_schedules():
    cosine = [learning_rate_at(step, 1.0, 0.1, 10, 110) for step in range(120)]
    assert cosine[0] == 0.1 and cosine[9] == 1.0 and cosine[10] == 1.0  # linear warmup, then the peak
    assert cosine[60] == pytest.approx(0.55) and cosine[110] == cosine[119] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(cosine[10:], cosine[11:]))
    wsd = [learning_rate_at(step, 1.0, 0.1, 10, 110, "wsd", decay_frac=0.2) for step in range(120)]
    assert wsd[10] == wsd[88] == 1.0 and wsd[99] == pytest.approx(0.1 + 0.9 * 11 / 22)  # decay from step 88
    assert wsd[110] == wsd[119] == pytest.approx(0.1)


def greedy_by_recompute(model, ids, n):
    ids = list(ids)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids]))[0][0, -1].argmax()))
    return ids


@pytest.mark.parametrize("n_kv_head", [4, 1])
def test_kv_cache_generation_equals_recompute(n_kv_head):
    model = tiny(n_kv_head=n_kv_head)
    prompt = [5, 17, 3, 44, 9]
    assert list(model.generate(prompt, 20, temperature=0)) == greedy_by_recompute(model, prompt, 20)[5:]


def test_cache_kept_across_calls():
    model = tiny()
    cache = model.new_cache()
    first = list(model.generate([1, 2, 3], 4, temperature=0, cache=cache))
    # the last yielded token is not fed yet: the cache holds the context and all but the last token
    assert cache.pos == 3 + 3 and cache.tokens == [1, 2, 3] + first[:3]
    turn2 = [1, 2, 3] + first + [7, 8]
    second = list(model.generate(turn2, 5, temperature=0, cache=cache))
    assert second == greedy_by_recompute(model, turn2, 5)[len(turn2):]
    # a context that diverges from the cache keeps only the common prefix
    other = [1, 2, 9, 9]
    assert list(model.generate(other, 3, temperature=0, cache=cache)) == greedy_by_recompute(model, other, 3)[4:]
    cache.truncate(2)
    assert cache.tokens == [1, 2] and cache.pos == 2
    cache.truncate(0)
    assert cache.pos == 0 and cache.tokens == []


def test_stop_ids_and_context_full():
    model = tiny()
    greedy = list(model.generate([4], 10, temperature=0))
    stopped = list(model.generate([4], 10, temperature=0, stop_ids=(greedy[2],)))
    assert stopped == greedy[:greedy.index(greedy[2]) + 1]
    with pytest.raises(ContextFullError, match="longer than block_size 32"):
        list(model.generate(list(range(33)), 1))
    # 31 context tokens fill the cache after one more token has been fed: the third must fail
    out = []
    with pytest.raises(ContextFullError):
        for t in model.generate(list(range(31)), 5, temperature=0):
            out.append(t)
    assert len(out) == 2


def test_sampling_filters():
    logits = torch.tensor([0.0, 5.0, 4.0, -3.0])
    torch.manual_seed(0)
    assert {sample(logits, 1.0, top_k=1) for _ in range(20)} == {1}
    assert {sample(logits, 1.0, top_p=0.5) for _ in range(20)} == {1}
    assert {sample(logits, 2.0, top_k=2) for _ in range(200)} == {1, 2}
    assert sample(logits, 0) == 1


def test_mean_loss_counts_every_target_once_whatever_the_batches():
    model = tiny()
    inputs = torch.randint(0, 97, (5, 8))
    targets = inputs.clone()
    targets[1] = -1           # a row of padding alone: no loss of its own, no NaN
    targets[3, :6] = -1
    expected = torch.nn.functional.cross_entropy(model(inputs)[0].reshape(-1, 97), targets.reshape(-1),
                                                 ignore_index=-1)
    for batch_size in (1, 2, 5):
        assert model.mean_loss(inputs, targets, batch_size) == pytest.approx(expected.item(), rel=1e-5)


def test_loss_falls_when_overfitting():
    model = tiny().train()
    opt = model.configure_optimizers(0.0, 1e-2, (0.9, 0.95), "cpu")
    batch = torch.randint(0, 97, (4, 17))
    losses = []
    for _ in range(30):
        _, loss = model(batch[:, :-1], batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_orthogonalise_sends_singular_values_near_1():
    """Newton-Schulz's U V^T: every singular value of a gradient-like matrix (any scale, wide or tall, one
    direction dominating) lands in the iteration's band, ~0.68-1.13, and the directions are U V^T's."""
    torch.manual_seed(0)
    u, _, v = torch.linalg.svd(torch.randn(64, 256), full_matrices=False)
    for g in (torch.randn(64, 256), 1e-3 * torch.randn(256, 64), u @ torch.diag(torch.linspace(1, 20, 64)) @ v):
        x = orthogonalise(g)
        s = torch.linalg.svdvals(x)
        assert x.shape == g.shape and 0.6 < s.min() and s.max() < 1.2
        u_g, _, v_g = torch.linalg.svd(g, full_matrices=False)
        assert torch.linalg.norm(x - u_g @ v_g) / torch.linalg.norm(u_g @ v_g) < 0.3


def test_muon_takes_the_blocks_matrices_loss_falls_and_its_state_resumes_exactly():
    model = tiny(mlp="relu2").train()
    opt = model.configure_optimizers(0.1, 1e-2, (0.9, 0.95), "cpu", muon_lr=0.05)
    muon, adamw = opt.param_groups
    assert muon["muon"] and muon["weight_decay"] == 0.0 and muon["lr_scale"] == pytest.approx(5.0)
    assert {id(p) for p in muon["params"]} == {id(p) for p in model.blocks.parameters()}  # all matrices: no gains
    assert [id(p) for p in adamw["params"]] == [id(model.wte.weight)]  # the embedding, tied to the head
    batch = torch.randint(0, 97, (4, 17))

    def steps(model, opt, n):
        losses = []
        for _ in range(n):
            loss = model(batch[:, :-1], batch[:, 1:])[1]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        return losses

    full = steps(model, opt, 30)
    assert full[-1] < 0.3 * full[0]
    part = tiny(mlp="relu2").train()
    part_opt = part.configure_optimizers(0.1, 1e-2, (0.9, 0.95), "cpu", muon_lr=0.05)
    assert steps(part, part_opt, 10) == full[:10]
    state = {"model": part.state_dict(), "opt": part_opt.state_dict()}
    resumed = tiny(mlp="relu2").train()
    resumed.load_state_dict(state["model"])
    resumed_opt = resumed.configure_optimizers(0.1, 1e-2, (0.9, 0.95), "cpu", muon_lr=0.05)
    resumed_opt.load_state_dict(state["opt"])
    assert steps(resumed, resumed_opt, 20) == full[10:]


def test_config_errors():
    with pytest.raises(ValueError, match="mlp must be 'swiglu' or 'relu2'"):
        GPTConfig(mlp="gelu")
    with pytest.raises(ValueError, match=r"n_kv_head \(3\) must divide n_head \(4\)"):
        GPTConfig(n_head=4, n_kv_head=3, n_embd=32)


def test_params_optimizer_groups_and_mfu():
    model = tiny(tie_embeddings=True)
    untied = tiny(tie_embeddings=False)
    assert untied.num_params() - model.num_params() == 97 * 32
    groups = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu").param_groups
    assert [g["weight_decay"] for g in groups] == [0.1]  # no biases or gains: only matrices
    assert all(p.dim() == 2 for p in groups[0]["params"])
    assert estimate_mfu(model, 1000, 1e12) == pytest.approx(model.flops_per_token() * 1000 / 1e12)


def test_checkpoint_round_trip(tmp_path):
    model = tiny(mlp="relu2")
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    path = tmp_path / "run" / "best.pt"
    save_checkpoint(str(path), model, kind="sft", step=7, best_val_loss=2.5, config={"lr": 1e-3, "t": (1, 2)},
                    tokenizer="data/x/tokenizer.json", tokenizer_sha256="ab" * 32, optimizer=opt)
    assert os.listdir(path.parent) == ["best.pt"]  # no temp file left behind
    ckpt = load_checkpoint(str(path.parent))  # a directory means its best.pt
    assert (ckpt["kind"], ckpt["step"], ckpt["best_val_loss"], ckpt["config"]) == ("sft", 7, 2.5, {"lr": 1e-3, "t": [1, 2]})
    assert ckpt["tokenizer"] == "data/x/tokenizer.json" and "optimizer" in ckpt
    again = model_from_checkpoint(ckpt).eval()
    idx = torch.randint(0, 97, (1, 12))
    assert torch.equal(model(idx)[0], again(idx)[0]) and again.config == model.config


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(str(tmp_path / "missing.pt"))
    path = tmp_path / "last.pt"
    save_checkpoint(str(path), tiny())
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match="is not a readable checkpoint"):
        load_checkpoint(str(path))
    path.write_bytes(b"")  # a 0-byte file (a full disk): torch.load's error has no message at all
    with pytest.raises(ValueError, match="last.pt is not a readable checkpoint .*: EOFError"):
        load_checkpoint(str(path))
    (tmp_path / "best.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="best.pt is not a readable checkpoint"):
        load_checkpoint(str(tmp_path))  # a directory means its best.pt
    torch.save({"state_dict": {}}, str(path))
    with pytest.raises(ValueError, match="is not a darija-gpt checkpoint: missing model, model_config, kind"):
        load_checkpoint(str(path))
    with pytest.raises(ValueError, match="kind must be"):
        save_checkpoint(str(path), tiny(), kind="chat")


def test_load_with_tokenizer_checks_the_file_it_names(tmp_path):
    tok = Tokenizer.train(["salam 3likom, kidayr? labas"] * 3, 256 + 5 + 10)
    tok.save(tmp_path / "tok.json")
    sha = sha256_of(tmp_path / "tok.json")
    save_checkpoint(tmp_path / "ok.pt", tiny(), tokenizer=tmp_path / "tok.json", tokenizer_sha256=sha)
    ckpt, loaded, path = load_with_tokenizer(tmp_path / "ok.pt")
    assert loaded.merges == tok.merges and path == str(tmp_path / "tok.json") and ckpt["kind"] == "base"
    save_checkpoint(tmp_path / "none.pt", tiny())
    with pytest.raises(ValueError, match="does not name its tokenizer file"):
        load_with_tokenizer(tmp_path / "none.pt")
    save_checkpoint(tmp_path / "gone.pt", tiny(), tokenizer=tmp_path / "gone.json")
    with pytest.raises(ValueError, match="was trained with the tokenizer .*gone.json, which does not exist"):
        load_with_tokenizer(tmp_path / "gone.pt")
    save_checkpoint(tmp_path / "other.pt", tiny(), tokenizer=tmp_path / "tok.json", tokenizer_sha256="0" * 64)
    with pytest.raises(ValueError, match="tok.json has changed since .*other.pt was trained"):
        load_with_tokenizer(tmp_path / "other.pt")


def test_gpu_benchmark_runs_its_code_path_on_cpu():
    # bench/gpu.py is for a GPU; its smoke mode runs the same code path on tiny shapes on any machine
    out = subprocess.run([sys.executable, "bench/gpu.py", "--device=cpu", "--tiny", "--steps=1",
                          "--models=124M,darija_base"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = [line.split("|") for line in out.stdout.splitlines() if line.startswith(("| 124M", "| darija_base"))]
    assert len(rows) == 2 and all(float(row[4].replace(",", "")) > 0 for row in rows)
