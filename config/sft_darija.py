# Instruction tuning for Darija: sft.py's defaults are this run (a full fine-tune of out/darija_small,
# made by `python pretrain.py config/darija_small.py`, on the project's own sample of conversations and
# parallel pairs); the dataset gets a name lora.py can find. Talk to the result:
#   python chat.py --ckpt out/darija_sft
# For a useful assistant, add real material to `sources` (README "Instruction tuning"), e.g. the
# first rows of the largest open Darija instruction set (licences: config/sft_darija_hub.py):
#   dict(hub="MBZUAI-Paris/Darija-SFT-Mixture", kind="conversations", max_rows=20_000, max_bad_fraction=0.25),
sft_dataset = "darija"          # data/sft/darija/ (lora.py reads the same)
