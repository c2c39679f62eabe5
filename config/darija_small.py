# --- data (prepare.py) ---
# Moroccan Arabic Wikipedia (CC BY-SA / GFDL, no account, one 4.7 MB parquet). Offline, prepare.py
# says so and uses the sample corpus in data/sample/pretrain instead.
dataset = "darija_small"
sources = [dict(hub="wikimedia/wikipedia", config="20231101.ary", split="train", text_field="text")]
vocab_size = 8192
val_fraction = 0.02

# --- model and training (pretrain.py) ---
# The README's main job: about 15 minutes on a quiet 2-core CPU (~3.5k tokens/s), 2.9M training tokens.
# 5.2M parameters (4 layers x 256, ReLU² MLP, context 256; vocab from the data section).
# On a GPU (compile and bf16 on by default) the same run takes a minute or two; for the same tokens
# in fewer, bigger steps use e.g. --batch_size=64 --max_iters=175, or give it a bigger corpus.
n_layer = 4
n_head = 4
n_kv_head = 4
n_embd = 256
block_size = 256
mlp = "relu2"
dropout = 0.0
batch_size = 16
grad_accum_steps = 1
max_iters = 700
learning_rate = 2e-3
min_lr = 2e-4
warmup_iters = 50
eval_interval = 100
eval_iters = 10
log_interval = 10
