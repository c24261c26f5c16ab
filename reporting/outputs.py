"""The summary files: ``<prefix>.json`` (every run's numbers, with what each key means),
``<prefix>.csv`` (one row per run and pre/post) and ``<prefix>_downstream.csv`` (long format)."""
from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.metrics.summary import METRIC_DESCRIPTIONS
from reporting.descriptions import DOWNSTREAM_DESCRIPTIONS, RUN_KEY_DESCRIPTIONS
from reporting.reading import DOWNSTREAM_METRICS
from reporting.summary import RunSummary, finite
from util.atomic_files import write_text_atomic
from util.total_edits import TOTAL_EDITS


def summary_json(summaries: Sequence[RunSummary], skipped: Sequence[str] = (),
                 first_n_cases: int | None = None) -> dict[str, Any]:
    return {
        "first_n_cases": first_n_cases,
        "runs": [s.to_json() for s in summaries],
        "skipped": list(skipped),
        "descriptions": {"run": RUN_KEY_DESCRIPTIONS, "metrics": METRIC_DESCRIPTIONS,
                         "downstream": DOWNSTREAM_DESCRIPTIONS},
    }


def _metric_keys(summaries: Sequence[RunSummary]) -> list[str]:
    present = {k for s in summaries for k in [*s.post, *(s.pre or {})]}
    ordered = [k for k in METRIC_DESCRIPTIONS if k in present]
    return ordered + sorted(present - set(ordered))


def metrics_csv(summaries: Sequence[RunSummary]) -> str:
    """One row per (run, pre/post); a ``<metric>`` and ``<metric>_std`` column per metric."""
    keys = _metric_keys(summaries)
    # Only when a run anchored: the CSV of runs without anchoring keeps its columns.
    anchored = any(s.norm_anchor is not None for s in summaries)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["alg_name", "run", "status", "row", "model_name", "ds_name", "num_edits", "n_cases",
                     *(["anchor_dropped", "anchor_rescaled"] if anchored else []),
                     *(c for k in keys for c in (k, f"{k}_std"))])
    for s in summaries:
        for row, metrics, n in (("pre", s.pre, s.n_pre_cases), ("post", s.post if s.n_cases else None, s.n_cases)):
            if metrics is None:
                continue
            values = []
            for k in keys:
                mean, std = metrics.get(k, (math.nan, math.nan))
                values += ["" if finite(mean) is None else f"{mean:.6g}", "" if finite(std) is None else f"{std:.6g}"]
            writer.writerow([s.alg_name, s.run, s.status, row, s.config.get("model_name", ""),
                             s.config.get("ds_name", ""), s.config.get("num_edits", ""), n,
                             *(_anchor_csv(s, row) if anchored else []), *values])
    return out.getvalue()


def _anchor_csv(s: RunSummary, row: str) -> list[Any]:
    """The post row's anchor_dropped and anchor_rescaled; empty for the pre row, runs without
    anchoring and runs that did not record them."""
    a = s.norm_anchor
    if row != "post" or a is None:
        return ["", ""]
    return ["" if a["dropped"] is None else a["dropped"], "" if a["rescaled"] is None else a["rescaled"]]


def downstream_csv(summaries: Sequence[RunSummary]) -> str:
    """Long format: one row per (run, evaluation point, task)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["alg_name", "run", "status", TOTAL_EDITS, "batch_index", "task", *DOWNSTREAM_METRICS, "n"])
    for s in summaries:
        for point in s.downstream:
            for task, m in sorted(point["tasks"].items()):
                writer.writerow([s.alg_name, s.run, s.status, point[TOTAL_EDITS], point.get("batch_index", ""), task,
                                 *(m.get(k, "") for k in DOWNSTREAM_METRICS), m.get("n", "")])
    return out.getvalue()


def default_out_prefix(results_dir: str | Path, dir_names: Sequence[str]) -> Path:
    """``<results>/<ALG>/summary`` for one algorithm, ``<results>/summary_<A>_<B>`` for several."""
    if len(dir_names) == 1:
        return Path(results_dir) / dir_names[0] / "summary"
    return Path(results_dir) / ("summary_" + "_".join(dir_names))


def write_outputs(summaries: Sequence[RunSummary], prefix: str | Path, skipped: Sequence[str] = (),
                  first_n_cases: int | None = None) -> list[Path]:
    """``<prefix>.json``, ``<prefix>.csv`` and, when any run has them, ``<prefix>_downstream.csv``."""
    prefix = Path(prefix)
    if prefix.suffix in (".json", ".csv"):  # "--out=x/summary.json" means the prefix x/summary
        prefix = prefix.with_suffix("")
    base = prefix.name
    payload = json.dumps(summary_json(summaries, skipped, first_n_cases), indent=2, allow_nan=False) + "\n"
    written = [write_text_atomic(prefix.with_name(base + ".json"), payload),
               write_text_atomic(prefix.with_name(base + ".csv"), metrics_csv(summaries))]
    if any(s.downstream for s in summaries):
        written.append(write_text_atomic(prefix.with_name(base + "_downstream.csv"), downstream_csv(summaries)))
    return written

