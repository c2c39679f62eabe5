# Instruction tuning for Darija: sft.py's defaults are this run (a full fine-tune of out/darija_small,
# made by `python pretrain.py config/darija_small.py`, on the project's own sample of conversations and
# parallel pairs); the dataset gets a name lora.py can find. Talk to the result:
#   python chat.py --ckpt out/darija_sft
# For a useful assistant, add real material to `sources` (README "Instruction tuning"), e.g.
#   dict(path="data/downloads/atlasia_doda.csv", kind="pairs", latin="...", english="..."),
# naming the CSV's columns (see its first line).
sft_dataset = "darija"          # data/sft/darija/ (lora.py reads the same)
