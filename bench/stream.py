"""The stream table of one or more runs, from the ``timings.json`` each run writes as it goes.

    python bench/stream.py results/stream/NSE/run_000 results/stream/MEMIT/run_000 [--out FILE.json]

Per run: wall time and edits per hour; seconds per phase in total and per batch (the editor's
values, key reads, solves..., saving the state, the curve points, the general-capability passes,
the final scoring's teacher-forced and generation parts); peak resident memory; how per-batch
edit seconds, resident memory and the editor state's size move along the stream (first and last
batches, least-squares slope per batch); the load average the machine saw. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from experiments.run_folder import RunFolder  # noqa: E402
from provenance import Provenance  # noqa: E402


def _slope(values: list[float]) -> float | None:
    """Least-squares slope of ``values`` against their index (None below 2 points)."""
    n = len(values)
    if n < 2:
        return None
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    den = sum((i - mean_x) ** 2 for i in range(n))
    return sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values)) / den


def summarize(run_dir: Path) -> dict:
    data = json.loads((run_dir / RunFolder.TIMINGS).read_text())
    config = json.loads((run_dir / "config.json").read_text())["args"]
    batches = data["batches"]
    phases: dict[str, float] = {}
    for b in batches:
        for name, sec in b.get("phases", {}).items():
            phases[name] = phases.get(name, 0.0) + sec
        for name in ("save_seconds", "curve_seconds", "downstream_seconds"):
            phases[name.removesuffix("_seconds")] = phases.get(name.removesuffix("_seconds"), 0.0) + b.get(name, 0.0)
    before, final = data.get("before_edits", {}), data.get("final", {})
    phases["prepare (C0)"] = before.get("prepare_seconds", 0.0)
    phases["downstream"] = phases.get("downstream", 0.0) + before.get("downstream_seconds", 0.0)
    for name in ("teacher_forced_seconds", "generation_seconds", "finish_seconds"):
        phases["final " + name.removesuffix("_seconds")] = final.get(name, 0.0)
    wall = sum(s["wall_seconds"] for s in data["segments"])
    edit_seconds = [b["edit_seconds"] for b in batches]
    edits = batches[-1]["total_edits"] if batches else 0
    loads = [s.get("load_average_start") for s in data["segments"]] + [b.get("load_average") for b in batches]
    return {
        "run": str(run_dir), "alg": config["alg_name"], "segments": len(data["segments"]),
        "complete": (run_dir / "run_complete.json").is_file(), "batches": len(batches), "edits": edits,
        "wall_seconds": round(wall, 1), "wall_minutes": round(wall / 60, 1),
        "edits_per_hour_whole_run": round(edits / wall * 3600, 1) if wall else None,
        "edits_per_hour_editing_only": round(edits / sum(edit_seconds) * 3600, 1) if edit_seconds else None,
        "phase_seconds": {k: round(v, 1) for k, v in phases.items()},
        "per_batch_phase_seconds": {k: [round(b.get("phases", {}).get(k, 0.0), 2) for b in batches]
                                    for k in sorted({k for b in batches for k in b.get("phases", {})})},
        "edit_seconds_per_batch": [round(x, 1) for x in edit_seconds],
        "edit_seconds_slope_per_batch": _round(_slope(edit_seconds)),
        "rss_mib_per_batch": [round(b["rss_mib"]) for b in batches if b.get("rss_mib") is not None],
        "rss_mib_slope_per_batch": _round(_slope([b["rss_mib"] for b in batches if b.get("rss_mib") is not None])),
        "peak_rss_mib": max([s.get("peak_rss_mib", 0.0) for s in data["segments"]] or [0.0]),
        "state_mib_per_batch": sorted({b.get("state_mib") for b in batches if b.get("state_mib") is not None}),
        "load_average_max_1min": max((l[0] for l in loads if l), default=None),
        "machine": data.get("machine"),
    }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="write the summaries as JSON here too")
    args = ap.parse_args()
    stamp = Provenance.start(__file__)
    missing = [str(r) for r in args.runs if not (r / RunFolder.TIMINGS).is_file()]
    if missing:
        sys.exit(f"no {RunFolder.TIMINGS} in: {', '.join(missing)} (runs started before timings were written have none)")
    rows = [summarize(r) for r in args.runs]
    for row in rows:
        print(f"\n{row['alg']} ({row['run']}): {row['edits']} edits in {row['batches']} batches, "
              f"{row['wall_minutes']} min wall over {row['segments']} segment(s), complete={row['complete']}")
        print(f"  edits/hour: {row['edits_per_hour_whole_run']} (whole run), {row['edits_per_hour_editing_only']} "
              f"(editing only); peak RSS {row['peak_rss_mib']:.0f} MiB; max 1-min load {row['load_average_max_1min']}")
        for name, sec in sorted(row["phase_seconds"].items(), key=lambda kv: -kv[1]):
            print(f"  {name:28s} {sec:9.1f} s")
        print(f"  edit s/batch: {row['edit_seconds_per_batch']} (slope {row['edit_seconds_slope_per_batch']} s/batch)")
        print(f"  RSS MiB/batch: {row['rss_mib_per_batch']} (slope {row['rss_mib_slope_per_batch']} MiB/batch)")
        print(f"  editor state MiB: {row['state_mib_per_batch']}")
    if args.out:
        args.out.write_text(json.dumps({"provenance": stamp.finish(), "runs": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
