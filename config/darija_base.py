# --- data (prepare.py) ---
dataset = "darija_base"

# --- model and training (pretrain.py) ---
