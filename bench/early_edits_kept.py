"""How many of a run's first N edits still hold at its last curve point (teacher forced, from the
curve file's per-case metrics), beside the point right after them: what accumulating edits undo.

    python bench/early_edits_kept.py results/stream/NSE/run_000 results/stream/MEMIT/run_000 [--first 500] [--out F]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from provenance import Provenance  # noqa: E402
from util.total_edits import total_edits_of  # noqa: E402  (curve files before the rename: num_edits)


def _rates(case: dict) -> tuple[float, float]:
    """Efficacy and Specificity of one case from its NLLs (lower NLL = more probable)."""
    rewrite, neighbours = case["rewrite_prompts_probs"], case["neighborhood_prompts_probs"]
    efficacy = sum(p["target_new"] < p["target_true"] for p in rewrite) / len(rewrite)
    specificity = sum(p["target_true"] < p["target_new"] for p in neighbours) / len(neighbours)
    return efficacy, specificity


def kept(run_dir: Path, first: int) -> dict:
    points = sorted((run_dir / "curves").glob("edits_*.json"))
    early = json.loads((run_dir / "curves" / f"edits_{first:06d}.json").read_text())
    last = json.loads(points[-1].read_text())
    ids = [str(i) for i in early["case_ids"]]
    out = {"run": str(run_dir), "first_edits": first, "last_point_edits": total_edits_of(last)}
    for name, point in (("just_after", early), ("at_last_point", last)):
        rates = [_rates(point["cases"][i]) for i in ids]
        out[name] = {"efficacy": 100 * sum(r[0] for r in rates) / len(rates),
                     "specificity": 100 * sum(r[1] for r in rates) / len(rates)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--first", type=int, default=500)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    stamp = Provenance.start(__file__)
    rows = [kept(run, args.first) for run in args.runs]
    for row in rows:
        print(f"{row['run']}: first {row['first_edits']} edits, Efficacy {row['just_after']['efficacy']:.1f} -> "
              f"{row['at_last_point']['efficacy']:.1f}, Specificity {row['just_after']['specificity']:.1f} -> "
              f"{row['at_last_point']['specificity']:.1f} at {row['last_point_edits']} edits")
    if args.out:
        args.out.write_text(json.dumps({"provenance": stamp.finish(), "runs": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
