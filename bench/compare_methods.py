"""The methods side by side: one table from finished runs of `experiments.evaluate` on the same records.

    python bench/compare_methods.py --results_dir=results/compare --methods NSE MEMIT AlphaEdit ... [--out F.json]

Reads each method's newest complete run under ``<results_dir>/<ALG>/`` and prints a markdown table
(Efficacy, Generalization, Specificity, Fluency, Score, median seconds per batch) with the pre-edited row of
the first run that has one. Fluency is averaged over the cases that carry generation metrics in
*every* run shown, so runs with different --generation_test_interval compare on the same texts.
``--out`` also writes the rows as JSON with the provenance stamp (script, commit, machine, load).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from statistics import mean, median

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from experiments.run_folder import RUN_NAME, RunFolder  # noqa: E402
from reporting.summary import summarize_run  # noqa: E402
from provenance import Provenance  # noqa: E402

COLUMNS = ("Efficacy", "Generalization", "Specificity")


def newest_complete_run(alg_dir: Path) -> Path | None:
    runs = sorted((p for p in alg_dir.glob("run_*") if RUN_NAME.match(p.name) and (p / RunFolder.COMPLETE).is_file()),
                  key=lambda p: int(p.name.split("_")[1]))
    return runs[-1] if runs else None


def case_entropies(run: Path, key: str) -> dict[str, float]:
    """ngram_entropy per case id, from the case files' ``post`` or ``pre`` (or pre_edit/ files)."""
    out = {}
    for path in run.glob("*_edits-case_*.json"):
        case = json.loads(path.read_text())
        metrics = case.get(key) or {}
        if key == "pre" and not metrics and (run / "pre_edit" / f"case_{case['case_id']}.json").is_file():
            metrics = json.loads((run / "pre_edit" / f"case_{case['case_id']}.json").read_text())
        if "ngram_entropy" in metrics:
            out[str(case["case_id"])] = metrics["ngram_entropy"]
    return out


def harmonic(values: list[float]) -> float:
    return len(values) / sum(1 / v for v in values) if all(v > 0 for v in values) else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results_dir", default="results/compare")
    parser.add_argument("--methods", nargs="+", required=True)
    parser.add_argument("--out", type=Path, help="also write the table's rows as JSON here")
    args = parser.parse_args()
    stamp = Provenance.start(__file__)
    runs = {m: newest_complete_run(Path(args.results_dir) / m) for m in args.methods}
    missing = [m for m, r in runs.items() if r is None]
    if missing:
        print(f"no complete run yet for: {', '.join(missing)}", file=sys.stderr)
    runs = {m: r for m, r in runs.items() if r is not None}
    rows, entropies = [], {}
    for method, run in runs.items():
        summary = summarize_run(run)
        entropies[method] = case_entropies(run, "post")
        if summary.pre is not None and "pre-edited" not in entropies:
            pre = summary.paper(summary.pre)
            entropies["pre-edited"] = case_entropies(run, "pre")
            rows.insert(0, ("pre-edited", [pre[c]["mean"] for c in COLUMNS], None))
        post = summary.paper(summary.post)
        seconds = median(r["seconds"] for r in json.loads((run / RunFolder.EDIT_REPORTS).read_text()))
        rows.append((method, [post[c]["mean"] for c in COLUMNS], seconds))
    shared = set.intersection(*(set(e) for e in entropies.values())) if entropies else set()
    print(f"| | {' | '.join(COLUMNS)} | Fluency | Score | s / batch |\n|---|---|---|---|---|---|---|")
    table = []
    for name, values, seconds in rows:
        fluency = 100 * mean(entropies[name][c] for c in shared) if shared else float("nan")
        cells = [f"{v:.2f}" for v in values] + [f"{fluency:.2f}", f"{harmonic(values):.2f}",
                                                "–" if seconds is None else f"{seconds:.0f}"]
        print(f"| {name} | {' | '.join(cells)} |")
        table.append({"method": name, **dict(zip(COLUMNS, values)), "Fluency": fluency if shared else None,
                      "Score": harmonic(values),
                      "median_seconds_per_batch": seconds})
    print(f"\nFluency over the {len(shared)} cases with generation metrics in every run: {sorted(shared, key=int)}")
    if args.out:
        args.out.write_text(json.dumps({"provenance": stamp.finish(), "runs": {m: str(r) for m, r in runs.items()},
                                        "rows": table, "fluency_cases": sorted(shared, key=int)}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
