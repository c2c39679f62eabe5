# The main job (python pretrain.py config/darija_small.py): prepare.py's and pretrain.py's defaults are
# this run (Moroccan Arabic Wikipedia, a BPE of 8,192, a 5.2M-parameter model: 4 layers x 256, ReLU²,
# context 256); only its length differs. About 15 minutes on a quiet 2-core CPU (~3.5k tokens/s,
# 2.9M training tokens); a minute or two on a GPU, where compile and bf16 switch on by themselves.
# Offline, prepare.py says so and trains on the sample corpus in data/sample/pretrain instead.
max_iters = 700
eval_iters = 10
eval_interval = 50  # offline, the early stop (pretrain.py's patience) then ends the run soon after its best val
