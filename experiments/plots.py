"""Figures of runs against the number of edits (``summarize.py --plot``), and the numbers behind them.

``metrics_vs_edits.png``: Efficacy, Generalization, Specificity (and Score for CounterFact), one
panel each, one line per run. The points are the run's ``curves/edits_*.json`` (``--curve_every``:
the cases edited so far, teacher-forced) and, for a complete run, its final result from the case
files (all cases, after all edits; with ``--first_n_cases``, those cases). Every value is
:func:`experiments.metrics.summarize_cases` of the per-case metrics, ×100.

``downstream_vs_edits.png``: the general-capability tasks (``downstream/edits_*.json``), one panel
per task, one line per run, the chosen metric (F1 by default).

``metrics_vs_edits.csv`` and ``downstream_vs_edits.csv`` hold exactly the plotted numbers (one
row per run and point). matplotlib is imported only here, and only when a figure is drawn.
"""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.curves import CurveFileError, read_curve_points
from experiments.metrics.summary import summarize_cases
from experiments.run_files import COMPLETE_MARKER, read_json
from experiments.summarize_runs import DOWNSTREAM_METRICS, RunSummary, SummaryError
from util.atomic_files import atomic_path, write_text_atomic

METRICS_FIGURE, DOWNSTREAM_FIGURE = "metrics_vs_edits", "downstream_vs_edits"
# The curve panels per dataset kind: (key of summarize_cases, paper name); teacher-forced metrics only.
CURVE_METRICS: dict[str, list[tuple[str, str]]] = {
    "counterfact": [("rewrite_success", "Efficacy"), ("paraphrase_success", "Generalization"),
                    ("neighborhood_success", "Specificity"), ("score", "Score")],
    "zsre": [("rewrite_acc", "Efficacy"), ("paraphrase_acc", "Generalization"), ("neighborhood_acc", "Specificity")],
}
PANELS = ["Efficacy", "Generalization", "Specificity", "Score"]
DOWNSTREAM_RANGE = {"accuracy": (-0.03, 1.03), "f1": (-0.03, 1.03), "mcc": (-1.05, 1.05)}


class PlotError(SummaryError):
    """A figure cannot be drawn (matplotlib missing, nothing to plot); the message says why."""


def run_label(s: RunSummary, summaries: Sequence[RunSummary]) -> str:
    """``ALG/run_NNN``, with the dataset when the runs mix CounterFact and zsRE."""
    mixed = len({x.ds_kind for x in summaries if x.ds_kind}) > 1
    return f"{s.label} ({s.config.get('ds_name', s.ds_kind)})" if mixed else s.label


def _final_counts(s: RunSummary) -> tuple[int | None, int | None]:
    """(num_edits, num_batches) the editor had applied when the run finished (run_complete.json)."""
    path = s.path / COMPLETE_MARKER
    done = read_json(path) if path.is_file() else {}
    return done.get("num_edits"), done.get("num_batches")


def metric_points(s: RunSummary) -> list[dict[str, Any]]:
    """The run's points: its curve files, then (complete runs) the final result of the case files,
    which replaces a curve point at the same number of edits."""
    if s.ds_kind not in CURVE_METRICS:
        return []
    try:
        curve = read_curve_points(s.path)
    except CurveFileError as err:
        raise SummaryError(str(err)) from err
    points: dict[int, dict[str, Any]] = {}
    for point in curve:
        if point["ds_kind"] != s.ds_kind:
            raise SummaryError(f"{s.path}: curve point after {point['num_edits']} edits is {point['ds_kind']}, "
                               f"the run is {s.ds_kind}")
        values = summarize_cases(list(point["cases"].values()), s.ds_kind)  # type: ignore[arg-type]
        points[int(point["num_edits"])] = {"source": "curve", "num_edits": int(point["num_edits"]),
                                           "batch_index": point.get("batch_index"), "n_cases": len(point["cases"]),
                                           "values": values}
    num_edits, num_batches = _final_counts(s)
    if s.complete and s.n_cases and num_edits is not None:
        points[int(num_edits)] = {"source": "final", "num_edits": int(num_edits), "batch_index": num_batches,
                                  "n_cases": s.n_cases, "values": s.post}
    rows = []
    for n in sorted(points):
        p = points[n]
        row = {k: p[k] for k in ("source", "num_edits", "batch_index", "n_cases")}
        for key, name in CURVE_METRICS[s.ds_kind]:
            mean = p["values"].get(key, (math.nan, math.nan))[0]
            row[name] = mean if math.isfinite(mean) else None
        rows.append(row)
    return rows


def _csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else (repr(v) if isinstance(v, float) else v) for v in r] for r in rows])
    return out.getvalue()


def metrics_table(summaries: Sequence[RunSummary]) -> tuple[list[str], list[list[Any]]]:
    header = ["label", "alg_name", "run", "ds_kind", "source", "num_edits", "batch_index", "n_cases", *PANELS]
    rows = []
    for s in summaries:
        for p in metric_points(s):
            rows.append([run_label(s, summaries), s.alg_name, s.run, s.ds_kind, p["source"], p["num_edits"],
                         p["batch_index"], p["n_cases"], *(p.get(name) for name in PANELS)])
    return header, rows


