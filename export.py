"""
export.py: take a model out of the repo, as a Hugging Face `transformers` folder.

    python export.py out/darija_sft                                   # -> export/darija_sft/
    python export.py out/darija_sft --out_dir=export/mine --force     # replace an earlier export
    hf upload OWNER/NAME export/darija_sft                            # publish it (the hub's own command)

The folder loads with AutoModelForCausalLM.from_pretrained(folder) and AutoTokenizer.from_pretrained(folder),
no custom code, no trust_remote_code. Needs `pip install safetensors` (transformers itself only to load it).

What happens, in order (and why):
1. The checkpoint (a folder means its best.pt) is loaded with its tokenizer, checked by sha256 to be the file it
   was trained with, and the output folder is checked before any work (replaced only with --force).
2. The architecture. Our GPT is Llama's decoder with two differences, each with an exact equivalent:
   - the MLP: SwiGLU maps to LlamaForCausalLM (c_gate, c_fc, c_proj -> gate_proj, up_proj, down_proj); ReLU²
     (relu(x W)² then a projection, no gate) maps to ArceeForCausalLM, Llama with a non-gated up_proj/down_proj
     MLP and hidden_act "relu2";
   - RMSNorm without a gain: a gain of ones, with model.py's epsilon (1e-6; Llama's default is another).
   RoPE: ours turns feature pairs (2i, 2i+1), transformers turns (i, i + head_dim/2) by the same angle, so the
   rows of each query and key head are reordered (evens, then odds); the attention scores are unchanged. Tied
   embeddings, grouped-query attention, rope_theta and block_size carry over. A setting or weight this file does
   not know (from a newer model.py) is refused: an export is exact or it is not written.
3. The tokenizer, as `tokenizers` runs it: our split regex (a Split pre-tokenizer, matches isolated), then the
   byte-level alphabet without its own regex, our vocabulary and merges (BPE, whole-chunk lookup first as
   tiktoken does) and our special tokens. tokenizer_config.json adds a chat template that renders bpe.py's
   chat format. Only bpe.py's named split patterns are accepted: they are checked to cut text the same way in
   the regex engine of `tokenizers` (Oniguruma), once `\\p{N}{1,3}+` is written as an atomic group (there
   `{1,3}+` repeats, it is not possessive).
4. generation_config.json: chat.py's sampling defaults; generation stops at <|end|> (and every other special
   token, as in chat.py) for a chat checkpoint, at <|endoftext|> for a base one.
5. README.md, a model card: the model, its size, its data and their licences, what it was trained on and how
   well, the commands that made it, how to load it.
All files are written in OUT.partial/, renamed to OUT when complete.
"""
import json
import math
import os
import shlex
import shutil
import sys
from dataclasses import fields

import torch

from bpe import PATTERNS, SPECIAL_TOKENS
from configurator import claim, configure
from model import GPTConfig, load_checkpoint, load_with_tokenizer

# --- settings (override with a config file and --key=value) ---
out_dir = ""        # "": export/<the checkpoint's folder name>
force = False       # replace an earlier export (never a folder holding other files)

if __name__ == "__main__":  # imported (tests), export.py lends its mapping
    CHECKPOINTS = [arg for arg in sys.argv[1:] if not arg.startswith("--") and not arg.endswith(".py")]
    configure(globals(), argv=[arg for arg in sys.argv[1:] if arg not in CHECKPOINTS])
EXPORT_FILES = ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                "tokenizer_config.json", "README.md")
RMS_NORM_EPS = 1e-6         # model.py's norm()
CHAT_DEFAULTS = dict(temperature=0.7, top_k=50, top_p=0.95, max_new_tokens=256)  # chat.py's flags
NOT_SETTINGS = ("force", "adapter", "adapter_sha256", "base", "base_sha256", "step", "val_loss")  # lora_merged notes
LICENCES = {"wikimedia/wikipedia": "CC BY-SA / GFDL", "alielfilali01/Darija-Stories-Dataset": "CC BY-NC",
            "atlasia/darija_english": "CC BY-NC 4.0", "data/sample/pretrain": "written for darija-gpt (its licence)"}


