"""Shared fixtures: the data and tiny real Llama shipped in assets/, and no network."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")



@pytest.fixture(scope="session")
def tiny_llama_path() -> Path:
    from helpers import TINY_LLAMA

    return TINY_LLAMA


@pytest.fixture()
def tiny_llama(tiny_llama_path: Path):
    """A fresh (model, tokenizer) pair of stories260K per test: edits must not leak between tests."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


@pytest.fixture(autouse=True, scope="session")
def no_downloads():
    """Tests never reach the network: a missing data file behaves as it does offline.

    Session-scoped so it is in place before module-scoped fixtures (whole CLI runs) start."""
    import dsets.data_dir

    real = dsets.data_dir.download_file

    def offline(url, dest):
        if url.startswith("file://"):  # local files exercise the real download path
            return real(url, dest)
        raise OSError(f"network disabled in tests (would fetch {url})")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dsets.data_dir, "download_file", offline)
        yield
