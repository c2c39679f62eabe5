# LoRA instruction tuning of the pre-trained darija_small model, on the dataset of config/sft_darija.py,
# so its scores compare with the full fine-tune (out/darija_sft): lora.py's defaults are this run (rank 2
# on every block linear, the rows of the chat tokens and of 195 task tokens, a rank-2 embedding update,
# learning rate 6e-3: 2.0% of darija_small's parameters; bench/README.md has the sweep behind them).
#   python pretrain.py config/darija_small.py && python lora.py config/lora_darija.py
