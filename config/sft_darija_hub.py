# Instruction tuning of the GPU base (config/darija_base.py) on the largest open Darija instruction
# set and the project's own sample; step 3 of runs/darija_gpu.sh. Talk to the result:
#   python chat.py --ckpt out/darija_base_sft
# Data and licences:
# - MBZUAI-Paris/Darija-SFT-Mixture (the Atlas-Chat models were tuned on it): ~458k conversations in
#   two parquet files (~445 MB), columns dataset, id, messages ([{content, role}, ...]), direction,
#   metadata. ODC-BY as a whole, but its parts keep their own licences and some are non-commercial
#   (DODa-10k: CC BY-NC 4.0): a research artifact, as its card says. No account needed.
# - data/sample/sft/ (conversations, parallel pairs): written for this project, MIT like the code.
# A conversation whose first exchange does not fit the base's context (max_tokens) counts as a bad
# row and is skipped: the share the mixture has is not yet measured (the build prints it), so the
# mixture may hold up to 25% of them.
init_from = "out/darija_base"
out_dir = "out/darija_base_sft"
sft_dataset = "darija_base_hub"     # eval.py: --sft_dataset=darija_base_hub
sources = [dict(hub="MBZUAI-Paris/Darija-SFT-Mixture", split="train", kind="conversations", messages="messages",
                max_bad_fraction=0.25),
           dict(path="data/sample/sft/conversations.jsonl", kind="conversations"),
           dict(path="data/sample/sft/pairs.jsonl", kind="pairs", latin="darija", arabic="darija_ar", english="eng")]
max_tokens = 1024                   # darija_base's context
val_fraction = 0.01                 # ~4.6k held-out conversations
# training: a 98M model, 16 x 1024 tokens per step (one GPU); about 9k steps make an epoch of the
# mixture (~140M tokens at ~300 per conversation, not yet measured); the early stop ends it sooner
batch_size = 16
learning_rate = 1e-4
min_lr = 1e-5
warmup_iters = 200
max_iters = 9000
eval_interval = 500
eval_iters = 40
patience = 4
metric_items = 200