def fail(msg):
    raise SystemExit(f"export.py: {msg}")


# --- 1. the checkpoint and the output folder ------------------------------------------------------
def folder_name(path):  # out/NAME and out/NAME/best.pt are both NAME
    return os.path.basename(os.path.normpath(path if os.path.isdir(path) else os.path.dirname(path)))


def check_output(folder):
    """Stop unless `folder` is free, or is an earlier export and --force says to replace it."""
    if not os.path.exists(folder):
        return
    others = sorted(set(os.listdir(folder)) - set(EXPORT_FILES)) if os.path.isdir(folder) else [folder]
    if others:  # --force or not: never delete what export.py did not write
        fail(f"{folder} holds files export.py did not write ({', '.join(others)}): pick another --out_dir")
    if not force:
        fail(f"{folder}/ already holds an export: add --force to replace it (or pick another --out_dir)")


# --- 2. the architecture --------------------------------------------------------------------------
def check_mappable(ckpt):
    """Every model setting must have an exact equivalent in transformers; name the first one that does not."""
    known = {f.name for f in fields(GPTConfig)}
    unknown = sorted(set(ckpt["model_config"]) - known)
    if unknown:
        settings = ", ".join(f"{key}={ckpt['model_config'][key]!r}" for key in unknown)
        fail(f"the checkpoint's model_config sets {settings}, "
             f"which export.py has no exact transformers equivalent for: the export would not compute the same logits")
    try:
        config = GPTConfig(**ckpt["model_config"])
    except (TypeError, ValueError) as e:
        fail(f"the checkpoint's model_config is not valid for model.py: {e}")
    if config.mlp not in ("swiglu", "relu2"):
        fail(f"mlp={config.mlp!r} has no exact transformers equivalent (swiglu and relu2 have)")
    return config


def hf_config(c, eos_id, eot_id):
    """config.json: LlamaForCausalLM (SwiGLU) or ArceeForCausalLM (ReLU²) with our shapes."""
    arch, model_type = ("LlamaForCausalLM", "llama") if c.mlp == "swiglu" else ("ArceeForCausalLM", "arcee")
    return {"architectures": [arch], "model_type": model_type, "vocab_size": c.vocab_size,
            "hidden_size": c.n_embd, "intermediate_size": c.mlp_hidden, "num_hidden_layers": c.n_layer,
            "num_attention_heads": c.n_head, "num_key_value_heads": c.n_kv_head, "head_dim": c.n_embd // c.n_head,
            "hidden_act": "silu" if c.mlp == "swiglu" else "relu2", "max_position_embeddings": c.block_size,
            "rms_norm_eps": RMS_NORM_EPS, "rope_theta": c.rope_theta, "rope_scaling": None,
            "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
            "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
            "tie_word_embeddings": c.tie_embeddings, "bos_token_id": eot_id, "eos_token_id": eos_id,
            "pad_token_id": eot_id, "initializer_range": 0.02, "use_cache": True, "torch_dtype": "float32"}


