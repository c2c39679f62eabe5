# --- data (prepare.py) ---
# Moroccan Arabic Wikipedia (CC BY-SA / GFDL, no account, one 4.7 MB parquet). Offline, prepare.py
# says so and uses the sample corpus in data/sample/pretrain instead.
dataset = "darija_small"
sources = [dict(hub="wikimedia/wikipedia", config="20231101.ary", split="train", text_field="text")]
vocab_size = 8192
val_fraction = 0.02

# --- model and training (pretrain.py) ---
