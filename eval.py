"""
eval.py: evaluation. Scores checkpoints on the same held-out tasks and writes one report that sets
them side by side, so a base, its SFT model and a LoRA model compare on the very same items.

    python eval.py out/darija_small out/darija_sft --sft_dataset=darija   # -> reports/darija_sft/
    python eval.py out/darija_lora/best.pt --metric_items=400 --out=reports/lora400 --force

Checkpoints are positional arguments (a folder means its best.pt), before or after config files and
--key=value settings. sft.py and lora.py run this script to score what they trained.

What happens, in order (and why):
1. The settings and the checkpoints are read, and the report folder (`out`) is checked before any
   work: a report is replaced only with --force, and a folder holding anything else is refused.
2. Each checkpoint is loaded with its tokenizer (checked by sha256 to be the file it was trained with).
3. The held-out data: data/sft/NAME/ as sft.py builds it. Its val split holds the items scored, its
   train split the few-shot examples; it must have been built with each checkpoint's tokenizer.
4. Each checkpoint is scored on each task. translation: chrF (Popovic 2015, as sacrebleu's default)
   of greedy answers on held-out Arabizi -> Arabic script (lat2ar) and Darija -> English (dar2en)
   items. A chat checkpoint (kind sft or lora_merged) answers each request as phrased in the data; a
   base checkpoint has never seen the chat format, so it continues a few-shot plain-text prompt
   ("Arabizi: ...\\nArabic: ...") up to the newline.
5. The report: report.json (every score, an example answer, the command) and report.md (a table
   per task, one column per checkpoint), each through a temporary file renamed; the tables are printed.
"""
import json
import os
import shlex
import sys
from collections import Counter
from pathlib import Path

import torch

from configurator import claim, configure, plain_name
from model import load_with_tokenizer, model_from_checkpoint, sha256_of

# --- settings (override with a config file and --key=value) ---
tasks = "translation"               # comma-separated; translation is the only task so far
sft_dataset = ""                    # data/sft/NAME/ ("": the first checkpoint's, named as sft.py names it)
metric_items = 100                  # held-out items per task
metric_skip = 0                     # held-out items passed over first (scores items a choice was not made on)
few_shot = 3                        # solved examples shown to a base model
max_new_tokens = 64
out = ""                            # the report folder ("": reports/<the last checkpoint's folder name>)
device = "auto"                     # "auto": cuda when available, else cpu
force = False                       # replace an existing report (never other files)

if __name__ == "__main__":  # imported (tests), eval.py only lends its metric
    CHECKPOINTS = [arg for arg in sys.argv[1:] if not arg.startswith("--") and not arg.endswith(".py")]
    configure(globals(), argv=[arg for arg in sys.argv[1:] if arg not in CHECKPOINTS])
REPORT_FILES = ("report.json", "report.md")
TASK_NAMES = {"lat2ar": "Arabizi -> Arabic script", "dar2en": "Darija -> English"}
FEW_SHOT = {"lat2ar": ("Arabizi", "Arabic"), "dar2en": ("Darija", "English")}  # a base model's prompt labels


def fail(msg):
    raise SystemExit(f"eval.py: {msg}")


# --- 1. the report folder -------------------------------------------------------------------------
def folder_name(path):  # out/NAME and out/NAME/best.pt are both NAME (sft.py names datasets this way)
    return os.path.basename(os.path.normpath(path if os.path.isdir(path) else os.path.dirname(path)))


def claim_report(folder):
    """Lock the report folder (a second run names this one's process) and stop unless it is ours to write."""
    claim(folder)
    names = os.listdir(folder) if os.path.isdir(folder) else []
    for name in names:  # a killed run's temporary files (NAME.tmpPID): half-written, never read
        if ".tmp" in name:
            os.remove(os.path.join(folder, name))
    others = sorted(name for name in names if name not in REPORT_FILES and ".tmp" not in name)
    if others:  # --force or not: eval.py never deletes or mixes with files it did not write
        fail(f"{folder}/ holds files eval.py did not write: {', '.join(others)}; pick another --out")
    if set(names) & set(REPORT_FILES) and not force:
        fail(f"{folder}/ already holds a report: add --force to replace it (or pick another --out)")


# --- 2. the checkpoints ---------------------------------------------------------------------------
def load(path):
    """(checkpoint, tokenizer, tokenizer path), or one line saying what is wrong."""
    try:
        return load_with_tokenizer(path)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))


# --- 3. the held-out data -------------------------------------------------------------------------
def dataset_name(path, ckpt):
    """The dataset a checkpoint goes with: the one it was fine-tuned on (sft.py and lora.py record it),
    else the one sft.py builds for it as a base: named after its folder (for an SFT model, its base's)."""
    settings = ckpt.get("config") or {}
    if ckpt["kind"] != "base" and settings.get("sft_dataset"):
        return settings["sft_dataset"]
    return folder_name(settings["init_from"] if ckpt["kind"] == "sft" and settings.get("init_from") else path)


