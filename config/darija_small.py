# --- data (prepare.py) ---
dataset = "darija_small"

# --- model and training (pretrain.py) ---
