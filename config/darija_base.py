# --- data (prepare.py) ---
# Wikipedia (CC BY-SA / GFDL) + Darija stories (CC BY-NC 4.0: non-commercial use only; a 242 MB
# parquet, about 477 MB of text). No account needed.
dataset = "darija_base"
sources = [dict(hub="wikimedia/wikipedia", config="20231101.ary", split="train", text_field="text"),
           dict(hub="alielfilali01/Darija-Stories-Dataset", split="train", text_field="Text")]
vocab_size = 16384
val_fraction = 0.01
tokenizer_train_bytes = 50_000_000

# --- model and training (pretrain.py) ---
# About 98M parameters (12 layers x 768, 12 heads, ReLU² MLP, context 1024, vocab 16,384 tied): a real
# GPU run. 524k tokens per step (16 x 1024 x 32 accumulation steps, split across the GPUs: keep
# grad_accum_steps a multiple of their number), 3,000 steps = 1.6B tokens. Expected time, from FLOPs
# (0.70 GFLOP per training token, nanoGPT's count) at 40% MFU, not yet measured: ~46 min on one
# H100, ~2.4 h on one A100; divide by the number of GPUs. `python bench/gpu.py` measures the real rate.
#   torchrun --standalone --nproc_per_node=8 pretrain.py config/darija_base.py
n_layer = 12
n_head = 12
n_kv_head = 12
n_embd = 768
block_size = 1024
grad_accum_steps = 32
max_iters = 3000
learning_rate = 6e-4
min_lr = 6e-5
warmup_iters = 200
lr_schedule = "wsd"
eval_interval = 250
eval_iters = 50
