"""
eval.py: the report card. Scores checkpoints on the same held-out material, side by side:

    python eval.py out/darija_small out/darija_sft out/darija_lora/best.pt        # -> reports/darija_lora/
    python eval.py out/darija_small --tasks=mc --mc="['hub:MBZUAI-Paris/DarijaMMLU/PATH/IN/IT.parquet']"

Checkpoints are positional arguments (a folder means its best.pt); sft.py and lora.py run this on what they
trained. 1. The settings and the report folder (`out`: a report is replaced only with --force). 2. Each
checkpoint with its tokenizer (sha256-checked). 3. Each task's held-out material, checked before any scoring.
4. The scores: bpb, pretrain.py's bits per byte over every token, overall, per source and per script (where
the model is weak); translation, chrF and BLEU (sacrebleu's) of greedy answers; mc, the option of highest
log-likelihood per character (lm-evaluation-harness's acc_norm). 5. report.json, report.md, report.png.
"""
import csv
import json
import math
import os
import re
import shlex
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import regex
import torch
import torch.nn.functional as F

from configurator import atomic_write, claim_output, configure, plain_name
from model import load_with_tokenizer, model_from_checkpoint, sha256_of

# --- settings (override with a config file and --key=value) ---
tasks = "bpb,translation"           # comma-separated, among bpb, translation, mc
bpb_data = ""                       # "": data/NAME/val.bin of each checkpoint's tokenizer; or a .txt or .jsonl file
sft_dataset = ""                    # data/sft/NAME/ ("": the first checkpoint's, named as sft.py names it)
pairs = ""                          # a .jsonl or .csv file of parallel rows, scored instead of the SFT dataset
pairs_columns = dict(latin="darija", arabic="darija_ar", english="eng")  # its columns (DODa's names)
mc = []                             # multiple-choice files: paths, or hub:OWNER/NAME/PATH (a hub dataset's file)
metric_items = 100                  # held-out items per translation direction and per multiple-choice set
metric_skip = 0                     # held-out items passed over first (scores items a choice was not made on)
few_shot = 3                        # solved examples shown to a base model
max_new_tokens = 64
out = ""                            # the report folder ("": reports/<the last checkpoint's folder name>)
device = "auto"                     # "auto": cuda when available, else cpu
force = False                       # replace an existing report (never other files)

if __name__ == "__main__":  # imported (tests), eval.py only lends its metrics
    CHECKPOINTS = [arg for arg in sys.argv[1:] if not arg.startswith("--") and not arg.endswith(".py")]
    configure(globals(), argv=[arg for arg in sys.argv[1:] if arg not in CHECKPOINTS])
PROMPTS = Path(__file__).resolve().parent / "data" / "sample" / "sft" / "prompts.json"  # sft.py's request phrasings
REPORT_FILES = ("report.json", "report.md", "report.png")
DIRECTIONS = {"dar2en": ("latin", "english", "Darija", "English"), "en2dar": ("english", "latin", "English", "Darija"),
              "lat2ar": ("latin", "arabic", "Arabizi", "Arabic"), "ar2lat": ("arabic", "latin", "Arabic", "Arabizi")}
MC_SHAPES = {"DarijaHellaSwag": ("ctx", "endings", "label"), "DarijaMMLU": ("question", "choices", "answer"),
             "Belebele": ("flores_passage", "question", "mc_answer1", "mc_answer2", "mc_answer3", "mc_answer4",
                          "correct_answer_num")}  # the columns of the published files, told apart by the second
REFERENCES = dict(source="the Atlas-Chat paper (arXiv:2409.17912), zero-shot", rows=[
    dict(model="Atlas-Chat-2B", DarijaMMLU=44.97, DarijaHellaSwag=35.08, DODa_chrF=44.86),
    dict(model="Llama-3.2-1B-Instruct", DarijaMMLU=27.66, DarijaHellaSwag=26.88, DODa_chrF=5.95),
    dict(model="chance (4 options)", DarijaMMLU=25.0, DarijaHellaSwag=25.0, DODa_chrF=None)])


def fail(msg):
    raise SystemExit(f"eval.py: {msg}")