def hf_weights(state, c):
    """Our state dict -> transformers' names and layout (q, k rows reordered for RoPE; norm gains of ones)."""
    state = dict(state)
    head_dim = c.n_embd // c.n_head
    halves = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])  # evens, then odds

    def rope_rows(weight, heads):  # (heads * head_dim, n_embd): each head's rows in transformers' order
        return weight.view(heads, head_dim, -1)[:, halves].reshape(weight.shape)

    dtype = state["wte.weight"].dtype
    ones = lambda: torch.ones(c.n_embd, dtype=dtype)  # noqa: E731
    out = {"model.embed_tokens.weight": state.pop("wte.weight"), "model.norm.weight": ones()}
    head = state.pop("lm_head.weight")
    if not c.tie_embeddings:
        out["lm_head.weight"] = head
    mlp_names = {"c_gate": "gate_proj", "c_fc": "up_proj", "c_proj": "down_proj"}
    for i in range(c.n_layer):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        out[theirs + "self_attn.q_proj.weight"] = rope_rows(state.pop(ours + "attn.c_q.weight"), c.n_head)
        out[theirs + "self_attn.k_proj.weight"] = rope_rows(state.pop(ours + "attn.c_k.weight"), c.n_kv_head)
        out[theirs + "self_attn.v_proj.weight"] = state.pop(ours + "attn.c_v.weight")
        out[theirs + "self_attn.o_proj.weight"] = state.pop(ours + "attn.c_proj.weight")
        for name in (["c_gate"] if c.mlp == "swiglu" else []) + ["c_fc", "c_proj"]:
            out[theirs + f"mlp.{mlp_names[name]}.weight"] = state.pop(ours + f"mlp.{name}.weight")
        out[theirs + "input_layernorm.weight"] = ones()
        out[theirs + "post_attention_layernorm.weight"] = ones()
    if state:  # e.g. a norm gain or a bias from a newer model.py: it would be silently dropped
        fail(f"the checkpoint holds weights export.py does not know how to map ({', '.join(sorted(state)[:3])}"
             f"{', ...' if len(state) > 3 else ''}): the export would not compute the same logits")
    return {name: weight.detach().to("cpu").contiguous().clone() for name, weight in out.items()}


# --- 3. the tokenizer -----------------------------------------------------------------------------
def byte_alphabet():
    """GPT-2's byte-level alphabet: byte -> a printable character (what `tokenizers`' ByteLevel uses)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def oniguruma_pattern(pattern):
    """Our split regex as Oniguruma matches it the same: only bpe.py's named patterns are checked to."""
    if pattern not in PATTERNS.values():
        fail(f"the tokenizer's split pattern is not one of bpe.py's ({', '.join(PATTERNS)}): only those are "
             f"checked to cut text the same way in Hugging Face tokenizers' regex engine")
    return pattern.replace(r"\p{N}{1,3}+", r"(?>\p{N}{1,3})")  # Oniguruma: {1,3}+ repeats, is not possessive


def tokenizer_json(tok):
    """tokenizer.json: Split (our regex) -> ByteLevel (no regex of its own) -> BPE (our merges) + special tokens."""
    alphabet = byte_alphabet()
    as_text = lambda token: "".join(alphabet[b] for b in token)  # noqa: E731
    vocab = {as_text(token): i for i, token in enumerate(tok.vocab)}
    merges = [f"{as_text(tok.vocab[a])} {as_text(tok.vocab[b])}" for a, b in tok.merges]
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for s, i in sorted(tok.special_tokens.items(), key=lambda item: item[1])]
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": oniguruma_pattern(tok.pattern)}, "behavior": "Isolated",
                 "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
            "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": True, "vocab": vocab, "merges": merges}}


# bpe.py's chat format: <|endoftext|>, then <|role|>content<|end|> per message, then <|assistant|> to ask.
CHAT_TEMPLATE = (
    "{{ '<|endoftext|>' }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('a role is system, user or assistant') }}{% endif %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")


def tokenizer_config(tok, eos, block_size):
    has_chat = all(s in tok.special_tokens for s in SPECIAL_TOKENS)
    return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>", "eos_token": eos,
            "pad_token": "<|endoftext|>", "unk_token": None, "add_bos_token": False, "add_eos_token": False,
            "clean_up_tokenization_spaces": False, "model_max_length": block_size,
            **({"chat_template": CHAT_TEMPLATE} if has_chat else {})}


# --- 4. generation --------------------------------------------------------------------------------
def generation_config(tok, eos_id, chat):
    """chat.py's sampling defaults; a chat model stops at eos (<|end|>), then at any special token, as in chat.py."""
    stops = [eos_id] + sorted(set(tok.special_tokens.values()) - {eos_id}) if chat else eos_id
    return {"bos_token_id": tok.eot_id, "eos_token_id": stops, "pad_token_id": tok.eot_id, "do_sample": True,
            **CHAT_DEFAULTS}


