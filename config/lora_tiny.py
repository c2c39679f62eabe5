# A LoRA smoke run in a few minutes on a CPU, from the tiny base and the project's sample SFT data:
#   python pretrain.py config/darija_tiny.py && python lora.py config/lora_tiny.py
init_from = "out/darija_tiny"
out_dir = "out/darija_tiny_lora"
sft_dataset = "darija_tiny"               # its own name: a dataset is tied to its tokenizer
sft_config = ""                           # sft.py's defaults: data/sample/sft/
compare_to = ""

rank = 4
alpha = 8.0
batch_size = 8
max_iters = 200
eval_interval = 50
eval_iters = 10
metric_items = 20
max_new_tokens = 32