# --- 1. the report folder -------------------------------------------------------------------------
def folder_name(path):  # out/NAME and out/NAME/best.pt are both NAME (sft.py names datasets this way)
    return os.path.basename(os.path.normpath(path if os.path.isdir(path) else os.path.dirname(path)))


def claim_report(folder):
    """Lock the report folder (a second run names this one's process) and stop unless it is ours to write."""
    claim_output(folder, REPORT_FILES, "eval.py", "pick another --out")
    if os.path.isdir(folder) and set(os.listdir(folder)) & set(REPORT_FILES) and not force:
        fail(f"{folder}/ already holds a report: add --force to replace it (or pick another --out)")


# --- 3. the held-out material (2., the checkpoints: model.py's load_with_tokenizer) ---------------
def fetch(spec):
    """The local path of a file, or of hub:OWNER/NAME/PATH: downloaded into the Hugging Face cache, as prepare.py's."""
    if not spec.startswith("hub:"):
        return spec
    owner, name, remote = (spec[4:].split("/", 2) + ["", ""])[:3]
    if not (owner and name and remote):
        fail(f"{spec}: a hub file is hub:OWNER/NAME/PATH (the dataset, then the file's path in it)")
    from huggingface_hub import HfApi, hf_hub_download  # imported here: only hub files need it
    repo = f"{owner}/{name}"
    try:
        return hf_hub_download(repo, remote, repo_type="dataset", local_files_only=True)  # fetched before
    except Exception:  # not yet: ask the hub (dataset_info is not retried, so no network shows at once)
        try:
            HfApi().dataset_info(repo, revision="main")
            return hf_hub_download(repo, remote, repo_type="dataset")
        except Exception as e:  # no network, gated, missing: one line, with the way round it
            why = (str(e).strip() or type(e).__name__).splitlines()[0][:160]
            fail(f"cannot fetch {remote} of the hub dataset {repo} ({why}): with internet, run `hf download {repo} "
                 f"{remote} --repo-type=dataset --local-dir=DIR` (HF_TOKEN set if gated), then give DIR/{remote}")


def read_rows(path, needed=()):
    """The rows (dicts) of a .jsonl, .csv, .parquet or .txt (`text`: a line) file, with the `needed` columns."""
    path = fetch(path)
    try:
        if path.endswith(".parquet"):
            import pyarrow.parquet as pq  # imported here: only parquet files need it
            rows = pq.read_table(path).to_pylist()
        else:
            with open(path, encoding="utf-8", newline="") as f:
                rows = list(csv.DictReader(f)) if path.endswith(".csv") else [line for line in f if line.strip()]
            if path.endswith(".txt"):  # a document per line
                rows = [dict(text=line.strip()) for line in rows]
            elif not path.endswith(".csv"):  # JSON lines
                rows = [json.loads(line) for line in rows]
    except (OSError, ValueError) as e:  # missing, not UTF-8, not JSON, not parquet
        fail(f"cannot read {path} ({type(e).__name__}: {e}): give a .jsonl, .csv, .parquet or .txt file")
    if not rows:
        fail(f"{path} holds no rows: an empty set scores nothing")
    missing = [column for column in needed if column not in rows[0]]
    if missing:
        fail(f"{path} has no column {', '.join(missing)} (its columns: {', '.join(map(str, rows[0]))})")
    return rows


def bpb_documents(tok, tok_path, path):
    """[(ids, <|endoftext|> first; source)]: bpb_data's (.txt lines; .jsonl `text`, `source`), else val.bin's, whose
    sources meta.json's val_docs give (prepare.py writes the documents in source order; None without them)."""
    if bpb_data:
        return [(np.array([tok.eot_id] + tok.encode_ordinary(row["text"])), row.get("source")
                 or os.path.basename(bpb_data)) for row in read_rows(bpb_data, ["text"])]
    data_dir = os.path.dirname(tok_path)
    try:
        meta = json.loads(Path(data_dir, "meta.json").read_text(encoding="utf-8"))
        stream = np.fromfile(os.path.join(data_dir, "val.bin"), dtype=np.dtype(meta["dtype"]))
        if meta.get("tokenizer_sha256") != sha256_of(tok_path) or not len(stream):
            raise ValueError("val.bin is empty, or was encoded with another tokenizer than the checkpoint's")
    except (OSError, ValueError, KeyError, TypeError) as e:
        fail(f"no held-out text for {path} in {data_dir}/ ({type(e).__name__}: {e}): rebuild it with `python "
             f"prepare.py --dataset={os.path.basename(data_dir)} ...`, or give a text file with --bpb_data")
    docs = np.split(stream, np.flatnonzero(stream == tok.eot_id)[1:])
    per_source = [(s["name"], s.get("val_docs")) for s in meta.get("sources", [])]
    if all(n is not None for _, n in per_source) and sum(n for _, n in per_source) == len(docs):
        return list(zip(docs, [name for name, n in per_source for _ in range(n)]))
    return [(doc, None) for doc in docs]  # per source: not recorded in meta.json (an older prepare.py)


