# --- data (prepare.py) ---
dataset = "darija_tiny"

# --- model and training (pretrain.py) ---
