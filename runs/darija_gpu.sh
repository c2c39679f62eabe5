#!/usr/bin/env bash
# From nothing to a Darija assistant and its report card, on one machine with NVIDIA GPUs:
#   runs/darija_gpu.sh           # data -> pretrain (all local GPUs) -> SFT from the hub -> eval -> export -> chat
#   runs/darija_gpu.sh --tiny    # the same steps with the tiny configs, on a CPU, in minutes (a smoke run)
# Each step prints to the screen and to logs/NAME/STEP.log, and leaves logs/NAME/STEP.done when it
# succeeds. Run the script again after a failure or a kill: finished steps are skipped, and an
# interrupted pretrain (or SFT) continues from its last.pt. Delete a .done file to run that step again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--tiny" ]; then
  base=darija_tiny sft_config=config/sft_tiny_hub.py sft=darija_tiny_hub_sft sft_data=darija_tiny_hub items=20
  pretrain=(python pretrain.py)
else
  gpus=$(nvidia-smi --list-gpus 2>/dev/null | wc -l || true)
  if [ "$gpus" -eq 0 ]; then
    echo "runs/darija_gpu.sh: no NVIDIA GPU here (nvidia-smi lists none); on a CPU, run runs/darija_gpu.sh --tiny" >&2
    exit 1
  fi
  base=darija_base sft_config=config/sft_darija_hub.py sft=darija_base_sft sft_data=darija_base_hub items=200
  pretrain=(torchrun --standalone --nproc_per_node="$gpus" pretrain.py)
fi
logs=logs/$base
mkdir -p "$logs"

step() {  # step NAME COMMAND...: run COMMAND unless NAME is done; its output also goes to logs/.../NAME.log
  local name=$1
  shift
  if [ -e "$logs/$name.done" ]; then
    echo "== $name: done already ($logs/$name.done)"
    return
  fi
  echo "== $name: $*"
  "$@" 2>&1 | tee "$logs/$name.log"
  touch "$logs/$name.done"
}

# an interrupted run continues from its last.pt
continue_pretrain=$([ -e "out/$base/last.pt" ] && echo --init_from=resume || true)
continue_sft=$([ -e "out/$sft/last.pt" ] && echo --resume || true)

step 1_prepare  python prepare.py "config/$base.py"
step 2_pretrain "${pretrain[@]}" "config/$base.py" $continue_pretrain
step 3_sft      python sft.py "$sft_config" $continue_sft
step 4_eval     python eval.py "out/$base" "out/$sft" --sft_dataset="$sft_data" --metric_items="$items" --out="reports/$sft" --force
step 5_export   python export.py "out/$sft" --out_dir="export/$sft" --force
step 6_chat     python chat.py --ckpt "out/$sft" --prompt "salam, kidayr? chno smitek?" --temperature=0 --max_new_tokens=64

echo "done: the report card is reports/$sft/report.md, the exported model export/$sft/, the logs $logs/"
echo "talk to it: python chat.py --ckpt out/$sft"