def dataset_name(path, ckpt):
    """The SFT dataset a checkpoint was tuned on, else the one sft.py names after a base's folder (or its base's)."""
    settings, tuned = ckpt.get("config") or {}, ckpt["kind"] != "base"
    return (tuned and settings.get("sft_dataset")) or folder_name(settings.get("init_from") or path if tuned else path)


def sft_items(data_dir, loaded):
    """{direction: (items, shots)} from an SFT dataset sft.py built: its val items, its train items as shots."""
    try:
        stats = dict(json.loads(Path(data_dir, "stats.json").read_text(encoding="utf-8")))
    except OSError:
        whose = "--sft_dataset" if sft_dataset else f"the dataset of {loaded[0][0]}"
        fail(f"no SFT dataset at {data_dir}/ ({whose}): build it with `python sft.py CONFIG --build_only "
             f"--sft_dataset={os.path.basename(data_dir)}`, or name another with --sft_dataset")
    except (ValueError, TypeError) as e:  # not JSON, or not an object
        fail(f"{data_dir}/ is not an SFT dataset that sft.py built ({e}): rebuild it with sft.py --build_only --force")
    examples = {split: read_rows(os.path.join(data_dir, f"{split}.jsonl")) for split in ("train", "val")}
    for path, ckpt, tok, tok_path in loaded:
        if stats.get("tokenizer_sha256") != sha256_of(tok_path):
            fail(f"{data_dir}/ was built with tokenizer {stats.get('tokenizer')} (sha256 "
                 f"{str(stats.get('tokenizer_sha256'))[:12]}), but {path} uses {tok_path} (sha256 "
                 f"{sha256_of(tok_path)[:12]}): pick the dataset built for it with --sft_dataset")

    def item(ex):
        return dict(input=ex["input"], reference=ex["messages"][-1]["content"], messages=ex["messages"][:-1])
    return {task: ([item(ex) for ex in examples["val"] if ex["task"] == task][metric_skip:metric_skip + metric_items],
                   [item(ex) for ex in examples["train"] if ex["task"] == task and len(ex["input"]) < 60][:few_shot])
            for task in DIRECTIONS}


def pairs_items():
    """{direction: (items, shots)} from a pairs file: few_shot rows, then those scored; a chat model gets each
    request as sft.py's first English phrasing of the task (data/sample/sft/prompts.json)."""
    rows = read_rows(pairs, [column for column in pairs_columns.values() if column])
    phrasings = json.loads(PROMPTS.read_text(encoding="utf-8"))
    out = {}
    for task, (source, target, _, _) in DIRECTIONS.items():
        if pairs_columns.get(source) and pairs_columns.get(target):
            template = next(t for lang, t, _ in phrasings[task] if lang == "en")
            sides = [(str(row[pairs_columns[source]] or "").strip(), str(row[pairs_columns[target]] or "").strip())
                     for row in rows]
            both = [dict(input=x, reference=y, messages=[{"role": "user", "content": template.format(x=x)}])
                    for x, y in sides if x and y]
            out[task] = (both[few_shot:][metric_skip:metric_skip + metric_items], both[:few_shot])
    return out


