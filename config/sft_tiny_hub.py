# The hub SFT step of runs/darija_gpu.sh, in tiny: the tiny base (config/darija_tiny.py), the first
# 2,000 rows of MBZUAI-Paris/Darija-SFT-Mixture (see config/sft_darija_hub.py for its licences; this
# downloads its first parquet file, ~222 MB, once) and the project's sample. Minutes on a CPU:
#   runs/darija_gpu.sh --tiny
# Most of the mixture's conversations are longer than the tiny model's 64-token context: training
# keeps those whose first exchange fits.
init_from = "out/darija_tiny"
out_dir = "out/darija_tiny_hub_sft"
sft_dataset = "darija_tiny_hub"     # eval.py: --sft_dataset=darija_tiny_hub
sources = [dict(hub="MBZUAI-Paris/Darija-SFT-Mixture", split="train", kind="conversations", max_rows=2000),
           dict(path="data/sample/sft/conversations.jsonl", kind="conversations"),
           dict(path="data/sample/sft/pairs.jsonl", kind="pairs", latin="darija", arabic="darija_ar", english="eng")]
batch_size = 8
learning_rate = 3e-4
warmup_iters = 10
max_iters = 100
eval_interval = 25
eval_iters = 8
patience = 3
metric_items = 10
max_new_tokens = 32
