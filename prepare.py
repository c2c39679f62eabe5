"""
prepare.py: raw Darija text -> data/NAME/{train,val}.bin, meta.json, tokenizer.json.

(First version: the settings block is final in shape; the pipeline lands next.)
"""
import os
import sys

# --- settings (override with a config file and --key=value) ---
dataset = "darija_small"        # output folder: data/NAME/
sources = [dict(hub="wikimedia/wikipedia", config="20231101.ary", split="train",
                text_field="text", max_chars=20_000_000)]
fallback = "data/sample/pretrain"  # used, loudly, when a hub/URL source cannot be reached
seed = 1337
# cleaning: every step can be switched off, every step is counted in meta.json's report
nfkc = True                     # folds Arabic presentation forms (U+FB50-FDFF, U+FE70-FEFF)
strip_tatweel = True            # U+0640, a purely visual stretch
strip_invisible = True          # zero-width and bidi controls
strip_diacritics = False        # harakat are rare in Darija; keep by default
drop_urls = True                # URLs, e-mails, @mentions
min_doc_chars = 20
max_doc_chars = 200_000
dedup = True                    # exact, across all sources, on a normalised hash
near_dedup = False
bad_bytes = "error"             # undecodable UTF-8: "error", "replace" or "skip" (the line/document)
max_bad_fraction = 0.01         # malformed JSON lines tolerated before failing
# split and tokenizer
val_fraction = 0.02
vocab_size = 16384
tokenizer = ""                  # path of an existing tokenizer.json to reuse; "" trains one
tokenizer_train_chars = 10_000_000  # random sample of training documents to train the tokenizer on
pattern = "darija"
num_threads = 0                 # 0: all cores
force = False                   # allow overwriting data/NAME/ built with a different config

from configurator import configure  # noqa: E402
configure(globals(), also_from=("pretrain.py",))