def mc_items(path):
    """(set name, [(context, options, right index)]) from a file of one of the MC_SHAPES."""
    rows, items = read_rows(path), []
    shape = next((name for name, columns in MC_SHAPES.items() if columns[1] in rows[0]), None)
    if shape is None:
        fail(f"{path} is no multiple-choice set: its columns are {', '.join(map(str, rows[0]))}; expected those of "
             + "; ".join(f"{name} ({', '.join(columns)})" for name, columns in MC_SHAPES.items()))
    read_rows(path, MC_SHAPES[shape])  # stops naming the columns it lacks
    for row in rows[metric_skip:metric_skip + metric_items]:
        if shape == "DarijaHellaSwag":
            context, options, right = row["ctx"], row["endings"], row["label"]
        elif shape == "DarijaMMLU":
            context = f"{row.get('context') or ''}\n{row['question']}".strip()
            options, right = row["choices"], row["answer"]
        else:
            context = f"{row['flores_passage']}\n{row['question']}"
            options, right = [row[f"mc_answer{i}"] for i in range(1, 5)], int(row["correct_answer_num"]) - 1
        options = json.loads(options) if isinstance(options, str) else list(options)  # a CSV holds a JSON list
        items.append((str(context), [str(option) for option in options], int(right)))
    return f"{shape} {os.path.splitext(os.path.basename(path))[0]}", items


# --- 4. the tasks ---------------------------------------------------------------------------------
@torch.no_grad()
def token_nats(model, stream, batch_size=8):
    """The loss (nats) of each token of `stream` after the first, in consecutive windows of the context length
    (pretrain.py's validation reads such windows at random places, so some tokens twice and some never)."""
    block, nats = model.config.block_size, []
    windows = [torch.from_numpy(stream[i:i + block + 1].astype(np.int64)) for i in range(0, len(stream) - 1, block)]
    for i in range(0, len(windows), batch_size):
        x = torch.zeros(len(windows[i:i + batch_size]), block, dtype=torch.long)
        y = torch.full_like(x, -1)  # -1: padding after the last token, in no loss
        for row, window in enumerate(windows[i:i + batch_size]):
            x[row, :len(window) - 1], y[row, :len(window) - 1] = window[:-1], window[1:]
        y = y.flatten().to(model.wte.weight.device)
        loss = F.cross_entropy(model(x.to(y.device))[0].float().flatten(0, 1), y, ignore_index=-1, reduction="none")
        nats.append(loss[y >= 0].cpu().numpy())  # row after row: the tokens in order
    return np.concatenate(nats)


def bpb(model, tok, chat, documents):
    """Per group (all, each source, each script): mean nats per predicted token x tokens / bytes / ln 2."""
    lengths = np.array([len(doc) for doc, _ in documents])
    nats = token_nats(model, np.concatenate([doc for doc, _ in documents]))
    doc_of_target = np.repeat(np.arange(len(documents)), lengths)[1:]  # the first token is never predicted
    doc_nats, doc_targets = np.bincount(doc_of_target, weights=nats), np.bincount(doc_of_target)
    texts = [tok.decode_bytes([t for t in doc.tolist() if t != tok.eot_id]) for doc, _ in documents]  # the text's bytes
    doc_bytes = np.array([len(text) for text in texts])
    groups = {"all": np.ones(len(documents), bool)}
    for label in sorted({source for _, source in documents} - {None}):
        groups[f"source {label}"] = np.array([source == label for _, source in documents])
    arabic, latin = (np.array([len(regex.findall(rf"\p{{Script={script}}}", text.decode("utf-8", errors="replace")))
                               for text in texts]) for script in ("Arabic", "Latin"))
    groups["Arabic script"], groups["Latin script"] = arabic >= latin, arabic < latin  # by majority of letters
    scores = {}
    for name, chosen in groups.items():
        tokens, n_bytes, targets = lengths[chosen].sum(), doc_bytes[chosen].sum(), doc_targets[chosen].sum()
        if n_bytes and targets:
            bits = doc_nats[chosen].sum() / targets * tokens / n_bytes / math.log(2)
            scores[name] = dict(bpb=round(float(bits), 4), docs=int(chosen.sum()), tokens=int(tokens),
                                bytes=int(n_bytes))
    return scores


