"""runs/darija_gpu.sh --tiny: the whole run (prepare -> pretrain -> SFT from the hub -> eval -> export ->
chat) in a fresh copy of the project, offline: the hub is a local server (conftest.Hub) serving
MBZUAI-Paris/Darija-SFT-Mixture as two small parquet files in its real shape. Checks what each step
leaves on disk, then that a second run skips the finished steps and continues an interrupted
pretrain. The export step's checks come last, with the chat sample that follows it. Marked slow
(a few minutes on 2 CPU cores): python -m pytest -m slow tests/test_runs.py"""
import json
import os
import shutil
import subprocess

import pytest

from conftest import ROOT, sft_mixture_parquet
from model import load_checkpoint


def mixture():
    """Darija-SFT-Mixture's two parquet files, made of requests on the project's sample pairs."""
    pairs = [json.loads(line) for line in (ROOT / "data/sample/sft/pairs.jsonl").read_text("utf-8").splitlines()]
    chats = [[{"role": "user", "content": f"tarjem l darija: {p['eng']}"}, {"role": "assistant", "content": p["darija"]}]
             for p in pairs[:300]]
    return {"data/train-00000-of-00002.parquet": sft_mixture_parquet(chats[:150]),
            "data/train-00001-of-00002.parquet": sft_mixture_parquet(chats[150:]), "README.md": b"license: odc-by\n"}


def run_script(work, hub_url):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env |= {"HF_ENDPOINT": hub_url, "HF_HOME": str(work / "hf_home"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", "runs/darija_gpu.sh", "--tiny"], cwd=work, env=env, capture_output=True, text=True,
                          encoding="utf-8", timeout=1500)


@pytest.mark.slow
def test_tiny_run_offline_against_a_local_hub(tmp_path, hub):
    for path in [*ROOT.glob("*.py"), ROOT / "config", ROOT / "runs", ROOT / "data/sample"]:  # a clean checkout
        target = tmp_path / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if path.is_dir() else shutil.copy2)(path, target)
    hub.datasets["MBZUAI-Paris/Darija-SFT-Mixture"] = mixture()
    r = run_script(tmp_path, hub.url)
    logs = tmp_path / "logs/darija_tiny"
    # 1. prepare: the sample corpus, tokenized
    meta = json.loads((tmp_path / "data/darija_tiny/meta.json").read_text("utf-8"))
    assert meta["train"]["tokens"] > 0 and (logs / "1_prepare.done").exists()
    # 2. pretrain: a base checkpoint
    assert load_checkpoint(str(tmp_path / "out/darija_tiny"))["kind"] == "base" and (logs / "2_pretrain.done").exists()
    # 3. SFT from the hub: its dataset holds the mixture's rows, and an sft checkpoint came of it
    stats = json.loads((tmp_path / "data/sft/darija_tiny_hub/stats.json").read_text("utf-8"))
    assert stats["sources"][0]["hub"] == "MBZUAI-Paris/Darija-SFT-Mixture" and stats["sources"][0]["items"] == 300
    assert load_checkpoint(str(tmp_path / "out/darija_tiny_hub_sft"))["kind"] == "sft" and (logs / "3_sft.done").exists()
    assert any("/datasets/MBZUAI-Paris/Darija-SFT-Mixture/resolve/" in path for path, _ in hub.seen)
    # 4. eval: one report on the base and the fine-tuned model
    report = json.loads((tmp_path / "reports/darija_tiny_hub_sft/report.json").read_text("utf-8"))
    assert [c["path"] for c in report["checkpoints"]] == ["out/darija_tiny", "out/darija_tiny_hub_sft"]
    assert (tmp_path / "reports/darija_tiny_hub_sft/report.md").exists() and (logs / "4_eval.done").exists()
    assert "== 3_sft: python sft.py config/sft_tiny_hub.py\n" in r.stdout  # a first run: nothing to continue
    # a second run skips what is done; without 2_pretrain.done, the pretrain continues from its last.pt
    (logs / "2_pretrain.done").unlink()
    again = run_script(tmp_path, hub.url)
    assert "== 1_prepare: done already" in again.stdout and "== 4_eval: done already" in again.stdout
    assert "== 2_pretrain: python pretrain.py config/darija_tiny.py --init_from=resume\n" in again.stdout
    assert (logs / "2_pretrain.done").exists()
    # 5. export, then 6. the chat sample (export.py writes export/NAME/)
    assert r.returncode == 0 and again.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (logs / "5_export.done").exists() and any((tmp_path / "export/darija_tiny_hub_sft").iterdir())
    answer = (logs / "6_chat.log").read_text("utf-8").strip()
    assert answer and (logs / "6_chat.done").exists() and "done: the report card is" in r.stdout
