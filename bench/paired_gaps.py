"""Paired differences between runs on the same cases: mean and standard error of run A's per-case
rate minus run B's, for Efficacy, Generalization and Specificity at each run's last curve point
(teacher forced; the same weights as the final scoring). Says whether a gap in the summary table is
larger than its noise.

    python bench/paired_gaps.py results/stream/NSE/run_000 results/stream/MEMIT/run_000 results/stream/AlphaEdit/run_000 [--out F]
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from provenance import Provenance  # noqa: E402
from util.total_edits import total_edits_of  # noqa: E402  (curve files before the rename: num_edits)

# (metric, prompt list, which NLL must be lower for the case to count as a hit)
RATES = (("Efficacy", "rewrite_prompts_probs", "target_new"),
         ("Generalization", "paraphrase_prompts_probs", "target_new"),
         ("Specificity", "neighborhood_prompts_probs", "target_true"))


def case_rates(case: dict) -> dict[str, float]:
    """Each metric of one case, ×100, from its NLLs (lower NLL = more probable)."""
    out = {}
    for metric, key, winner in RATES:
        loser = "target_true" if winner == "target_new" else "target_new"
        out[metric] = 100 * sum(p[winner] < p[loser] for p in case[key]) / len(case[key])
    return out


def last_point(run_dir: Path) -> dict:
    points = sorted((run_dir / "curves").glob("edits_*.json"))
    if not points:
        raise SystemExit(f"{run_dir} has no curve points (run it with --curve_every)")
    return json.loads(points[-1].read_text())


def paired(a: dict, b: dict) -> dict[str, dict[str, float]]:
    """Mean and standard error of a - b over the cases both points scored."""
    shared = sorted(set(a["cases"]) & set(b["cases"]))
    rates_a = {i: case_rates(a["cases"][i]) for i in shared}
    rates_b = {i: case_rates(b["cases"][i]) for i in shared}
    out = {}
    for metric, _, _ in RATES:
        diffs = [rates_a[i][metric] - rates_b[i][metric] for i in shared]
        out[metric] = {"mean": statistics.mean(diffs),
                       "standard_error": statistics.stdev(diffs) / math.sqrt(len(diffs)), "cases": len(diffs)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    stamp = Provenance.start(__file__)
    points = {str(run): last_point(run) for run in args.runs}
    rows = []
    for (name_a, a), (name_b, b) in itertools.combinations(points.items(), 2):
        gaps = paired(a, b)
        rows.append({"a": name_a, "b": name_b, "edits": [total_edits_of(a), total_edits_of(b)], "gaps": gaps})
        print(f"{name_a} - {name_b}: " + ", ".join(
            f"{m} {g['mean']:+.2f} ± {g['standard_error']:.2f}" for m, g in gaps.items()) + f" ({gaps['Efficacy']['cases']} cases)")
    if args.out:
        args.out.write_text(json.dumps({"provenance": stamp.finish(), "pairs": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
