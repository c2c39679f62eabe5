# A fast end-to-end check of sft.py on the tiny base model (a few minutes on a laptop CPU):
#   python pretrain.py config/darija_tiny.py && python sft.py config/sft_tiny.py
init_from = "out/darija_tiny"
out_dir = "out/darija_tiny_sft"
sft_dataset = "darija_tiny"
batch_size = 8
learning_rate = 3e-4
warmup_iters = 10
max_iters = 200
eval_interval = 25
eval_iters = 8
patience = 3
metric_items = 20
max_new_tokens = 32
