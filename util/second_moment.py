"""Uncentred second moments ``C0 = E[k k^T]`` of rewrite-module inputs over a corpus.

All requested modules are collected in one pass, stopping the forward after the last of them.
Sums and counts are kept separately so shards from several processes can be added.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from util.architectures import get_module, model_device
from util.atomic_files import save_torch_atomic
from util.hooks import capture, forward_until
from util.rewrite_weights import weight_d_by_f
from util.tokens import pad, pad_token_id


@dataclass
class SecondMomentStats:
    """Running ``sum k k^T`` and token count for one module."""

    total: torch.Tensor  # (f, f)
    count: int = 0

    @classmethod
    def empty(cls, dim: int, dtype: torch.dtype, device: torch.device) -> "SecondMomentStats":
        return cls(torch.zeros(dim, dim, dtype=dtype, device=device))

    def add(self, keys: torch.Tensor) -> None:
        """keys: (N, f), one row per token."""
        k = keys.to(self.total.dtype)
        self.total.addmm_(k.T, k)
        self.count += k.shape[0]

    def merge(self, other: "SecondMomentStats") -> None:
        self.total += other.total.to(self.total)
        self.count += other.count

    def mom2(self) -> torch.Tensor:
        if self.count == 0:
            raise ValueError("no tokens were collected; the corpus is empty")
        return self.total / self.count

    def state_dict(self) -> dict:
        return {"total": self.total.cpu(), "count": self.count}

    @classmethod
    def from_state_dict(cls, state: dict) -> "SecondMomentStats":
        return cls(state["total"], int(state["count"]))


@torch.no_grad()
def collect_second_moments(
    model: nn.Module,
    tok,
    module_names: Sequence[str],
    texts: Sequence[str],
    max_length: int,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> dict[str, SecondMomentStats]:
    """One pass over ``texts``; returns stats for every module in ``module_names`` (model order)."""
    device = model_device(model)
    stats = {
        name: SecondMomentStats.empty(weight_d_by_f(get_module(model, name)).shape[1], dtype, device)
        for name in module_names
    }
    last = _last_in_model_order(model, module_names)
    context = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    max_length = min(max_length, context) if context else max_length  # longer texts overrun positions
    encoded = [tok(t, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"] for t in texts]
    batches = list(_token_budget_batches(encoded, budget=3 * max_length))
    for batch in tqdm(batches, desc="covariance statistics", disable=not progress, unit="batch"):
        ids, mask = pad(batch, pad_token_id(tok))
        ids, mask = ids.to(device), mask.to(device)
        with capture(model, input_of=module_names) as seen:
            forward_until(model, last, input_ids=ids, attention_mask=mask)
        real = mask.bool()
        for name in module_names:
            stats[name].add(seen.inputs[name][real])  # every non-padding token
    return stats


def _token_budget_batches(encoded: list[list[int]], budget: int):
    batch: list[list[int]] = []
    for ids in encoded:
        if batch and (len(batch) + 1) * max(len(ids), max(map(len, batch))) > budget:
            yield batch
            batch = []
        batch.append(ids)
    if batch:
        yield batch


def _last_in_model_order(model: nn.Module, names: Sequence[str]) -> str:
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return max(names, key=lambda n: order[n])


def model_fingerprint(model: nn.Module, module_names: Sequence[str]) -> str:
    """Identifies the weights the statistics describe (name alone can hide a fine-tune)."""
    h = hashlib.sha1(str(getattr(model.config, "_name_or_path", "")).encode())
    for name in module_names:
        w = weight_d_by_f(get_module(model, name))
        h.update(name.encode() + str(tuple(w.shape)).encode())
        h.update(w.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def stats_cache_paths(
    model: nn.Module,
    module_names: Sequence[str],
    corpus: str,
    n_samples: int,
    max_length: int,
    dtype: torch.dtype,
    cache_dir: str | Path | None,
) -> dict[str, Path | None]:
    """Where C0 of each module is cached (None without a cache folder). Derived statistics (e.g.
    AlphaEdit's projectors) are stored next to these files. Each file is keyed by its own module's
    weights, so methods editing different layer sets (ROME's one, MEMIT's five) share it."""
    from util.corpus import corpus_id

    if cache_dir is None:
        return {n: None for n in module_names}
    model_name = _safe(str(getattr(model.config, "_name_or_path", "") or model.config.model_type))
    folder = Path(cache_dir) / model_name / _safe(corpus_id(corpus))
    dtype_name = str(dtype).removeprefix("torch.")
    return {n: folder / f"{_safe(n)}-{model_fingerprint(model, [n])}_{dtype_name}_{n_samples}_{max_length}.pt"
            for n in module_names}


def cached_second_moments(
    model: nn.Module,
    tok,
    module_names: Sequence[str],
    corpus: str,
    n_samples: int,
    max_length: int,
    dtype: torch.dtype,
    cache_dir: str | Path | None,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """``C0`` per module, from the disk cache when present; only missing modules are collected."""
    from util.corpus import load_corpus_texts

    path_of = stats_cache_paths(model, module_names, corpus, n_samples, max_length, dtype, cache_dir)
    result: dict[str, torch.Tensor] = {}
    device = model_device(model)
    for name, path in path_of.items():
        if path is not None and path.is_file():
            result[name] = SecondMomentStats.from_state_dict(torch.load(path, weights_only=True)).mom2().to(device)
    missing = [n for n in module_names if n not in result]
    if missing:
        texts = load_corpus_texts(corpus, n_samples)
        stats = collect_second_moments(model, tok, missing, texts, max_length, dtype, progress)
        for name, s in stats.items():
            if path_of[name] is not None:
                save_torch_atomic(s.state_dict(), path_of[name])
            result[name] = s.mom2()
    return result
