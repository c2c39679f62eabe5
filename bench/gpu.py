"""
bench/gpu.py: the GPU figures in one short run, set up the way pretrain.py trains on CUDA (its dtype,
model.training_precision's: bf16 from compute capability 8.0, fp16 + GradScaler below; TF32,
torch.compile, fused AdamW) with attention held to one kernel: flash (memory-efficient below 8.0,
where PyTorch's flash kernel does not run), so that a set-up it cannot run fails instead of
silently falling back to a slower one:

    python bench/gpu.py                  # on a CUDA machine: expected ~5 minutes, mostly compiling
    python bench/gpu.py --models=124M --batch_size=32 --device=cuda:1
    python bench/gpu.py --device=cpu --tiny --steps=2    # this script's smoke test, on any machine

The smoke test runs the very code a GPU runs (the kernel choice too: PyTorch has a flash kernel
for the CPU); --dtype=float16 takes it through the GradScaler of T4s and V100s.

1. 124M: GPT-2 small's size (12 x 768, 12 heads, context 1,024, vocab 50,304, tied): the size at
   which MFU is usually compared (nanoGPT's reference run).
2. darija_small and darija_base: the shapes of config/darija_small.py and config/darija_base.py
   (read from the files), at their own micro-batch size and at 8x it for darija_small, which is
   too small to fill a GPU at 16 x 256.

Each model: compiled afresh (torch._dynamo.reset), a few untimed steps (compilation), then `--steps`
timed steps of forward + backward + AdamW on random tokens. Prints tokens/s, MFU (model.py's
estimate_mfu over the card's peak, model.py's PEAK_FLOPS; blank on an unknown card) and peak
memory, with the card's name.
"""
import argparse
import ast
import os
import sys
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from model import GPT, GPTConfig, estimate_mfu, peak_flops, training_precision  # noqa: E402

SHAPE_KEYS = ("vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "n_embd", "mlp")


def declared_settings(script):
    """A stage script's settings as it declares them: its statements before the configure() call."""
    path = os.path.join(ROOT, script)
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    body = []
    for statement in tree.body:
        if any(isinstance(node, ast.Call) and getattr(node.func, "id", None) == "configure"
               for node in ast.walk(statement)):
            break
        body.append(statement)
    scope = {"__file__": path}
    exec(compile(ast.Module(body, type_ignores=[]), path, "exec"), scope)
    return scope


def from_config(name):
    """The model shape and micro-batch size of a run: prepare.py's and pretrain.py's defaults, then
    what its config file changes (config files hold only what differs)."""
    scope = {**declared_settings("prepare.py"), **declared_settings("pretrain.py")}
    with open(os.path.join(ROOT, "config", f"{name}.py"), encoding="utf-8") as f:
        exec(f.read(), scope)
    return {k: scope[k] for k in SHAPE_KEYS}, scope["batch_size"]


def jobs(args):
    """(label, model shape, batch size) for each row asked for."""
    gpt2 = dict(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_kv_head=12, n_embd=768, mlp="relu2")
    for name in args.models.split(","):
        if name == "124M":
            rows = [("124M (GPT-2 small's size)", gpt2, args.batch_size or 16)]
        elif name == "darija_small":
            shape, batch = from_config(name)
            rows = [("darija_small", shape, batch), ("darija_small, 8x the batch", shape, 8 * batch)]
        elif name == "darija_base":
            shape, batch = from_config(name)
            rows = [("darija_base", shape, args.batch_size or batch)]
        else:
            sys.exit(f"unknown model {name!r}: choose among 124M, darija_small, darija_base")
        for label, shape, batch in rows:
            if args.tiny:  # the smoke test: same code path, shapes a CPU runs in seconds
                shape = dict(shape, n_layer=2, n_embd=64, n_head=2, n_kv_head=2, block_size=64, vocab_size=512)
                batch = 2
            yield label, shape, batch


def attention_backend(device):
    """The one attention kernel the steps may use: flash, or memory-efficient on GPUs below compute
    capability 8.0 (T4, V100), which PyTorch's flash kernel does not run on."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 0):
        return SDPBackend.EFFICIENT_ATTENTION
    return SDPBackend.FLASH_ATTENTION


def training_step(model, optimizer, precision, backend, x):
    """One step of forward + backward + AdamW on the rows x, in precision = (dtype, autocast, GradScaler)."""
    _, autocast, scaler = precision
    with autocast, sdpa_kernel(backend):  # sdpa_kernel(...) is good for one `with` only: a new one each step
        _, loss = model(x[:, :-1], x[:, 1:])
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def measure(shape, batch, args):
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch._dynamo.reset()  # compile afresh: no graphs made dynamic by the shapes before, nor their memory
    torch.manual_seed(0)
    model = GPT(GPTConfig(**shape)).to(device)
    optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), device.type)
    step_model = torch.compile(model) if args.compile else model
    precision, backend = training_precision(device, args.dtype), attention_backend(device)
    x = torch.randint(0, shape["vocab_size"], (batch, shape["block_size"] + 1), device=device)

    def sync():
        if cuda:
            torch.cuda.synchronize(device)  # this device, not the current one (cuda:0)

    for _ in range(3):  # compilation and allocator warm-up, not timed
        training_step(step_model, optimizer, precision, backend, x)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        training_step(step_model, optimizer, precision, backend, x)
    sync()
    tokens_per_sec = args.steps * batch * shape["block_size"] / (time.perf_counter() - t0)
    peak = peak_flops(device)
    mfu = f"{100 * estimate_mfu(model, tokens_per_sec, peak):.1f}%" if peak else ""
    memory = f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if cuda else ""
    return model.num_params(), tokens_per_sec, mfu, memory


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                   help="auto: pretrain.py's choice (bf16 from compute capability 8.0, fp16 below; CPU: float32)")
    p.add_argument("--models", default="124M,darija_small,darija_base")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch_size", type=int, default=0, help="micro-batch for 124M and darija_base (0: 16 / the config's)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile (default: on for CUDA)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes: a smoke test of this script")
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device here: this benchmark is for a GPU (try --device=cpu --tiny for a smoke test)")
    args.compile = args.device.startswith("cuda") if args.compile is None else args.compile
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        card = torch.cuda.get_device_name(args.device)
    else:
        card = f"CPU, {torch.get_num_threads()} threads"
    device = torch.device(args.device)
    print(f"{card}, torch {torch.__version__}, {training_precision(device, args.dtype)[0]}, attention "
          f"{attention_backend(device).name}, compile {args.compile}, {args.steps} timed steps")
    print("| model | params | batch x context | tokens/s | MFU | peak memory |\n|---|---|---|---|---|---|")
    for label, shape, batch in jobs(args):
        params, tokens_per_sec, mfu, memory = measure(shape, batch, args)
        print(f"| {label} | {params / 1e6:.1f}M | {batch} x {shape['block_size']} | {tokens_per_sec:,.0f} | "
              f"{mfu} | {memory} |", flush=True)
