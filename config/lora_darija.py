# LoRA instruction tuning of the pre-trained darija_small model, on the same dataset as
# config/sft_darija.py, so its scores compare with the full fine-tune (out/darija_sft).
#   python pretrain.py config/darija_small.py && python lora.py config/lora_darija.py
init_from = "out/darija_small"
out_dir = "out/darija_lora"
sft_dataset = "darija"
sft_config = "config/sft_darija.py"
compare_to = "out/darija_sft"

rank = 2                                  # with the rows and embedding_rank below: 2.0% of darija_small's parameters
alpha = 10.0                              # updates scaled by alpha / rank
targets = ["c_q", "c_k", "c_v", "c_proj", "c_fc"]  # every linear layer in the blocks (c_proj: attn and mlp)
chat_token_rows = True                    # the chat tokens' embedding rows (new to the base),
task_token_rows = 195                     # the rows of the 195 tokens the SFT loss pulls hardest on,
embedding_rank = 2                        # and a rank-2 update of the whole embedding (README "LoRA")

learning_rate = 1e-3                      # 10x full SFT's: only the low-rank directions move
max_iters = 2000                          # an upper bound: early stopping ends most runs sooner
eval_interval = 100
patience = 4
