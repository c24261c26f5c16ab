"""Uncentred second moments ``C0 = E[k k^T]`` of rewrite-module inputs over a corpus.

All requested modules are collected in one pass, stopping the forward before the last of them
runs (its input is all that is read: no later layers, no LM head). The model runs in its own dtype; the sums accumulate in the
statistics dtype on the device of the module they belong to. Sums and counts are kept apart so
shards add up: under ``torch.distributed`` (world size > 1) each rank takes ``texts[rank::world]``
of every chunk and the sums are all-reduced. Every ``checkpoint_every`` texts the partial sums
are saved (atomically, by rank 0), so a killed pass resumes where it stopped.

Precompute on several processes/GPUs before editing:
``torchrun --nproc_per_node=N -m experiments.precompute_stats --alg_name=MEMIT --model_name=... --hparams_fname=...``
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from util.architectures import get_module
from util.atomic_files import save_torch_atomic, write_json_atomic
from util.hooks import capture, forward_until
from util.rewrite_weights import weight_d_by_f
from util.stats_cache import CacheEntry, effective_max_length, partial_path, stats_cache_entries
from util.stats_spec import StatsSpec
from util.tokens import pad, pad_token_id

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT_EVERY = 10_000  # texts; a checkpoint writes (f x f) sums per module
DEFAULT_BATCH_TOKENS = 4096  # padded tokens per forward batch


@dataclass
class SecondMomentStats:
    """Running ``sum k k^T`` and token count for one module."""

    total: torch.Tensor  # (f, f)
    count: int = 0

    @classmethod
    def empty(cls, dim: int, dtype: torch.dtype, device: torch.device) -> "SecondMomentStats":
        return cls(torch.zeros(dim, dim, dtype=dtype, device=device))

    def add(self, keys: torch.Tensor) -> None:
        """keys: (N, f), one row per token; one matmul, in the statistics dtype, on its device."""
        k = keys.to(self.total.device, self.total.dtype)
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


# -- distributed ----------------------------------------------------------------------------------
def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce_stats(stats: dict[str, SecondMomentStats]) -> None:
    """Sum every rank's sums and counts into each rank's (gloo reduces CPU tensors only)."""
    on_cpu = dist.get_backend() == "gloo"
    for s in stats.values():
        total = s.total.cpu() if on_cpu else s.total
        dist.all_reduce(total)
        if total is not s.total:
            s.total.copy_(total)
        count = torch.tensor([s.count], dtype=torch.float64, device=total.device)
        dist.all_reduce(count)
        s.count = int(count.item())


def _broadcast_int(value: int) -> int:
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return int(box[0])


# -- the pass -----------------------------------------------------------------------------------
@torch.no_grad()
def collect_second_moments(
    model: nn.Module,
    tok,
    module_names: Sequence[str],
    texts: Sequence[str],
    max_length: int | None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    *,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    checkpoint: Path | None = None,
    checkpoint_every: int | None = DEFAULT_CHECKPOINT_EVERY,
) -> dict[str, SecondMomentStats]:
    """One pass over ``texts``; stats for every module (on its device), summed over all ranks.

    ``checkpoint``: file for partial sums (saved every ``checkpoint_every`` texts, resumed from
    when present; the caller deletes it once the result is stored). Chunk boundaries stay at
    multiples of ``checkpoint_every``, so a resumed pass batches exactly as an unbroken one.
    """
    rank, world = rank_and_world()
    stats = {name: SecondMomentStats.empty(_key_dim(model, name), dtype, _module_device(model, name))
             for name in module_names}
    last = _last_in_model_order(model, module_names)
    max_length = effective_max_length(model, max_length)
    done = _resume(checkpoint, stats, len(texts), rank, world) if checkpoint is not None else 0
    chunk = checkpoint_every or max(len(texts), 1)  # with or without a checkpoint file: the same batches
    meter = _Progress(len(texts), done, world, enabled=rank == 0, bar=progress)
    for start in range(done, len(texts), chunk):
        end = min(start + chunk, len(texts))
        mine = list(texts[start:end])[rank::world]
        for n_texts, ids, mask in _batches(tok, mine, max_length, batch_tokens):
            _accumulate(model, stats, module_names, last, ids, mask)
            meter.advance(n_texts, int(mask.sum()))
        if checkpoint is not None and end < len(texts):
            _save_checkpoint(checkpoint, stats, end, len(texts), rank, world)
    if world > 1:
        _all_reduce_stats(stats)
    meter.close(stats[module_names[0]].count)
    return stats


def _key_dim(model: nn.Module, name: str) -> int:
    return weight_d_by_f(get_module(model, name)).shape[1]


def _module_device(model: nn.Module, name: str) -> torch.device:
    """C0 lives where its module's weight does (a model split over devices has several)."""
    return weight_d_by_f(get_module(model, name)).device