# --- 5. the model card ----------------------------------------------------------------------------
def as_command(script, settings):
    """The command that reproduces a run: every setting it ran with, as --key=value."""
    args = [f"--{key}={value}" if isinstance(value, str) else f"--{key}={value!r}"
            for key, value in settings.items() if key not in NOT_SETTINGS]
    return " \\\n    ".join([f"python {script}", *map(shlex.quote, args)])


def lineage(ckpt, path):
    """The checkpoints this one came from, oldest first, as far as they are on disk: [(path, ckpt), ...]."""
    chain = [(path, ckpt)]
    while True:
        settings = chain[0][1].get("config") or {}
        parent = settings.get("base") if chain[0][1]["kind"] == "lora_merged" else settings.get("init_from")
        if chain[0][1]["kind"] == "base" or not parent or not os.path.exists(parent) or len(chain) > 4:
            return chain
        try:
            chain.insert(0, (parent, load_checkpoint(parent)))
        except (FileNotFoundError, ValueError):
            return chain


def read_json(path):  # {} when absent or unreadable: the card says less, the export goes on
    try:
        with open(path, encoding="utf-8") as f:
            found = json.load(f)
        return found if isinstance(found, dict) else {}
    except (OSError, ValueError):
        return {}


def model_card(name, folder, ckpt, path, tok, tok_path, c, n_params, arch):
    """README.md: what the model is, its data and their licences, how it was trained and how well, how to load it."""
    meta_path = os.path.join(os.path.dirname(tok_path), "meta.json")
    meta = read_json(meta_path)
    chain = lineage(ckpt, path)
    role = "a base model: it continues text" if ckpt["kind"] == "base" else "a chat model (use the chat template)"
    lines = [f"# {name}", "",
             f"A small decoder-only language model ({n_params:,} parameters) trained from scratch with "
             f"darija-gpt, for Moroccan Darija (Arabic script and Arabizi). Checkpoint kind `{ckpt['kind']}`: {role}.",
             "", "## Architecture", "",
             f"`{arch}`: {c.n_layer} layers, {c.n_embd} wide, {c.n_head} attention heads ({c.n_kv_head} key/value "
             f"heads), MLP {c.mlp} {c.mlp_hidden} wide, RoPE (theta {c.rope_theta:g}), RMSNorm (eps {RMS_NORM_EPS:g}), "
             f"no biases, {'tied' if c.tie_embeddings else 'separate'} input and output embeddings, context "
             f"{c.block_size} tokens. Tokenizer: byte-level BPE, {tok.vocab_size:,} ids, trained on the same data.",
             "", "## Data", ""]
    for source in meta.get("sources", []):
        spec = source.get("spec", {})
        where = spec.get("hub") or spec.get("path") or source.get("name")
        licence = next((v for k, v in LICENCES.items() if str(where).startswith(k)), "see the source")
        lines.append(f"- `{where}`: {source.get('docs_kept', '?'):,} documents kept; licence: {licence}")
    if not meta:
        lines.append(f"Not recorded ({meta_path} is missing or unreadable).")
    if meta.get("fallback_used"):
        lines.append("- the hub could not be reached: trained on the project's sample corpus")
    lines += ["", "## Training", ""]
    for stage_path, stage in chain:
        settings = stage.get("config") or {}
        line = f"- `{stage_path}` ({stage['kind']}): {stage.get('step', 0)} steps"
        if stage["kind"] == "base" and settings.get("batch_size"):
            tokens = stage.get("step", 0) * settings["batch_size"] * settings.get("block_size", c.block_size) \
                * settings.get("grad_accum_steps", 1)
            line += f", {tokens:,} tokens seen"
            val = meta.get("val", {})
            if stage.get("best_val_loss") is not None and val.get("bytes"):
                bpb = stage["best_val_loss"] * val["tokens"] / val["bytes"] / math.log(2)
                line += f", validation loss {stage['best_val_loss']:.4f} ({bpb:.3f} bits per byte)"
        elif stage.get("best_val_loss") is not None:
            line += f", validation loss {stage['best_val_loss']:.4f} on its SFT data"
        lines.append(line)
    metrics_path = os.path.join(os.path.dirname(load_path(path)), "metrics.json")
    metrics = read_json(metrics_path)
    scores = metrics.get("sft") or metrics.get("lora") or {}  # what sft.py or lora.py scored (eval.py)
    if scores:
        lines += ["", f"Task scores recorded in {metrics_path} (chrF of greedy answers on held-out items):", ""]
        lines += [f"- {task}: {s.get('chrf')} on {s.get('items')} items" for task, s in scores.items()]
    lines += ["", "## How it was made", "", "```"]
    if meta.get("settings"):
        lines.append(as_command("prepare.py", meta["settings"]))
    scripts = {"base": "pretrain.py", "sft": "sft.py", "lora_merged": "lora.py"}
    lines += [as_command(scripts.get(stage["kind"], "?"), stage.get("config") or {}) for _, stage in chain]
    ask = ('[{"role": "user", "content": "salam, kidayr?"}], max_new_tokens=64)[0]["generated_text"][-1]["content"]'
           if ckpt["kind"] != "base" else '"salam", max_new_tokens=64)[0]["generated_text"]')
    lines += [f"python export.py {path}", "```", "", "## Load it", "",
              "With `pip install transformers` (no custom code), from this folder or its name on the hub:", "",
              "```python", "from transformers import pipeline", f'generate = pipeline("text-generation", "{folder}")',
              f"print(generate({ask})", "```", ""]
    return "\n".join(lines)


