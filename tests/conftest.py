"""Shared test set-up: the project root on sys.path, offline tiktoken, the shared data folder."""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))

# tiktoken downloads its rank files unless they are cached; ../shared holds a cache for offline machines.
if (SHARED / "tiktoken_cache").is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken_cache"))
