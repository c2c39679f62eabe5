"""
bench/sft.py: the instruction-tuning table. Fine-tunes a base model pre-trained on the shared Darija
corpus with sft.py on the shared SFT material, and prints, next to reference figures:
- the best val loss on assistant tokens and the step it was reached (early stopping) against the
  course's SFT (val 3.64 after 50 epochs on 257 pairs, train 0.006: over-fitted);
- chrF of greedy answers on held-out items of two tasks, Arabizi -> Arabic script and
  Darija -> English, for the base model (few-shot plain completion) and the SFT model.

It needs the base checkpoint (about 20 minutes of CPU on a quiet 2-core machine):
    python pretrain.py config/darija_small.py --dataset=darija_shared \\
        --sources="[{'path': '../shared/data/darija/pretrain', 'text_field': 'text'}]"
then:
    python bench/sft.py                      # ~15-25 min on 2 cores (sft.py with the settings below)
    python bench/sft.py --max_iters=100 --metric_items=30   # a quicker look
Extra --key=value arguments go to sft.py as they are.
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SFT = os.path.join(os.path.dirname(ROOT), "shared", "data", "darija", "sft")
SOURCES = [{"path": f"{SFT}/bodmagh_conversations.jsonl", "kind": "conversations"},
           {"path": f"{SFT}/doda_pairs.jsonl", "kind": "pairs", "latin": "darija", "arabic": "darija_ar", "english": "eng"},
           {"path": f"{SFT}/transliteration_pairs.jsonl", "kind": "pairs", "latin": "arabizi", "arabic": "arabic"}]
SETTINGS = ["--init_from=out/darija_shared", "--out_dir=out/bench_sft", "--sft_dataset=darija_shared",
            f"--sources={SOURCES!r}", "--max_bad_fraction=0.02",  # 3 of the 201 shared chats are malformed
            "--block_size=128", "--batch_size=16", "--max_iters=1000", "--eval_interval=100", "--eval_iters=8",
            "--patience=3", "--learning_rate=5e-4", "--min_lr=5e-5", "--warmup_iters=20",
            "--metric_items=100", "--max_new_tokens=48", "--force"]

if not os.path.isdir(SFT):
    sys.exit(f"bench/sft.py: {SFT} is missing (the shared Darija data); nothing to measure")
cmd = [sys.executable, "sft.py", "config/sft_darija.py", *SETTINGS, *sys.argv[1:]]
print("running:", " ".join(cmd), flush=True)
if subprocess.run(cmd, cwd=ROOT).returncode:
    sys.exit("bench/sft.py: sft.py failed (see above)")

out_dir = next(a.split("=", 1)[1] for a in reversed(cmd) if a.startswith("--out_dir="))
with open(os.path.join(ROOT, out_dir, "metrics.json"), encoding="utf-8") as f:
    m = json.load(f)
with open(os.path.join(ROOT, "data", "sft", m["sft_dataset"], "stats.json"), encoding="utf-8") as f:
    stats = json.load(f)
print(f"\ndata: {stats['train']['examples']:,} train / {stats['val']['examples']:,} val examples "
      f"({stats['train']['tokens']:,} train tokens); base {m['init_from']}; seed {m['seed']}")
print(f"| figure | ours | reference |\n|---|---|---|\n"
      f"| best val loss, assistant tokens | {m['best_val_loss']:.3f} (step {m['best_step']} of {m['steps']}) "
      f"| course: 3.64 after 50 epochs (train 0.006) |")
for task, name in (("lat2ar", "Arabizi -> Arabic script"), ("dar2en", "Darija -> English")):
    if task in m["sft"]:
        print(f"| chrF {name}, {m['sft'][task]['items']} held-out items | SFT {m['sft'][task]['chrf']:.1f} "
              f"| base model, {m['few_shot']}-shot: {m['base'][task]['chrf']:.1f} |")
