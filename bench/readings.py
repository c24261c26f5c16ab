"""The statistics behind every sentence that reads the published streams: paired gaps between runs on
the same cases, what each run kept of its early edits, and the general-capability points.

    python bench/readings.py [--out bench/results/readings.json]

Reads only committed files: the archived runs of the 2000-edit protocol (``bench/results/stream/``)
and of the 1000-edit frontier (``bench/results/frontier/``), their curve points and their case files
(``case_files.tar.gz``, read in memory). Per case, every metric is reduced as ``summarize.py`` reduces
it (``experiments.metrics.per_case``), ×100. For each pair of runs of a stream, on the cases both
scored: the mean of A − B and its standard error (paired: the per-case differences' standard
deviation / √n). For each run, the first ``first`` cases right after their edits (the curve point at
``first`` edits) and at the run's last point, and the later cases at the last point. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from provenance import Provenance  # noqa: E402

from experiments.metrics.per_case import counterfact_row  # noqa: E402

RESULTS = ROOT / "bench" / "results"
STREAMS = {
    "protocol_2000": {"dir": RESULTS / "stream", "runs": {"NSE": "NSE_run_000", "MEMIT": "MEMIT_run_000",
                                                          "AlphaEdit": "AlphaEdit_run_000"}},
    "frontier_1000": {"dir": RESULTS / "frontier", "runs": {
        "AlphaEdit+NAS": "AlphaEdit_NAS_run_001", "AlphaEdit": "AlphaEdit_run_000", "NSE": "NSE_run_000",
        "NSE+NAS": "NSE_NAS_run_001", "ENCORE": "ENCORE_run_000"}},
}
METRICS = ("rewrite_success", "paraphrase_success", "neighborhood_success", "rewrite_gen_em", "paraphrase_gen_em",
           "neighborhood_gen_em", "rewrite_gen_f1", "paraphrase_gen_f1", "neighborhood_gen_f1", "ngram_entropy")


def _scaled(row: dict) -> dict[str, float]:
    """×100 as summarize.py prints, except Fluency, which is already on its scale there (×100 too)."""
    return {k: 100 * row[k] for k in METRICS if row.get(k) is not None}


def final_cases(run_dir: Path) -> dict[str, dict[str, float]]:
    """Every case of the final scoring (the case files), reduced per metric."""
    out = {}
    with tarfile.open(run_dir / "case_files.tar.gz") as archive:
        for member in archive:
            if member.isfile() and member.name.endswith(".json"):
                case = json.load(archive.extractfile(member))
                out[str(case["case_id"])] = _scaled(counterfact_row(case["post"]))
    return out


def curve_cases(run_dir: Path, edits: int) -> dict[str, dict[str, float]]:
    point = json.loads((run_dir / "curves" / f"edits_{edits:06d}.json").read_text())
    return {str(i): _scaled(counterfact_row(post)) for i, post in point["cases"].items()}


def mean_se(values: list[float]) -> dict[str, float]:
    n = len(values)
    return {"mean": statistics.fmean(values), "standard_error": statistics.stdev(values) / math.sqrt(n) if n > 1 else math.nan,
            "cases": n}


def paired(a: dict[str, dict], b: dict[str, dict]) -> dict[str, dict]:
    """A − B per metric over the cases both have it for."""
    out = {}
    for metric in METRICS:
        shared = [i for i in a if i in b and metric in a[i] and metric in b[i]]
        if len(shared) > 1:
            out[metric] = mean_se([a[i][metric] - b[i][metric] for i in shared])
    return out


def means(cases: dict[str, dict], ids: list[str]) -> dict[str, dict]:
    return {m: mean_se([cases[i][m] for i in ids if m in cases[i]]) for m in METRICS
            if sum(m in cases[i] for i in ids) > 1}


def kept(early: dict[str, dict], last: dict[str, dict], later_ids: list[str]) -> dict:
    """The first cases right after their edits and at the last point (paired change), and the later ones."""
    ids = sorted(early)
    change = {m: mean_se([last[i][m] - early[i][m] for i in ids if m in early[i] and m in last[i]])
              for m in METRICS if sum(m in early[i] and m in last[i] for i in ids) > 1}
    return {"first_cases": len(ids), "just_after": means(early, ids), "at_last_point": means(last, ids),
            "change": change, "later_cases_at_last_point": means(last, later_ids)}


def stream_readings(spec: dict, first: int) -> dict:
    finals = {name: final_cases(spec["dir"] / run) for name, run in spec["runs"].items()}
    out: dict = {"runs": {name: str((spec["dir"] / run).relative_to(ROOT)) for name, run in spec["runs"].items()},
                 "final_means": {name: means(c, sorted(c)) for name, c in finals.items()},
                 "paired_final": {f"{a} - {b}": paired(finals[a], finals[b]) for a, b in itertools.combinations(finals, 2)},
                 "early_edits": {}, "paired_at_first": {}}
    early = {name: curve_cases(spec["dir"] / run, first) for name, run in spec["runs"].items()}
    for name in finals:
        later = sorted(set(finals[name]) - set(early[name]))
        out["early_edits"][name] = kept(early[name], finals[name], later)
    out["paired_at_first"] = {f"{a} - {b}": paired(early[a], early[b]) for a, b in itertools.combinations(early, 2)}
    # What each kept of the same first cases, A's loss minus B's, and the later cases at the end.
    change = {name: {i: {m: finals[name][i][m] - c[m] for m in c if m in finals[name][i]} for i, c in early[name].items()}
              for name in early}
    out["paired_change_of_first"] = {f"{a} - {b}": paired(change[a], change[b]) for a, b in itertools.combinations(early, 2)}
    later = {name: {i: c for i, c in finals[name].items() if i not in early[name]} for name in finals}
    out["paired_final_later"] = {f"{a} - {b}": paired(later[a], later[b]) for a, b in itertools.combinations(later, 2)}
    out["downstream"] = {name: downstream(spec["dir"] / run) for name, run in spec["runs"].items()}
    return out


def downstream(run_dir: Path) -> dict[str, dict]:
    """Per general-capability point: accuracy, F1 and share of invalid answers per task."""
    points = {}
    for path in sorted((run_dir / "downstream").glob("edits_*.json")):
        point = json.loads(path.read_text())
        tasks = point.get("tasks", point)
        points[path.stem] = {t: {k: v[k] for k in ("accuracy", "f1", "invalid") if k in v}
                             for t, v in tasks.items() if isinstance(v, dict)}
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--first", type=int, default=500, help="the early edits whose fate is followed")
    parser.add_argument("--out", type=Path, default=RESULTS / "readings.json")
    args = parser.parse_args()
    stamp = Provenance.start(__file__)
    result = {name: stream_readings(spec, args.first) for name, spec in STREAMS.items()}
    args.out.write_text(json.dumps({"provenance": stamp.finish(), "first": args.first, **result}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
