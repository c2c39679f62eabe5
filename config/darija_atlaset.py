# The course's corpus: atlasia/Atlaset on the Hugging Face hub (about 900M characters). It is gated:
# open https://huggingface.co/datasets/atlasia/Atlaset , log in, accept its terms, create a read
# token (https://huggingface.co/settings/tokens), then `export HF_TOKEN=hf_...` and run
#   python pretrain.py config/darija_atlaset.py
# Without access, prepare.py stops and says which of these steps is missing.

# --- data (prepare.py) ---
dataset = "darija_atlaset"
sources = [dict(hub="atlasia/Atlaset", split="train", text_field="text", max_chars=200_000_000)]
fallback = ""                   # no silent swap to the sample corpus: this config is about Atlaset
vocab_size = 16384
val_fraction = 0.005
tokenizer_train_bytes = 20_000_000

# --- model and training (pretrain.py) ---
# The model settings of darija_small (a 2-core CPU budget); on a GPU raise max_iters and batch_size:
# Atlaset holds far more text than this run reads.
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
