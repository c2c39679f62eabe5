"""What a GPU run goes through, checked on the CPU: the training dtype for each compute capability,
the peak FLOPs of each card's name, MFU per GPU, ReLU^2 under float16, and bench/gpu.py's training step
with its real attention-kernel choice, taken twice."""
import importlib.util
import math

import pytest
import torch
from torch.nn.attention import SDPBackend

from conftest import ROOT
from model import GPT, GPTConfig, estimate_mfu, peak_flops, training_precision


def load_bench_gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.filterwarnings("ignore:CUDA is not available", "ignore:torch.cuda.amp.GradScaler is enabled")
@pytest.mark.parametrize("capability, dtype", [((7, 0), "float16"), ((7, 5), "float16"), ((8, 0), "bfloat16"),
                                               ((8, 6), "bfloat16"), ((9, 0), "bfloat16")])
def test_auto_dtype_follows_the_compute_capability(monkeypatch, capability, dtype):
    # bf16 only where it has tensor cores (8.0: A100 on); a T4 (7.5) or V100 (7.0) trains in fp16 + GradScaler
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert training_precision("cuda")[0] == dtype
    assert training_precision("cuda", "float32")[0] == "float32"  # a dtype asked for is kept


def test_cpu_trains_in_float32_and_fp16_scales_its_loss():
    dtype, autocast, scaler = training_precision("cpu")
    assert (dtype, autocast.fast_dtype, scaler.is_enabled()) == ("float32", torch.float32, False)
    with autocast:
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    dtype, autocast, scaler = training_precision("cpu", "float16")
    assert dtype == "float16" and scaler.is_enabled() and scaler.get_scale() > 1
    with autocast:
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float16


@pytest.mark.parametrize("name, flops", [
    ("NVIDIA L40", 181e12), ("NVIDIA L40S", 362e12), ("NVIDIA L4", 121e12), ("NVIDIA A10G", 70e12),
    ("NVIDIA A10", 125e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A100-PCIE-40GB", 312e12),
    ("Tesla T4", 65e12), ("Tesla V100-SXM2-16GB", 125e12), ("NVIDIA GeForce RTX 4090", 165e12),
    ("NVIDIA GeForce GTX 1080", 0)])
def test_peak_flops_match_whole_words_of_the_card_name(monkeypatch, name, flops):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert peak_flops("cuda") == flops and peak_flops("cpu") == 0


def test_mfu_is_each_gpus_with_nanogpts_flops_per_token():
    model = GPT(GPTConfig(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32))
    assert model.flops_per_token() == 6 * model.num_params() + 12 * 2 * 32 * 32  # 6N + 12·L·C·T (nanoGPT)
    one_gpu = 0.4 * 312e12 / model.flops_per_token()  # tokens/s of one A100 at 40% MFU
    assert estimate_mfu(model, one_gpu, 312e12) == pytest.approx(0.4)
    assert estimate_mfu(model, 8 * one_gpu, 312e12, world=8) == pytest.approx(0.4)  # not 320%


def test_relu2_stays_finite_under_float16():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=97, block_size=16, n_layer=1, n_head=2, n_kv_head=2, n_embd=32, mlp="relu2"))
    with torch.no_grad():
        model.blocks[0].mlp.c_fc.weight.mul_(2000)  # activations past 256: their square is past fp16's 65504
    x = torch.randint(0, 97, (2, 16))
    with torch.autocast("cpu", dtype=torch.float16):
        _, loss = model(x, x)
    assert math.isfinite(loss.item())
    mlp, x = model.blocks[0].mlp, torch.randn(4, 32)
    h = torch.relu(mlp.c_fc(x))
    assert h.max() > 256 and torch.equal(mlp(x), mlp.c_proj(h * h))  # float32: nothing clamped


def test_gpu_benchmark_step_runs_twice_with_its_kernel_choice(monkeypatch):
    # sdpa_kernel(...) works for one `with` only: bench/gpu.py once crashed at its second step on every GPU.
    # Its step is taken here twice on the CPU with the real kernel choice (flash) and the fp16 GradScaler.
    gpu = load_bench_gpu()
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=97, block_size=16, n_layer=1, n_head=2, n_kv_head=2, n_embd=32))
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    precision, backend = training_precision("cpu", "float16"), gpu.attention_backend(torch.device("cpu"))
    assert backend == SDPBackend.FLASH_ATTENTION
    before = model.lm_head.weight.detach().clone()
    x = torch.randint(0, 97, (2, 17))
    gpu.training_step(model, optimizer, precision, backend, x)
    gpu.training_step(model, optimizer, precision, backend, x)
    assert precision[2].state_dict()["_growth_tracker"] == 2 and not torch.equal(before, model.lm_head.weight)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))  # a T4: no flash there
    assert gpu.attention_backend(torch.device("cuda")) == SDPBackend.EFFICIENT_ATTENTION
