# --- data (prepare.py) ---
# The sample corpus shipped with the project: always offline, ready in seconds (smoke tests).
dataset = "darija_tiny"
sources = [dict(path="data/sample/pretrain", txt_docs="block")]
vocab_size = 1024
val_fraction = 0.05

# --- model and training (pretrain.py) ---
# Seconds, for tests and smoke runs: a 0.2M-parameter model, 40 steps.
n_layer = 2
n_head = 2
n_kv_head = 2
n_embd = 64
block_size = 64
batch_size = 8
max_iters = 40
warmup_iters = 5
learning_rate = 3e-3
min_lr = 3e-4
eval_interval = 20
eval_iters = 2
sample_tokens = 16