def downstream_table(summaries: Sequence[RunSummary]) -> tuple[list[str], list[list[Any]]]:
    header = ["label", "alg_name", "run", "num_edits", "batch_index", "task", *DOWNSTREAM_METRICS, "n"]
    rows = []
    for s in summaries:
        for point in s.downstream:
            for task, m in sorted(point["tasks"].items()):
                rows.append([run_label(s, summaries), s.alg_name, s.run, point["num_edits"], point.get("batch_index"),
                             task, *(m.get(k) for k in DOWNSTREAM_METRICS), m.get("n")])
    return header, rows


def _figure_class():
    try:
        from matplotlib.figure import Figure  # the Agg canvas; no display, no pyplot state
    except ImportError as err:
        raise PlotError("--plot needs matplotlib: pip install matplotlib (pinned in requirements.txt)") from err
    return Figure


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path


def _legend(fig, axes) -> None:
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), frameon=False)


def _x_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("number of edits")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _style(i: int) -> dict[str, Any]:
    """Run ``i``'s colour and marker; later runs get smaller markers, so points that coincide (equal
    results) stay visible as nested markers."""
    return {"color": f"C{i % 10}", "marker": "os^Dv<>ph*"[i % 10], "markersize": max(3.0, 8.0 - 1.5 * i)}


def _grid(n: int, max_cols: int) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def draw_metrics(header: list[str], rows: list[list[Any]], path: Path, order: dict[str, int]) -> Path:
    Figure = _figure_class()
    panels = [name for name in PANELS if any(r[header.index(name)] is not None for r in rows)]
    fig = Figure(figsize=(3.6 * len(panels), 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    labels = list(dict.fromkeys(r[0] for r in rows))
    for ax, name in zip(axes, panels):
        col = header.index(name)
        for label in labels:
            pts = [(r[header.index("num_edits")], r[col]) for r in rows if r[0] == label and r[col] is not None]
            if pts:
                ax.plot(*zip(*pts), label=label, **_style(order[label]))
        ax.set_title(name)
        _x_axis(ax)
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("%")
    _legend(fig, axes)
    fig.suptitle("Edited cases so far vs number of edits (teacher-forced; last point: final case files)")
    return _save(fig, path)


def draw_downstream(header: list[str], rows: list[list[Any]], metric: str, path: Path, order: dict[str, int]) -> Path:
    Figure = _figure_class()
    tasks = sorted({r[header.index("task")] for r in rows})
    nrows, ncols = _grid(len(tasks), 3)
    fig = Figure(figsize=(3.6 * ncols, 3.0 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).flatten()
    labels = list(dict.fromkeys(r[0] for r in rows))
    col, x = header.index(metric), header.index("num_edits")
    for ax, task in zip(axes, tasks):
        for label in labels:
            pts = sorted((r[x], r[col]) for r in rows if r[0] == label and r[header.index("task")] == task
                         and r[col] is not None)
            if pts:
                ax.plot(*zip(*pts), label=label, **_style(order[label]))
        ax.set_title(task)
        _x_axis(ax)
        ax.set_ylim(*DOWNSTREAM_RANGE.get(metric, (None, None)))
        ax.grid(alpha=0.3)
    for ax in axes[len(tasks):]:
        ax.set_visible(False)
    axes[0].set_ylabel(metric)
    _legend(fig, axes)
    fig.suptitle(f"General-capability tasks ({metric}, zero-shot) vs number of edits")
    return _save(fig, path)


def write_figures(summaries: Sequence[RunSummary], out_dir: str | Path, downstream_metric: str = "f1") -> list[Path]:
    """Both figures (where the runs have points) and their CSVs under ``out_dir``; the paths written."""
    if downstream_metric not in DOWNSTREAM_METRICS:
        raise PlotError(f"--downstream_metric must be one of {', '.join(DOWNSTREAM_METRICS)}, got {downstream_metric!r}")
    out_dir = Path(out_dir)
    order = {run_label(s, summaries): i for i, s in enumerate(summaries)}  # a run looks the same in both figures
    written: list[Path] = []
    header, rows = metrics_table(summaries)
    if rows:
        written.append(write_text_atomic(out_dir / f"{METRICS_FIGURE}.csv", _csv(header, rows)))
        written.append(draw_metrics(header, rows, out_dir / f"{METRICS_FIGURE}.png", order))
    d_header, d_rows = downstream_table(summaries)
    if d_rows:
        written.append(write_text_atomic(out_dir / f"{DOWNSTREAM_FIGURE}.csv", _csv(d_header, d_rows)))
        written.append(draw_downstream(d_header, d_rows, downstream_metric, out_dir / f"{DOWNSTREAM_FIGURE}.png", order))
    if not written:
        raise PlotError("nothing to plot: no run has curve points (--curve_every), a complete set of case files "
                        "or downstream results (--downstream_eval_steps)")
    return written
