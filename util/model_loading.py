"""Load a causal LM and its tokenizer from a hub id, a local folder or a ``.gguf`` file."""
from __future__ import annotations

from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says what to pass instead."""


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def load_model_and_tokenizer(name: str, device: str | None = None, dtype: str = "float32"):
    """(model in eval mode on ``device``, tokenizer with a pad token)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ModelLoadError(f"--dtype={dtype!r} is not one of {sorted(DTYPES)}")
    path = Path(name).expanduser()
    kwargs: dict = {}
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist")
        source, kwargs["gguf_file"] = str(path.parent), path.name
    else:
        source = str(path) if path.exists() else name
    try:
        tok = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype], **kwargs)
    except (OSError, ValueError) as err:
        where = "local folder" if path.exists() else "Hugging Face hub id"
        raise ModelLoadError(
            f"could not load model {name!r} as a {where} ({type(err).__name__}: {str(err)[:300]}). "
            "Offline, pass --model_name=<local folder with config.json> or <file>.gguf"
        ) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # padding is always masked; Llama-style tokenizers have none
    model = model.to(device or default_device()).eval()
    return model, tok
