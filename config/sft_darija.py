# Instruction tuning for Darija: full fine-tune of the model made by
#   python pretrain.py config/darija_small.py
# then talk to it with: python chat.py --ckpt out/darija_sft
init_from = "out/darija_small"
out_dir = "out/darija_sft"
sft_dataset = "darija"          # data/sft/darija/ (lora.py reads the same)

# The project's own small sample, so the stage runs offline. For a useful assistant, add real
# material (README "Instruction tuning"): e.g. atlasia/darija_english's atlasia_doda.csv
#   dict(path="data/downloads/atlasia_doda.csv", kind="pairs", latin="...", english="..."),
# naming the CSV's columns (see its first line).
sources = [dict(path="data/sample/sft/conversations.jsonl", kind="conversations"),
           dict(path="data/sample/sft/pairs.jsonl", kind="pairs",
                latin="darija", arabic="darija_ar", english="eng")]

batch_size = 16
learning_rate = 1e-4
warmup_iters = 50
max_iters = 2000        # an upper bound: early stopping ends the run when val stops improving
eval_interval = 100
patience = 4