def generate_text(model, tok, ids, first_line=False):
    """Greedy continuation of `ids` up to a special token (<|end|>, or a derailment) or, if first_line, a newline."""
    out, room, stop = [], min(max_new_tokens, model.config.block_size - len(ids)), set(tok.special_tokens.values())
    for token in (model.generate(ids, room, temperature=0) if room > 0 else ()):
        if token in stop or (first_line and "\n" in tok.decode(out)):
            break
        out.append(token)
    text = tok.decode(out)
    return (text.split("\n")[0] if first_line else text).strip()


def corpus_ngrams(pairs, order):
    """Per order 1..order, summed over (hypothesis, reference) pairs of characters or words: [hypothesis n-grams,
    those where the reference has n-grams of the order, reference n-grams, matches (clipped to the reference's)]."""
    stats = [[0, 0, 0, 0] for _ in range(order)]
    for hyp, ref in pairs:
        for n in range(1, order + 1):
            hyp_ngrams = Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
            ref_ngrams = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
            n_hyp, n_ref = sum(hyp_ngrams.values()), sum(ref_ngrams.values())
            counts = (n_hyp, n_hyp if n_ref else 0, n_ref, sum((hyp_ngrams & ref_ngrams).values()))
            stats[n - 1] = [total + count for total, count in zip(stats[n - 1], counts)]
    return stats


def chrf(hyps, refs, order=6, beta=2.0):
    """Corpus-level chrF (Popovic 2015), as sacrebleu's default: character 1..6-grams without whitespace, counts
    summed over the corpus, precision and recall averaged over the orders present, recall weighted beta times."""
    stats = corpus_ngrams([("".join(hyp.split()), "".join(ref.split())) for hyp, ref in zip(hyps, refs)], order)
    used = [(matches / n_hyp, matches / n_ref) for _, n_hyp, n_ref, matches in stats if n_hyp and n_ref]
    precision = sum(p for p, _ in used) / len(used) if used else 0.0
    recall = sum(r for _, r in used) / len(used) if used else 0.0
    denominator = beta**2 * precision + recall
    return 100 * (1 + beta**2) * precision * recall / denominator if denominator else 0.0


