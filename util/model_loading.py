"""Load a causal LM and its tokenizer from a hub id, a local folder or a ``.gguf`` file."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Files a Hugging Face tokenizer can be built from; a model folder with none of them has no tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json", "spiece.model")
# The tokenizer warns once when it encodes more ids than the model takes. The harness never feeds such a
# sequence: it truncates by a stated rule (downstream prompts, essence snippets, statistics texts) or
# refuses the record before the run (util.context_fit), so the warning cannot apply.
_LENGTH_WARNING = "sequence-length-is-longer-than-the-specified-maximum"


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says what to pass instead."""


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ModelLoadError(f"--dtype={dtype!r} is not one of {', '.join(DTYPES)}")


def check_device(name: str | None) -> str:
    """``name`` (or the default device) if it exists here; otherwise a ModelLoadError saying what does."""
    if name is None:
        return default_device()
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ModelLoadError(f"--device={name!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"--device={name}: CUDA is not available here (torch {torch.__version__}, "
                             f"built for CUDA {torch.version.cuda or 'none'}); use --device=cpu or leave it out")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ModelLoadError(f"--device={name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"numbered from 0")
    mps = getattr(torch.backends, "mps", None)
    if device.type == "mps" and not (mps is not None and mps.is_available()):
        raise ModelLoadError(f"--device={name}: MPS is not available here; use --device=cpu or leave it out")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ModelLoadError(f"--device={name}: only cpu, cuda[:N] and mps are supported")
    return name


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else can only mean a local path."""
    owner = name.split("/", 1)[0] if "/" in name else None
    return (os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or name.endswith("/")
            or "\\" in name or (owner is not None and Path(owner).expanduser().is_dir()))  # "assets/typo"


def check_model_source(name: str) -> None:
    """A local model that cannot load fails here, before any work: a missing folder or file, a folder
    without ``config.json`` or without tokenizer files."""
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"--model_name: GGUF file {path} does not exist")
        return
    if not path.exists():
        if _looks_like_path(name):
            raise ModelLoadError(f"--model_name: model folder {name} does not exist; check the path")
        return  # a hub id
    if not path.is_dir():
        raise ModelLoadError(f"--model_name={name} is a file; pass a model folder (with config.json) or a .gguf file")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"--model_name: {path} holds no config.json, so it is not a Hugging Face model folder; "
                             "pass the folder that save_pretrained wrote")
    try:
        json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"--model_name: {path / 'config.json'} is not valid JSON ({err}); the file is damaged: "
                             "copy or download it again") from None
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ModelLoadError(f"--model_name: {path} holds no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
                             "copy the tokenizer of the model into it (tokenizer.save_pretrained)")


def _load_error(name: str, part: str, err: BaseException) -> ModelLoadError:
    detail = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
    if Path(name).expanduser().exists():
        return ModelLoadError(f"could not read the {part} in {name} ({detail}); the files are damaged or "
                              "incomplete: copy or download them again")
    return ModelLoadError(f"could not load model {name!r} as a Hugging Face hub id, and no local folder of that "
                          f"name exists ({detail}). Offline, pass --model_name=<local folder with config.json> "
                          "or <file>.gguf")


def load_model_and_tokenizer(name: str, device: str | None = None, dtype: str = "float32",
                             device_map: str | None = None):
    """(model in eval mode on ``device``, or spread by accelerate's ``device_map``; tokenizer with a pad token)."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_dtype(dtype)
    device = check_device(device)
    check_model_source(name)
    path = Path(name).expanduser()
    kwargs: dict = {}
    if path.suffix == ".gguf":
        source, kwargs["gguf_file"] = str(path.parent), path.name
    else:
        source = str(path) if path.exists() else name
    try:
        tok = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        raise _load_error(name, "tokenizer", err) from None
    try:
        if device_map is not None:
            kwargs["device_map"] = check_device_map(device_map)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype], **kwargs)
    except torch.OutOfMemoryError:
        raise  # not a damaged file
    # a damaged weights file surfaces as any of these, depending on its format (torch's zip reader: RuntimeError)
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError) as err:
        raise _load_error(name, "model weights", err) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # padding is always masked; Llama-style tokenizers have none
    if isinstance(getattr(tok, "deprecation_warnings", None), dict):
        tok.deprecation_warnings[_LENGTH_WARNING] = True  # marks it as shown: see _LENGTH_WARNING
    if device_map is None:
        model = model.to(device)
    return model.eval(), tok


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's placement strategies


def check_device_map(device_map: str) -> str:
    if device_map not in DEVICE_MAPS:
        raise ModelLoadError(f"--device_map={device_map!r} is not one of {', '.join(DEVICE_MAPS)}")
    return device_map