def read_dataset(data_dir, whose):
    """stats.json and the train and val examples of an SFT dataset that sft.py built."""
    try:
        stats = json.loads(Path(data_dir, "stats.json").read_text(encoding="utf-8"))
        examples = {}
        for split in ("train", "val"):
            with open(os.path.join(data_dir, f"{split}.jsonl"), encoding="utf-8") as f:
                examples[split] = [json.loads(line) for line in f]
    except OSError:
        fail(f"no SFT dataset at {data_dir}/ ({whose}): build it with `python sft.py CONFIG --build_only "
             f"--sft_dataset={os.path.basename(data_dir)}`, or name another with --sft_dataset")
    except ValueError as e:
        fail(f"{data_dir}/ is not an SFT dataset that sft.py built ({e}): rebuild it with sft.py --build_only --force")
    if not isinstance(stats, dict) or "tokenizer_sha256" not in stats:
        fail(f"{data_dir}/stats.json was not written by sft.py: rebuild the dataset with sft.py --build_only --force")
    return stats, examples


# --- 4. the tasks ---------------------------------------------------------------------------------
def generate_text(model, tok, ids, first_line=False):
    """Greedy continuation of `ids` up to a special token (<|end|>, or a derailment) or, if first_line, a newline."""
    out, room, stop = [], min(max_new_tokens, model.config.block_size - len(ids)), set(tok.special_tokens.values())
    for token in (model.generate(ids, room, temperature=0) if room > 0 else ()):
        if token in stop or (first_line and "\n" in tok.decode(out)):
            break
        out.append(token)
    text = tok.decode(out)
    return (text.split("\n")[0] if first_line else text).strip()


def chrf(hyps, refs, order=6, beta=2.0):
    """Corpus-level chrF (Popovic 2015), as sacrebleu's default: character 1..6-grams without whitespace, counts
    summed over the corpus, precision and recall averaged over the orders present, recall weighted beta times."""
    stats = [[0, 0, 0] for _ in range(order)]  # per order: hypothesis n-grams, reference n-grams, matches
    for hyp, ref in zip(hyps, refs):
        hyp, ref = "".join(hyp.split()), "".join(ref.split())
        for n in range(1, order + 1):
            hyp_ngrams = Counter(hyp[i:i + n] for i in range(len(hyp) - n + 1))
            ref_ngrams = Counter(ref[i:i + n] for i in range(len(ref) - n + 1))
            stats[n - 1][0] += sum(hyp_ngrams.values()) if ref_ngrams else 0
            stats[n - 1][1] += sum(ref_ngrams.values())
            stats[n - 1][2] += sum((hyp_ngrams & ref_ngrams).values())
    used = [(matches / n_hyp, matches / n_ref) for n_hyp, n_ref, matches in stats if n_hyp and n_ref]
    precision = sum(p for p, _ in used) / len(used) if used else 0.0
    recall = sum(r for _, r in used) / len(used) if used else 0.0
    denominator = beta**2 * precision + recall
    return 100 * (1 + beta**2) * precision * recall / denominator if denominator else 0.0


def translation(model, tok, chat, examples):
    """chrF per translation task: a chat model answers the held-out request as phrased; a base model
    continues a few-shot plain-text prompt ("Arabizi: ...\\nArabic: ...") up to the newline."""
    scores = {}
    for task, (source, target) in FEW_SHOT.items():
        items = [ex for ex in examples["val"] if ex["task"] == task][metric_skip:metric_skip + metric_items]
        if not items:
            continue
        shots = [ex for ex in examples["train"] if ex["task"] == task and len(ex["input"]) < 60][:few_shot]
        prefix = "".join(f"{source}: {s['input']}\n{target}: {s['messages'][-1]['content']}\n\n" for s in shots)
        if chat:
            hyps = [generate_text(model, tok, tok.render_for_completion(ex["messages"][:-1])) for ex in items]
        else:
            inputs = [[tok.eot_id] + tok.encode_ordinary(f"{prefix}{source}: {ex['input']}\n{target}:") for ex in items]
            hyps = [generate_text(model, tok, ids, first_line=True) for ids in inputs]
        score = round(chrf(hyps, [ex["messages"][-1]["content"] for ex in items]), 2)
        scores[task] = dict(items=len(items), chrf=score, example=dict(input=items[0]["input"], output=hyps[0]))
        print(f"  {task}: chrF {score:.1f} on {len(items)} items", flush=True)
    return scores


TASKS = {"translation": translation}  # name -> function(model, tok, chat, examples) -> {subtask: scores}


# --- 5. the report --------------------------------------------------------------------------------
def cell(value):  # a markdown table cell: one line, no column break
    return str(value).replace("|", "\\|").replace("\n", " ")


