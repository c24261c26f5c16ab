"""Compute and cache C0 for a method's layers before editing, on one or several processes.

    python -m experiments.precompute_stats --alg_name=MEMIT --model_name=<hub id | folder | .gguf> \\
        --hparams_fname=Llama3-8B.json [--stats_dir=...] [--dtype=bfloat16]
    torchrun --nproc_per_node=8 -m experiments.precompute_stats --alg_name=MEMIT ...   # 8 GPUs (NCCL) or CPU (gloo)

Each process loads the model (on GPU ``LOCAL_RANK`` when there are GPUs), takes its share of the
corpus texts; the sums are all-reduced and rank 0 writes the cache files the editors then read
(the same key: same weights, tokenizer, corpus and mom2_* settings). An interrupted run started
again resumes from its last checkpoint.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--alg_name", required=True, help="method whose hparams name the layers and mom2_* settings")
    ap.add_argument("--model_name", required=True)
    ap.add_argument("--hparams_fname", required=True, help="file name under hparams/<ALG>/, or a path")
    ap.add_argument("--stats_dir", default=None, help="cache folder (default STATS_DIR in globals.yml)")
    ap.add_argument("--dtype", default="float32", help="the model's dtype (float32, bfloat16, float16)")
    ap.add_argument("--mom2_dataset", default=None, help="override the hparams' statistics corpus")
    ap.add_argument("--checkpoint_every", type=int, default=None, help="texts between checkpoints of the sums")
    ap.add_argument("--batch_tokens", type=int, default=None, help="padded tokens per forward batch")
    return ap.parse_args(argv)


def _start_processes() -> str | None:
    """Join the torchrun group when launched by it; the device this process computes on."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return None  # the loader's default


def main(argv: list[str] | None = None) -> dict[str, Path | None]:
    """Returns the cache file of each module."""
    import dataclasses

    from dsets import resolve_global_dir
    from experiments.algorithms import get_algorithm
    from experiments.runner import resolve_hparams_path
    from util.model_loading import load_model_and_tokenizer
    from util.second_moment import cached_second_moments, rank_and_world, stats_cache_paths

    args = parse_args(argv)
    device = _start_processes()
    if rank_and_world()[0] == 0:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    alg = get_algorithm(args.alg_name)
    path = resolve_hparams_path(alg.hparams_dir, args.hparams_fname, resolve_global_dir("HPARAMS_DIR"))
    model, tok = load_model_and_tokenizer(args.model_name, device=device, dtype=args.dtype)
    hp = alg.hparams_class.from_json(path).resolved_for(model)
    if not hasattr(hp, "mom2_dataset"):
        raise SystemExit(f"{args.alg_name} uses no covariance statistics (its hparams have no mom2_* keys)")
    if args.mom2_dataset:
        hp = dataclasses.replace(hp, mom2_dataset=args.mom2_dataset)
    names = [hp.rewrite_module(l) for l in hp.layers]
    stats_dir = resolve_global_dir("STATS_DIR", args.stats_dir)
    spec = hp.stats_spec()
    options = {k: v for k, v in (("checkpoint_every", args.checkpoint_every), ("batch_tokens", args.batch_tokens))
               if v is not None}
    try:
        cached_second_moments(model, tok, names, spec, stats_dir, progress=rank_and_world()[0] == 0, **options)
        paths = stats_cache_paths(model, tok, names, spec, stats_dir)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    for name, file in paths.items():
        log.info("C0 of %s: %s", name, file)
    return paths


if __name__ == "__main__":
    main()
