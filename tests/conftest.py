"""Shared test set-up: the repo root on sys.path, and the offline stand-ins from ../shared."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))

# tiktoken's own cache variable: get_encoding("gpt2") works with no network
if (SHARED / "tiktoken_cache").is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken_cache"))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def shakespeare_text():
    path = SHARED / "data" / "tinyshakespeare" / "input.txt"
    if not path.exists():
        pytest.skip(f"{path} not found (the offline Tiny Shakespeare stand-in)")
    return path