def tables(report):
    """Markdown: per task and subtask, a row per figure and one column per checkpoint."""
    lines, columns = [], report["checkpoints"]
    for task in report["tasks"]:
        for sub in dict.fromkeys(s for c in columns for s in c[task]):  # in order, each once
            results = [c[task].get(sub, {}) for c in columns]
            example = next(r["example"]["input"] for r in results if r)
            lines += ["", f"## {task}: {sub} ({TASK_NAMES.get(sub, sub)})", "",
                      "| | " + " | ".join(cell(f"{c['path']} ({c['kind']})") for c in columns) + " |",
                      "|---|" + "---|" * len(columns)]
            for key in dict.fromkeys(k for r in results for k in r if k != "example"):
                lines.append(f"| {key} | " + " | ".join(cell(r.get(key, "-")) for r in results) + " |")
            lines.append(f"| output for \"{cell(example)}\" | "
                         + " | ".join(cell(r["example"]["output"] if r else "-") for r in results) + " |")
    return "\n".join(lines)


def write_atomic(path, text):  # through a temporary file: a crash never leaves a half-written file at path
    Path(f"{path}.tmp{os.getpid()}").write_text(text, encoding="utf-8")
    os.replace(f"{path}.tmp{os.getpid()}", path)


def main():
    # 1. the settings, the checkpoints and the report folder
    chosen = [task.strip() for task in tasks.split(",") if task.strip()]
    unknown = sorted(set(chosen) - set(TASKS)) or ([] if chosen else [repr(tasks)])
    if unknown:
        fail(f"unknown task {', '.join(unknown)}: choose among {', '.join(TASKS)} (comma-separated)")
    if not CHECKPOINTS:
        fail("no checkpoint given: python eval.py out/NAME [out/NAME ...] [config.py] [--key=value ...]")
    if metric_items < 1 or metric_skip < 0 or few_shot < 0 or max_new_tokens < 1:
        fail("metric_items and max_new_tokens must be at least 1, metric_skip and few_shot at least 0")
    device_name = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        fail(f"--device={device}: no CUDA device here (use --device=cpu, or auto)")
    folder = out or os.path.join("reports", folder_name(os.path.abspath(CHECKPOINTS[-1])))
    claim_report(folder)

    # 2. every checkpoint with its tokenizer, before any scoring: a bad one stops the run at once
    loaded = [(path, *load(path)) for path in CHECKPOINTS]

    # 3. the held-out data, built with each checkpoint's tokenizer
    name = sft_dataset or dataset_name(CHECKPOINTS[0], loaded[0][1])
    data_dir = os.path.join("data", "sft", plain_name("sft_dataset", name))
    stats, examples = read_dataset(data_dir, "--sft_dataset" if sft_dataset else f"the dataset of {CHECKPOINTS[0]}")
    for path, ckpt, tok, tok_path in loaded:
        if stats.get("tokenizer_sha256") != sha256_of(tok_path):
            fail(f"{data_dir}/ was built with tokenizer {stats.get('tokenizer')} (sha256 "
                 f"{str(stats.get('tokenizer_sha256'))[:12]}), but {path} uses {tok_path} (sha256 "
                 f"{sha256_of(tok_path)[:12]}): pick the dataset built for it with --sft_dataset")

    # 4. the scores, one checkpoint at a time
    print(f"scoring on {data_dir}/: up to {metric_items} held-out items per task"
          f"{f', after the first {metric_skip}' if metric_skip else ''}, on {device_name}", flush=True)
    results = []
    for path, ckpt, tok, tok_path in loaded:
        chat = ckpt["kind"] != "base"
        print(f"{path} ({ckpt['kind']}: {'answers as a chat model' if chat else f'{few_shot}-shot plain prompt'})",
              flush=True)
        model = model_from_checkpoint(ckpt).to(device_name)
        results.append(dict(path=path, kind=ckpt["kind"],
                            **{task: TASKS[task](model, tok, chat, examples) for task in chosen}))
        del model

    # 5. the report
    report = dict(command="python " + shlex.join(sys.argv), checkpoints=results, tasks=chosen, sft_dataset=name,
                  metric_items=metric_items, metric_skip=metric_skip, few_shot=few_shot,
                  max_new_tokens=max_new_tokens, device=device_name)
    markdown = tables(report)
    os.makedirs(folder, exist_ok=True)
    write_atomic(os.path.join(folder, "report.json"), json.dumps(report, indent=1, ensure_ascii=False))
    write_atomic(os.path.join(folder, "report.md"), f"# Evaluation\n\n`{report['command']}`\n\nData: {data_dir}/, "
                 f"up to {metric_items} val items per task from item {metric_skip} on; a base model gets a "
                 f"{few_shot}-shot prompt from train.\n{markdown}\n")
    print(f"{markdown}\n\nwrote {folder}/report.json and report.md")


if __name__ == "__main__":
    main()
