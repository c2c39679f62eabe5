# A LoRA smoke run in a few minutes on a CPU: the tiny base, the project's sample SFT data and the
# settings of config/sft_tiny.py, so the two runs compare (python bench/lora.py does it at scale).
#   python pretrain.py config/darija_tiny.py && python sft.py config/sft_tiny.py   # the full fine-tune
#   python lora.py config/lora_tiny.py
init_from = "out/darija_tiny"
out_dir = "out/darija_tiny_lora"
sft_dataset = "darija_tiny"               # the dataset sft_tiny builds (a dataset is tied to its tokenizer)
sft_config = "config/sft_tiny.py"         # builds it when missing

rank = 4
alpha = 8.0
task_token_rows = 16                      # lora.py's 195 is sized for darija_small (2% of it)
batch_size = 8
learning_rate = 3e-3
warmup_iters = 10
max_iters = 200
eval_interval = 25
eval_iters = 8
patience = 3
metric_items = 20
max_new_tokens = 32
