"""The unedited model's teacher-forced metrics on the first N protocol records, at the curve points.

    python bench/pre_edit_curve.py [--n 2000] [--every 500] [--out bench/results/stream/pre_edit_curve.json]
    python bench/pre_edit_curve.py --n 1000 --every 500 --generation_eval --out bench/results/frontier/pre_edit_generation.json
    python bench/pre_edit_curve.py --model_name data/models/gemma-3-270m-q4_k_m.gguf --n 1000 --every 500 \
        --generation_eval --out bench/results/gemma3/pre_edit_generation.json

The baseline the protocol's curves start from: SmolLM2-135M fp32 (or ``--model_name``, loaded as
``experiments.evaluate`` loads it) scores the first 500, 1000, 1500
and 2000 CounterFact records (the cases a curve point of the stream covers) before any edit, with
the scorer the runs use (experiments.case_scoring). Writes the summary of each prefix and every
case's metrics. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from provenance import Provenance  # noqa: E402
from smollm2 import load_model  # noqa: E402

from experiments.case_scoring import CaseScorer  # noqa: E402
from experiments.metrics.summary import summarize_cases  # noqa: E402

DATA = ROOT / "assets" / "counterfact_test2191_first2000.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--every", type=int, default=500)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/stream/pre_edit_curve.json")
    ap.add_argument("--generation_eval", action="store_true", help="add the generation-based metrics")
    ap.add_argument("--model_name", default=None, help="hub id, folder or .gguf (default: SmolLM2-135M's wheel)")
    args = ap.parse_args()
    stamp = Provenance.start(__file__)
    model, tok = load_model(args.model_name)
    records = json.loads(DATA.read_text())[: args.n]
    scorer = CaseScorer(model, tok, "mcf", generation_eval=args.generation_eval)
    start = time.perf_counter()
    posts = [post for _, _, post in scorer.score(list(enumerate(records)))]
    seconds = time.perf_counter() - start
    points = []
    for n in range(args.every, args.n + 1, args.every):
        summary = summarize_cases(posts[:n], "counterfact")
        points.append({"n_cases": n, "summary": {k: {"mean": v[0], "std": v[1]} for k, v in summary.items()}})
        print(n, {k: round(v[0], 2) for k, v in summary.items() if k.endswith(("_success", "_gen_em")) or k == "score"})
    args.out.write_text(json.dumps({"provenance": stamp.finish(), "seconds": round(seconds, 1), "points": points,
                                    "cases": {str(r["case_id"]): p for r, p in zip(records, posts)}}) + "\n")


if __name__ == "__main__":
    main()