def _accumulate(model: nn.Module, stats: dict[str, SecondMomentStats], names: Sequence[str], last: str,
                ids: torch.Tensor, mask: torch.Tensor) -> None:
    device = next(model.parameters()).device  # where the embeddings take their input
    with torch.inference_mode(), capture(model, input_of=names) as seen:
        # only the last module's input is needed: stop before it runs
        forward_until(model, last, stop_before=True, input_ids=ids.to(device), attention_mask=mask.to(device))
    real = mask.bool()
    for name in names:
        keys = seen.inputs[name]
        stats[name].add(keys[real.to(keys.device)])  # every non-padding token


def _batches(tok, texts: list[str], max_length: int, batch_tokens: int):
    """(number of texts, ids, mask) batches of at most ``batch_tokens`` padded tokens; texts are
    sorted by length first, so little of a batch is padding."""
    if not texts:
        return
    encoded = tok(texts, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
    encoded = sorted((ids for ids in encoded if ids), key=len, reverse=True)
    pad_id = pad_token_id(tok)
    batch: list[list[int]] = []
    for ids in encoded:  # longest first: the first row of a batch sets its width
        if batch and (len(batch) + 1) * len(batch[0]) > batch_tokens:
            yield (len(batch), *pad(batch, pad_id))
            batch = []
        batch.append(ids)
    if batch:
        yield (len(batch), *pad(batch, pad_id))


def _last_in_model_order(model: nn.Module, names: Sequence[str]) -> str:
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return max(names, key=lambda n: order[n])


# -- checkpoints ------------------------------------------------------------------------------------
def _save_checkpoint(path: Path, stats: dict[str, SecondMomentStats], done: int, n_texts: int,
                     rank: int, world: int) -> None:
    """Rank 0 saves the sums over all ranks; the other ranks restart theirs from zero."""
    if world > 1:
        _all_reduce_stats(stats)
        if rank != 0:
            for s in stats.values():
                s.total.zero_()
                s.count = 0
    if rank == 0:
        state = {"texts_done": done, "n_texts": n_texts, "stats": {n: s.state_dict() for n, s in stats.items()}}
        save_torch_atomic(state, path)
        log.info("statistics checkpoint: %d/%d texts in %s", done, n_texts, path)


def _resume(path: Path, stats: dict[str, SecondMomentStats], n_texts: int, rank: int, world: int) -> int:
    """Texts already summed in the checkpoint (loaded into rank 0's stats), or 0."""
    done = _load_checkpoint(path, stats, n_texts) if rank == 0 else 0
    return _broadcast_int(done) if world > 1 else done


def _load_checkpoint(path: Path, stats: dict[str, SecondMomentStats], n_texts: int) -> int:
    if not path.is_file():
        return 0
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
        saved = {n: SecondMomentStats.from_state_dict(state["stats"][n]) for n in stats}
        if state["n_texts"] != n_texts or any(saved[n].total.shape != stats[n].total.shape for n in stats):
            raise ValueError(f"it was taken over {state['n_texts']} texts or other modules")
    except Exception as err:  # truncated file, other pass: start over rather than fail forever
        log.warning("statistics checkpoint %s is unusable (%s: %s); starting the pass from the first text",
                    path, type(err).__name__, err)
        return 0
    for name, s in stats.items():
        s.merge(saved[name])
    log.info("resuming the statistics pass from %s: %d/%d texts already summed", path, state["texts_done"], n_texts)
    return int(state["texts_done"])


class _Progress:
    """A tqdm bar plus a log line every ~5% of the texts (rank 0 only; counts are its own
    tokens, texts are estimated for all ranks)."""

    def __init__(self, n_texts: int, done: int, world: int, enabled: bool, bar: bool) -> None:
        self.n, self.done, self.world, self.enabled = n_texts, done, world, enabled
        self.start_done, self.tokens, self.t0 = done, 0, time.perf_counter()
        self.every = max(1, n_texts // 20)
        self.next_log = done + self.every
        self.bar = tqdm(total=n_texts, initial=done, desc="C0 statistics", unit="text",
                        disable=not (enabled and bar))
        if enabled:
            log.info("statistics pass: %d texts (%d already summed), %d process(es)", n_texts, done, world)

    def advance(self, n_texts: int, tokens: int) -> None:
        self.done = min(self.n, self.done + n_texts * self.world)
        self.tokens += tokens
        self.bar.update(n_texts * self.world)
        if self.enabled and self.done >= self.next_log:
            self.next_log = self.done + self.every
            rate = self.tokens / max(time.perf_counter() - self.t0, 1e-9)
            left = (self.n - self.done) / max(self.done - self.start_done, 1) * (time.perf_counter() - self.t0)
            log.info("statistics pass: %d/%d texts (%.0f%%), %.0f tokens/s per process, ~%.0f s left",
                     self.done, self.n, 100 * self.done / self.n, rate, left)

    def close(self, total_tokens: int) -> None:
        self.bar.close()
        if self.enabled:
            seconds = time.perf_counter() - self.t0
            log.info("statistics pass done: %d tokens in all, %.1f s for this run's part", total_tokens, seconds)


# -- the cache ------------------------------------------------------------------------------------------
def stats_cache_paths(
    model: nn.Module,
    tok,
    module_names: Sequence[str],
    spec: StatsSpec,
    cache_dir: str | Path | None,
) -> dict[str, Path | None]:
    """Where C0 of each module is cached (None without a cache folder). Derived statistics (e.g.
    AlphaEdit's projectors) are stored next to these files. Each file is keyed by its own module
    (see util/stats_cache.py), so methods editing different layer sets share it."""
    from util.corpus import resolve_corpus

    entries = stats_cache_entries(model, tok, module_names, spec, resolve_corpus(spec.corpus, spec.n_samples), cache_dir)
    return {n: e.path if e is not None else None for n, e in entries.items()}


def cached_second_moments(
    model: nn.Module,
    tok,
    module_names: Sequence[str],
    spec: StatsSpec,
    cache_dir: str | Path | None,
    progress: bool = True,
    *,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    checkpoint_every: int | None = DEFAULT_CHECKPOINT_EVERY,
) -> dict[str, torch.Tensor]:
    """``C0`` per module, on the module's device: from the disk cache when a readable file with the
    same key is there; the missing modules are collected in one pass (a local corpus is read,
    and checked, before the model is run)."""
    from util.corpus import resolve_corpus

    ref = resolve_corpus(spec.corpus, spec.n_samples)
    entries = stats_cache_entries(model, tok, module_names, spec, ref, cache_dir)
    result: dict[str, torch.Tensor] = {}
    for name, entry in entries.items():
        loaded = _load_cached(entry, _key_dim(model, name)) if entry is not None else None
        if loaded is not None:
            result[name] = loaded.mom2().to(_module_device(model, name))
    missing = [n for n in module_names if n not in result]
    if not missing:
        return result
    paths = [entries[n] for n in missing if entries[n] is not None]
    checkpoint = partial_path(paths) if paths else None
    log.info("collecting C0 for %s over %s (%d samples, max length %d, %s)%s", ", ".join(missing), spec.corpus,
             spec.n_samples, effective_max_length(model, spec.max_length), spec.dtype,
             f"; cache {paths[0].path.parent}" if paths else "")
    start = time.perf_counter()
    stats = collect_second_moments(model, tok, missing, ref.load(), spec.max_length, spec.torch_dtype, progress,
                                   batch_tokens=batch_tokens, checkpoint=checkpoint, checkpoint_every=checkpoint_every)
    if rank_and_world()[0] == 0 and paths:
        for name in missing:
            _store(entries[name], stats[name], ref, model, time.perf_counter() - start)
        checkpoint.unlink(missing_ok=True)
    for name in missing:
        result[name] = stats[name].mom2()
    return result


def _load_cached(entry: CacheEntry, dim: int) -> SecondMomentStats | None:
    """The cached sums, or None when absent or unreadable (a truncated file is named, then
    recomputed and overwritten, never an error forever)."""
    if not entry.path.is_file():
        return None
    try:
        s = SecondMomentStats.from_state_dict(torch.load(entry.path, weights_only=True, map_location="cpu"))
        if tuple(s.total.shape) != (dim, dim) or s.count <= 0:
            raise ValueError(f"holds a {tuple(s.total.shape)} sum over {s.count} tokens, expected ({dim}, {dim})")
    except Exception as err:
        log.warning("statistics cache file %s is unreadable (%s: %s); recomputing it", entry.path,
                    type(err).__name__, str(err)[:200])
        return None
    return s


def _store(entry: CacheEntry, stats: SecondMomentStats, ref, model: nn.Module, seconds: float) -> None:
    save_torch_atomic(stats.state_dict(), entry.path)
    meta = {"key": entry.key, "corpus_source": ref.about, "n_samples": ref.n_samples,
            "model_name_or_path": str(getattr(model.config, "_name_or_path", "")), "tokens": stats.count,
            "processes": rank_and_world()[1], "seconds": round(seconds, 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json_atomic(entry.meta_path, meta)
    log.info("C0 of %s (%d tokens) written to %s", entry.key["module"], stats.count, entry.path)


def model_fingerprint(model: nn.Module, module_names: Sequence[str]) -> str:
    """A short id of the model and the named modules' weights (the value cache's model key)."""
    h = hashlib.sha1(str(getattr(model.config, "_name_or_path", "")).encode())
    for name in module_names:
        w = weight_d_by_f(get_module(model, name))
        h.update(name.encode() + str(tuple(w.shape)).encode())
        h.update(w.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]