BLEU_SPLITS = [(re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "), (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
               (re.compile(r"([\.,])([^0-9])"), r" \1 \2"), (re.compile(r"([0-9])(-)"), r"\1 \2 ")]  # 13a's


def bleu_words(text):
    """The words BLEU counts: sacrebleu's default tokenizer (13a, as mteval-v13a.pl): punctuation split off."""
    text = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ").replace("&quot;", '"')
    text = f' {text.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")} '
    for pattern, replacement in BLEU_SPLITS:
        text = pattern.sub(replacement, text)
    return text.split()


def bleu(hyps, refs, order=4):
    """Corpus-level BLEU, as sacrebleu's default: the geometric mean of the clipped 1..4-gram precisions ("exp"
    smoothing: the k-th order without a match counts 1 / 2^k matches) times the brevity penalty."""
    stats = corpus_ngrams([(bleu_words(hyp), bleu_words(ref)) for hyp, ref in zip(hyps, refs)], order)
    (hyp_len, _, ref_len, _), log_precisions, misses = stats[0], [], 0  # 1-grams: the lengths in words
    if not hyp_len or not any(matches for *_, matches in stats):
        return 0.0
    for total, _, _, match in stats:  # an order the hypotheses are too short for: log(0), as sacrebleu
        misses += not match
        log_precisions.append(math.log((match or 1 / 2**misses) / total) if total else -9999999999)
    brevity = 1.0 if hyp_len >= ref_len else math.exp(1 - ref_len / hyp_len)
    return 100 * brevity * math.exp(sum(log_precisions) / order)


def translation(model, tok, chat, directions):
    """chrF and BLEU per direction; a base model continues a few-shot prompt ("Arabizi: ...\\nArabic: ...")."""
    scores = {}
    for task, (items, shots) in directions.items():
        if not items:
            continue
        source, target = DIRECTIONS[task][2:]
        prefix = "".join(f"{source}: {s['input']}\n{target}: {s['reference']}\n\n" for s in shots)
        if chat:
            hyps = [generate_text(model, tok, tok.render_for_completion(item["messages"])) for item in items]
        else:
            hyps = [generate_text(model, tok, [tok.eot_id] + tok.encode_ordinary(
                f"{prefix}{source}: {item['input']}\n{target}:"), first_line=True) for item in items]
        refs = [item["reference"] for item in items]
        scores[task] = dict(items=len(items), chrf=round(chrf(hyps, refs), 2), bleu=round(bleu(hyps, refs), 2),
                            example=dict(input=items[0]["input"], output=hyps[0]))
    return scores


@torch.no_grad()
def option_logliks(model, tok, context, options):
    """log p(" " + option | context) of each option, summed over its tokens (the context cut from the left to fit)."""
    ctx, out = [tok.eot_id] + tok.encode_ordinary(context), []
    for option in options:
        cont = tok.encode_ordinary(" " + option)
        ids = (ctx + cont)[-(model.config.block_size + 1):]
        logits = model(torch.tensor([ids[:-1]], device=model.wte.weight.device))[0][0, -len(cont):].float()
        out.append(float(F.log_softmax(logits, -1).gather(1, torch.tensor(cont, device=logits.device)[:, None]).sum()))
    return out


def normalised(logliks, options):  # lm-evaluation-harness's acc_norm: per character of the continuation " " + option
    return [loglik / len(" " + option) for loglik, option in zip(logliks, options)]


def multiple_choice(model, tok, chat, sets):
    """Accuracy (length-normalised) and centered accuracy (acc - chance) / (1 - chance) of each set."""
    scores = {}
    for name, items in sets.items():
        picks = [normalised(option_logliks(model, tok, context, options), options) for context, options, _ in items]
        acc = sum(pick.index(max(pick)) == answer for pick, (_, _, answer) in zip(picks, items)) / len(items)
        chance = sum(1 / len(options) for _, options, _ in items) / len(items)
        scores[name] = dict(items=len(items), acc=round(acc, 4), chance=round(chance, 4),
                            acc_centered=round((acc - chance) / (1 - chance), 4))
    return scores


TASKS = {"bpb": bpb, "translation": translation, "mc": multiple_choice}  # name -> function(model, tok, chat, data)


# --- 5. the report --------------------------------------------------------------------------------
def cell(value):  # a markdown table cell: one line, no column break
    return str(value).replace("|", "\\|").replace("\n", " ")


def tables(report):
    """Markdown: a table per task, a row per figure and one column per checkpoint; then the quoted figures."""
    lines, columns = [], report["checkpoints"]
    for task in report["tasks"]:
        lines += ["", f"## {task}", "", "| | " + " | ".join(cell(f"{c['path']} ({c['kind']})") for c in columns) + " |",
                  "|---|" + "---|" * len(columns)]
        for sub in dict.fromkeys(s for c in columns for s in c[task]):  # in order, each once
            results = [c[task].get(sub, {}) for c in columns]
            for key in dict.fromkeys(k for r in results for k in r if k != "example"):
                lines.append(f"| {cell(sub)} {key} | " + " | ".join(cell(r.get(key, "-")) for r in results) + " |")
            example = next((r["example"]["input"] for r in results if "example" in r), None)
            if example is not None:
                lines.append(f"| {cell(sub)} output for \"{cell(example)}\" | "
                             + " | ".join(cell(r["example"]["output"] if r else "-") for r in results) + " |")
    lines += ["", "## Published figures (quoted, not measured here)", "",
              f"Source: {REFERENCES['source']}. Accuracy in %, chrF on DODa: other models, other items, for scale.",
              "", "| model | DarijaMMLU | DarijaHellaSwag | DODa chrF |", "|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['DarijaMMLU']} | {r['DarijaHellaSwag']} | {r['DODa_chrF'] or '-'} |"
              for r in REFERENCES["rows"]]
    return "\n".join(lines)


def chart(report, path):
    """report.png: per task, a bar per checkpoint and figure (bpb per group, chrF per direction, accuracy per set)."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only, no window
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed, so there is no report.png (pip install matplotlib)")
        return False
    columns, n = report["checkpoints"], len(report["tasks"])
    figure, axes = plt.subplots(1, n, figsize=(5 * n, 4.5), squeeze=False)
    for axis, task in zip(axes[0], report["tasks"]):
        key, width = {"bpb": "bpb", "translation": "chrf", "mc": "acc"}[task], 0.8 / len(columns)
        subs = list(dict.fromkeys(s for c in columns for s in c[task]))  # groups, directions or sets, in order
        for i, column in enumerate(columns):
            axis.bar([j + i * width for j in range(len(subs))], [column[task].get(s, {}).get(key, 0) for s in subs],
                     width, label=f"{column['path']} ({column['kind']})")
        axis.set_xticks([j + width * (len(columns) - 1) / 2 for j in range(len(subs))], subs, rotation=20, fontsize=7)
        axis.set_title(f"{task}: {key}", fontsize=9)
        axis.legend(fontsize=7)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    plt.close(figure)
    return True


def write_atomic(path, text):  # through a temporary file (configurator.atomic_write)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


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
    if "mc" in chosen and not mc:
        fail("the mc task needs its sets: --mc=\"['FILE', 'hub:OWNER/NAME/PATH']\" (.parquet, .jsonl or .csv)")
    device_name = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        fail(f"--device={device}: no CUDA device here (use --device=cpu, or auto)")
    folder = out or os.path.join("reports", folder_name(os.path.abspath(CHECKPOINTS[-1])))
    claim_report(folder)

    # 2. every checkpoint with its tokenizer, before any scoring: a bad one stops the run at once
    try:
        loaded = [(path, *load_with_tokenizer(path)) for path in CHECKPOINTS]
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))

    # 3. the held-out material of each task, read and checked before any scoring
    material, sources = {}, {}
    if "bpb" in chosen:
        sources["bpb"] = bpb_data or "data/NAME/val.bin of each checkpoint's tokenizer"
        material["bpb"] = [bpb_documents(tok, tok_path, path) for path, _, tok, tok_path in loaded]
    if "translation" in chosen and pairs:
        sources["translation"], material["translation"] = pairs, [pairs_items()] * len(loaded)
    elif "translation" in chosen:
        name = sft_dataset or dataset_name(CHECKPOINTS[0], loaded[0][1])
        sources["translation"] = os.path.join("data", "sft", plain_name("sft_dataset", name))
        material["translation"] = [sft_items(sources["translation"], loaded)] * len(loaded)
    if "mc" in chosen:
        sources["mc"], material["mc"] = mc, [dict(mc_items(path) for path in mc)] * len(loaded)

    # 4. the scores, one checkpoint at a time
    results = []
    for i, (path, ckpt, tok, tok_path) in enumerate(loaded):
        chat = ckpt["kind"] != "base"
        print(f"{path} ({ckpt['kind']}: {'chat' if chat else f'{few_shot}-shot plain prompts'}) on {device_name}")
        model = model_from_checkpoint(ckpt).to(device_name).eval()
        results.append(dict(path=path, kind=ckpt["kind"],
                            **{task: TASKS[task](model, tok, chat, material[task][i]) for task in chosen}))
        del model

    # 5. the report
    report = dict(command="python " + shlex.join(sys.argv), checkpoints=results, tasks=chosen, data=sources,
                  metric_items=metric_items, metric_skip=metric_skip, few_shot=few_shot,
                  max_new_tokens=max_new_tokens, device=device_name, references=REFERENCES)
    markdown = tables(report)
    os.makedirs(folder, exist_ok=True)
    has_chart = chart(report, os.path.join(folder, "report.png"))
    write_atomic(os.path.join(folder, "report.json"), json.dumps(report, indent=1, ensure_ascii=False))
    data = "; ".join(f"{task}: {source}" for task, source in sources.items())
    write_atomic(os.path.join(folder, "report.md"), f"# Evaluation\n\n`{report['command']}`\n\nData: {data}. Up to "
                 f"{metric_items} items per direction or set from item {metric_skip} on; a base model gets "
                 f"{few_shot} examples.\n{markdown}\n" + ("\n![chart](report.png)\n" if has_chart else ""))
    print(f"{markdown}\n\nwrote {folder}/report.json, report.md{' and report.png' if has_chart else ''}")


if __name__ == "__main__":
    main()
