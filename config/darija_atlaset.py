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
# pretrain.py's defaults are darija_small's model (4 x 256, ReLU², context 256) and optimiser; only
# the run length differs. On a GPU raise max_iters and batch_size: Atlaset holds far more text than
# this run reads.
max_iters = 700
eval_iters = 10