def load_path(path):
    return os.path.join(path, "best.pt") if os.path.isdir(path) else path


# --- the run --------------------------------------------------------------------------------------
def main():
    if len(CHECKPOINTS) != 1:
        fail("give one checkpoint: python export.py out/NAME [--out_dir=export/NAME] [--force]")
    path = CHECKPOINTS[0]
    folder = out_dir or os.path.join("export", folder_name(os.path.abspath(path)))
    check_output(folder)
    try:
        ckpt, tok, tok_path = load_with_tokenizer(path)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    try:
        from safetensors.torch import save_file
    except ImportError:
        fail("writing model.safetensors needs the safetensors package: pip install safetensors "
             "(and transformers to load the export)")
    c = check_mappable(ckpt)
    if tok.vocab_size > c.vocab_size:
        fail(f"the tokenizer has {tok.vocab_size} ids but the model only {c.vocab_size}: not a pair trained together")
    chat = ckpt["kind"] != "base"
    eos = "<|end|>" if chat and "<|end|>" in tok.special_tokens else "<|endoftext|>"
    eos_id = tok.special_tokens[eos]
    weights = hf_weights(ckpt["model"], c)
    config = hf_config(c, eos_id, tok.eot_id)
    generation = generation_config(tok, eos_id, chat)
    n_params = sum(w.numel() for name, w in weights.items() if not name.endswith("norm.weight"))
    card = model_card(folder_name(os.path.abspath(path)), folder, ckpt, path, tok, tok_path, c, n_params,
                      config["architectures"][0])

    claim(folder)
    partial = folder + ".partial"
    shutil.rmtree(partial, ignore_errors=True)  # a killed run's: never read
    os.makedirs(partial)
    save_file(weights, os.path.join(partial, "model.safetensors"), metadata={"format": "pt"})
    for name, content in [("config.json", config), ("generation_config.json", generation),
                          ("tokenizer.json", tokenizer_json(tok)),
                          ("tokenizer_config.json", tokenizer_config(tok, eos, c.block_size))]:
        with open(os.path.join(partial, name), "w", encoding="utf-8") as f:
            json.dump(content, f, ensure_ascii=False, indent=1)
    with open(os.path.join(partial, "README.md"), "w", encoding="utf-8") as f:
        f.write(card)
    if os.path.exists(folder):  # --force, checked above: an earlier export, nothing else
        shutil.rmtree(folder)
    os.replace(partial, folder)
    print(f"wrote {folder}/ ({config['architectures'][0]}, {n_params:,} parameters, eos {eos}): "
          f"load it with AutoModelForCausalLM.from_pretrained({folder!r}) and AutoTokenizer.from_pretrained")


if __name__ == "__main__":
    main()
