# --- data (prepare.py) ---
# The sample corpus shipped with the project: always offline, ready in seconds (smoke tests).
dataset = "darija_tiny"
sources = [dict(path="data/sample/pretrain", txt_docs="block")]
vocab_size = 1024
val_fraction = 0.05

# --- model and training (pretrain.py) ---
