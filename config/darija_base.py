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
