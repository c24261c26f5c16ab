"""Where C0 is cached, and what the cache is keyed by.

A cache file is keyed by what the statistics depend on, never by how the model path was spelled:

- the weights that feed the module's input: every parameter and buffer of the model except those
  of the decoder layers after the module's own (embeddings, earlier layers, the module's layer,
  and, for simplicity, the final norm and LM head, which no key depends on: over-keying costs a
  recomputation, under-keying would reuse wrong statistics). The whole tensors are hashed.
- the tokenizer (vocabulary, special tokens, and the ids of a probe text, which show BOS/EOS);
- the corpus content (:class:`util.corpus.CorpusRef`: the texts used, or hub name + sample size);
- the settings: module, max length (after clamping to the context), accumulation dtype, and
  :data:`FORMAT` (bumped when the collection procedure changes what it computes).

Layout, all names visible: ``<cache_dir>/<model label>/<module>_<corpus label>-<n>x<len>-<dtype>-<key>.pt``
with a ``.json`` of the same stem describing what it was computed from. The model label (the last
part of the model's path) is only for people browsing; a lookup finds the key under any label.
Partial sums of an interrupted pass sit beside them as ``partial-<key>.pt``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from util.corpus import CorpusRef
from util.stats_spec import StatsSpec

log = logging.getLogger(__name__)

FORMAT = 2  # 1: keyed by model path (before); 2: content keys, BOS kept, padding excluded
PROBE_TEXT = "The statistics cache key: 123 tokens, é ü."


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    key: dict  # everything the digest covers (also written to the JSON beside the file)

    @property
    def meta_path(self) -> Path:
        return self.path.with_suffix(".json")


def safe_name(text: str) -> str:
    """A plain file-name part: letters, digits, ``._-``; no leading dots."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-") or "model"


def model_label(model: nn.Module) -> str:
    path = str(getattr(model.config, "_name_or_path", "") or "").rstrip("/\\")
    return safe_name(Path(path).name if path else model.config.model_type)


def _tensor_digest(name: str, tensor: torch.Tensor) -> str:
    t = tensor.detach()
    h = hashlib.sha256(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
    if not t.is_meta:  # offloaded to disk by accelerate: only name, dtype and shape to go by
        h.update(t.contiguous().reshape(-1).view(torch.uint8).cpu().numpy())
    return h.hexdigest()


def tensor_digests(model: nn.Module, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """SHA-256 of each parameter and buffer (whole tensor) whose name does not start with ``skip``."""
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    return {name: _tensor_digest(name, t) for name, t in tensors if not name.startswith(skip)}


def _later_layers_prefixes(model: nn.Module, module_name: str) -> list[str]:
    """Name prefixes of the decoder layers after the one holding ``module_name`` (its nearest
    ModuleList ancestor); empty for a module outside any layer stack."""
    parts = module_name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        stack = model.get_submodule(".".join(parts[:i]))
        if isinstance(stack, nn.ModuleList) and parts[i].isdigit():
            base = ".".join(parts[:i])
            return [f"{base}.{j}." for j in range(int(parts[i]) + 1, len(stack))]
    return []


def weights_digest(model: nn.Module, module_name: str, digests: dict[str, str] | None = None) -> str:
    """SHA-256 of the parameters and buffers the module's input can depend on (see module doc).
    ``digests``: :func:`tensor_digests` computed once for several modules."""
    later = tuple(_later_layers_prefixes(model, module_name))
    digests = digests if digests is not None else tensor_digests(model, later)
    h = hashlib.sha256(model.config.model_type.encode())
    for name, digest in digests.items():
        if not name.startswith(later):  # startswith(()) is False: all kept
            h.update(f"{name}={digest};".encode())
    return h.hexdigest()


def tokenizer_digest(tok) -> str:
    vocab = sorted(tok.get_vocab().items())
    probe = tok(PROBE_TEXT, add_special_tokens=True)["input_ids"]
    special = {k: str(v) for k, v in sorted(tok.special_tokens_map.items())}
    payload = json.dumps([type(tok).__name__, vocab, probe, special], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


# Texts are cut here when the model's config names no context length (the original would fail).
FALLBACK_CONTEXT = 2048


def original_context_length(config) -> int:
    """Where the original's layer_stats cuts a text: Mistral at its sliding window (or 4096), Qwen2 at
    4096, any other model at the first of n_positions, max_sequence_length, max_position_embeddings,
    seq_length its config has."""
    config = config.get_text_config()
    if config.model_type == "mistral":
        return getattr(config, "sliding_window", None) or 4096
    if config.model_type == "qwen2":
        return 4096
    for name in ("n_positions", "max_sequence_length", "max_position_embeddings", "seq_length"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    return FALLBACK_CONTEXT


def effective_max_length(model: nn.Module, max_length: int | None) -> int:
    """Texts are cut at ``max_length`` (None: as the original) and never past the model's positions."""
    context = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    wanted = original_context_length(model.config) if max_length is None else max_length
    return min(wanted, context) if context else wanted


def digest_of(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def stats_cache_entries(
    model: nn.Module,
    tok,
    module_names: Sequence[str],
    spec: StatsSpec,
    corpus: CorpusRef,
    cache_dir: str | Path | None,
) -> dict[str, CacheEntry | None]:
    """The cache entry of each module (None without a cache folder): an existing file with the
    same key under any model label, else the path a new one gets. ``corpus``: ``spec``'s corpus as
    resolved once by the caller (a local one is read to be keyed; the pass reads the same texts)."""
    if cache_dir is None:
        return {n: None for n in module_names}
    cache_dir = Path(cache_dir)
    tokenizer = tokenizer_digest(tok)
    after_all = set.intersection(*(set(_later_layers_prefixes(model, n)) for n in module_names))
    digests = tensor_digests(model, tuple(sorted(after_all)))  # each tensor hashed once for all modules
    length = effective_max_length(model, spec.max_length)
    dtype_name = spec.dtype
    entries = {}
    for name in module_names:
        key = {"format": FORMAT, "module": name, "weights_sha256": weights_digest(model, name, digests),
               "tokenizer_sha256": tokenizer, "corpus": corpus.key, "max_length": length, "mom2_dtype": dtype_name}
        digest = digest_of(key)
        stem = f"{safe_name(name)}_{safe_name(corpus.label)}-{corpus.n_samples}x{length}-{dtype_name}-{digest}"
        found = sorted(cache_dir.glob(f"*/*-{digest}.pt"))
        entries[name] = CacheEntry(found[0] if found else cache_dir / model_label(model) / f"{stem}.pt", key)
    return entries


def partial_path(entries: Sequence[CacheEntry]) -> Path:
    """Where the partial sums of one pass over these modules are checkpointed."""
    digest = digest_of({"modules": sorted(e.path.stem for e in entries)})
    return entries[0].path.parent / f"partial-{digest}.pt"
