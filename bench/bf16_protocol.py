"""bf16 judged by the metrics: the NSE 2000-edit protocol run in bf16 against the published fp32 run,
paired on the same cases, at every curve point both have and (once the bf16 run is complete) on the
final case files, with the wall time of each.

    python bench/bf16_protocol.py [--bf16 bench/results/stream/NSE_bf16_run_002] [--out bench/results/stream/bf16_protocol.json]

The fp32 run is the archived ``bench/results/stream/NSE_run_000`` (case files read from its archive
in memory). Per metric: the mean of bf16 − fp32 over the shared cases and its standard error
(paired), and whether it is within two standard errors. Fluency is recomputed from both runs' stored
texts with one tokenizer (the untrained Punkt fallback both runs could use), so that the tokenizer
cannot make a difference. The general-capability tasks (100 examples each, likelihood) are put side by
side per point (accuracy; no per-example answers are stored, so not paired). The bf16 run is the archived
copy of ``streams/NSE/run_002`` (``bench/archive_run.sh``). Nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from provenance import Provenance  # noqa: E402
from readings import METRICS, mean_se, paired  # noqa: E402

from experiments.metrics.fluency import punkt_word_tokenizer, tokens_ngram_entropy  # noqa: E402
from experiments.metrics.per_case import counterfact_row  # noqa: E402

FP32 = ROOT / "bench" / "results" / "stream" / "NSE_run_000"


def case_fluency(texts: list[str], tokenize) -> float:
    """One case's Fluency ×100: the mean n-gram entropy of its generated texts, words split by ``tokenize``."""
    return 100 * sum(tokens_ngram_entropy(tokenize(t)) for t in texts) / len(texts)


def _rows(posts: dict[str, dict], tokenize) -> dict[str, dict[str, float]]:
    """Per case, every metric ×100 as summarize.py reduces it; Fluency recomputed with ``tokenize``."""
    out = {}
    for case_id, post in posts.items():
        row = {k: 100 * v for k, v in counterfact_row(post).items() if k in METRICS and v is not None}
        if "text" in post:
            row["ngram_entropy"] = case_fluency(post["text"], tokenize)
        out[case_id] = row
    return out


def final_posts(run_dir: Path) -> dict[str, dict]:
    """The ``post`` of every case file, from the folder or its archive."""
    archive = run_dir / "case_files.tar.gz"
    if archive.is_file():
        with tarfile.open(archive) as tar:
            cases = [json.load(tar.extractfile(m)) for m in tar if m.isfile() and m.name.endswith(".json")]
    else:
        cases = [json.loads(p.read_text()) for p in run_dir.glob("*_edits-case_*.json")]
    return {str(c["case_id"]): c["post"] for c in cases}


def curve_posts(run_dir: Path, edits: int) -> dict[str, dict] | None:
    path = run_dir / "curves" / f"edits_{edits:06d}.json"
    return json.loads(path.read_text())["cases"] if path.is_file() else None


def compare(bf16: dict[str, dict], fp32: dict[str, dict]) -> dict:
    gaps = paired(bf16, fp32)
    return {m: {**g, "within_two_standard_errors": abs(g["mean"]) <= 2 * g["standard_error"]}
            for m, g in gaps.items()}


def downstream(bf16_dir: Path, fp32_dir: Path) -> dict:
    """Per general-capability point both runs have: each task's accuracy in bf16 and fp32."""
    out = {}
    for path in sorted((bf16_dir / "downstream").glob("edits_*.json")):
        other = fp32_dir / "downstream" / path.name
        if other.is_file():
            tasks = [json.loads(f.read_text())["tasks"] for f in (path, other)]
            out[str(int(path.stem.split("_")[1]))] = {
                name: {"bf16": tasks[0][name]["accuracy"], "fp32": tasks[1][name]["accuracy"],
                       "n": tasks[0][name].get("n")} for name in tasks[0] if name in tasks[1]}
    return out


def wall(run_dir: Path) -> dict:
    timings = json.loads((run_dir / "timings.json").read_text())
    segments = timings.get("segments", [])
    values = sum(b.get("phases", {}).get("values", 0.0) for b in timings.get("batches", []))
    return {"wall_minutes": round(sum(s.get("wall_seconds", 0.0) for s in segments) / 60, 1),
            "value_phase_minutes": round(values / 60, 1), "batches": len(timings.get("batches", [])),
            "segments": [{k: s.get(k) for k in ("started", "wall_seconds", "load_average_start", "load_average_end",
                                                 "machine")} for s in segments]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bf16", type=Path, default=ROOT / "bench" / "results" / "stream" / "NSE_bf16_run_002")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "stream" / "bf16_protocol.json")
    args = ap.parse_args()
    stamp = Provenance.start(__file__)
    tokenize = punkt_word_tokenizer()  # the untrained fallback: the same for both runs
    out: dict = {"bf16_run": str(args.bf16), "fp32_run": str(FP32.relative_to(ROOT)), "points": {}}
    for edits in (500, 1000, 1500, 2000):
        bf16, fp32 = curve_posts(args.bf16, edits), curve_posts(FP32, edits)
        if bf16 is not None and fp32 is not None:
            out["points"][str(edits)] = compare(_rows(bf16, tokenize), _rows(fp32, tokenize))
    complete = (args.bf16 / "run_complete.json").is_file()
    if complete:
        out["final"] = compare(_rows(final_posts(args.bf16), tokenize), _rows(final_posts(FP32), tokenize))
        out["final_means"] = {name: {m: mean_se([r[m] for r in rows.values() if m in r]) for m in METRICS
                                     if sum(m in r for r in rows.values()) > 1}
                              for name, rows in (("bf16", _rows(final_posts(args.bf16), tokenize)),
                                                 ("fp32", _rows(final_posts(FP32), tokenize)))}
    out["bf16_complete"] = complete
    out["downstream_accuracy"] = downstream(args.bf16, FP32)
    out["time"] = {"bf16": wall(args.bf16), "fp32": wall(FP32)}
    args.out.write_text(json.dumps({"provenance": stamp.finish(), **out}, indent=1) + "\n")
    print(f"wrote {args.out}")
    for point, gaps in {**out["points"], **({"final": out["final"]} if complete else {})}.items():
        print(point, ", ".join(f"{m} {g['mean']:+.2f} ± {g['standard_error']:.2f}" for m, g in gaps.items()))


if __name__ == "__main__":
    main()
