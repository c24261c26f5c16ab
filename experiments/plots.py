"""Figures of runs against the number of edits (``summarize.py --plot``), and the numbers behind them.

``metrics_vs_edits.png``: Efficacy, Generalization, Specificity (and Score for CounterFact), one
panel each, one line per run; ``metrics_vs_edits_<counterfact|zsre>.png`` instead when the runs
mix the datasets (the same names measure different things there). The points are the run's
``curves/edits_*.json`` (``--curve_every``: the cases edited so far, teacher-forced) and, for a
complete run, its final result from the case files (all cases, after all edits; with
``--first_n_cases``, those cases). Every value is :func:`experiments.metrics.summarize_cases` of
the per-case metrics, ×100. A damaged curve file is left out (named in the run's warnings); a run
without curve points gets a note saying how to get them.

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

from experiments.curves import CurveFileError, curve_paths, read_curve_file
from experiments.ds_kinds import all_kinds, kind_named
from experiments.metrics.summary import post_problem, summarize_cases
from experiments.run_files import COMPLETE_MARKER
from experiments.summarize_runs import DOWNSTREAM_METRICS, RunSummary, SummaryError
from util.atomic_files import atomic_path, write_text_atomic
from util.total_edits import TOTAL_EDITS

METRICS_FIGURE, DOWNSTREAM_FIGURE = "metrics_vs_edits", "downstream_vs_edits"
# With --generation_eval the exact-match rates get panels of their own (drawn only where a run has them).
GENERATION_PANELS = (("rewrite_gen_em", "Efficacy EM"), ("paraphrase_gen_em", "Generalization EM"),
                     ("neighborhood_gen_em", "Specificity EM"))


def panels() -> list[str]:
    """Every kind's curve panel names (DsKind.curve_metrics), then the generation-based ones; a
    figure draws those its runs have."""
    names = [name for kind in all_kinds() for _, name in kind.curve_metrics] + [n for _, n in GENERATION_PANELS]
    return list(dict.fromkeys(names))
CURVE_FIX = "delete it or move it out of curves/"
CURVE_HINT = "run experiments.evaluate with --curve_every=N to add a point every N batches"
DOWNSTREAM_RANGE = {"accuracy": (-0.03, 1.03), "f1": (-0.03, 1.03), "mcc": (-1.05, 1.05)}


class PlotError(SummaryError):
    """A figure cannot be drawn (matplotlib missing, nothing to plot); the message says why."""


def run_label(s: RunSummary, summaries: Sequence[RunSummary]) -> str:
    """``ALG/run_NNN``, with the dataset when the runs mix CounterFact and zsRE."""
    mixed = len({x.ds_kind for x in summaries if x.ds_kind}) > 1
    return f"{s.label} ({s.config.get('ds_name', s.ds_kind)})" if mixed else s.label


def _skip_curve(s: RunSummary, problem: str) -> None:
    s.warnings.append(f"{problem}; skipped: the figure lacks that point ({CURVE_FIX})")


def _usable_curve_point(s: RunSummary, point: dict[str, Any], path: Path) -> bool:
    """A curve point of the run's dataset whose every case summarize_cases can read; else named."""
    if point["ds_kind"] != s.ds_kind:
        _skip_curve(s, f"{path} is a {point['ds_kind']} point, the run is {s.ds_kind}")
        return False
    if not point["cases"]:
        _skip_curve(s, f"{path} is a curve point without cases")
        return False
    for case_id, post in point["cases"].items():
        problem = post_problem(post, s.ds_kind)
        if problem:
            _skip_curve(s, f"{path} is a curve point whose case {case_id} has the wrong shape: {problem}")
            return False
    return True


def _curve_points(s: RunSummary) -> list[dict[str, Any]]:
    """The run's readable curve points; a damaged file is left out and named in ``s.warnings`` (a
    figure is worth drawing without one of its points)."""
    points = []
    for path in curve_paths(s.path):
        try:
            point = read_curve_file(path)
        except CurveFileError as err:
            _skip_curve(s, str(err))
            continue
        if _usable_curve_point(s, point, path):
            points.append(point)
    return points


def metric_points(s: RunSummary) -> list[dict[str, Any]]:
    """The run's points: its curve files, then (complete runs) the final result of the case files,
    which replaces a curve point at the same number of edits."""
    if s.kind is None:
        return []
    points: dict[int, dict[str, Any]] = {}
    for point in _curve_points(s):
        values = summarize_cases(list(point["cases"].values()), s.ds_kind)  # type: ignore[arg-type]
        points[point[TOTAL_EDITS]] = {"source": "curve", TOTAL_EDITS: point[TOTAL_EDITS],
                                           "batch_index": point.get("batch_index"), "n_cases": len(point["cases"]),
                                           "values": values}
    if s.complete and s.n_cases and s.final_total_edits is not None:
        points[s.final_total_edits] = {"source": "final", TOTAL_EDITS: s.final_total_edits,
                                     "batch_index": s.final_num_batches, "n_cases": s.n_cases, "values": s.post}
    rows = []
    for n in sorted(points):
        p = points[n]
        row = {k: p[k] for k in ("source", TOTAL_EDITS, "batch_index", "n_cases")}
        for key, name in (*s.kind.curve_metrics, *GENERATION_PANELS):
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
    names = panels()
    header = ["label", "alg_name", "run", "ds_kind", "source", TOTAL_EDITS, "batch_index", "n_cases", *names]
    rows = []
    for s in summaries:
        for p in metric_points(s):
            rows.append([run_label(s, summaries), s.alg_name, s.run, s.ds_kind, p["source"], p[TOTAL_EDITS],
                         p["batch_index"], p["n_cases"], *(p.get(name) for name in names)])
    return header, rows


def downstream_table(summaries: Sequence[RunSummary]) -> tuple[list[str], list[list[Any]]]:
    header = ["label", "alg_name", "run", TOTAL_EDITS, "batch_index", "task", *DOWNSTREAM_METRICS, "n"]
    rows = []
    for s in summaries:
        for point in s.downstream:
            for task, m in sorted(point["tasks"].items()):
                rows.append([run_label(s, summaries), s.alg_name, s.run, point[TOTAL_EDITS], point.get("batch_index"),
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
    # At most 5 ticks: panels are narrow and four-digit edit counts otherwise run into each other.
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))


def _style(i: int) -> dict[str, Any]:
    """Run ``i``'s colour and marker; later runs get smaller markers, so points that coincide (equal
    results) stay visible as nested markers."""
    return {"color": f"C{i % 10}", "marker": "os^Dv<>ph*"[i % 10], "markersize": max(3.0, 8.0 - 1.5 * i)}


def _grid(n: int, max_cols: int) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def _metrics_title(rows: list[list[Any]], header: list[str], ds_kind: str) -> str:
    if any(r[header.index("source")] == "curve" for r in rows):
        return (f"{kind_named(ds_kind).title}: edited cases so far vs number of edits "
                "(teacher-forced; last point: final case files)")
    # One dot per run says nothing about the path there; say how to get the path.
    return f"{kind_named(ds_kind).title}: final results only; no curve points ({CURVE_HINT})"


def draw_metrics(header: list[str], rows: list[list[Any]], path: Path, order: dict[str, int],
                 ds_kind: str = "counterfact") -> Path:
    Figure = _figure_class()
    drawn = [name for name in panels() if name in header and any(r[header.index(name)] is not None for r in rows)]
    fig = Figure(figsize=(3.6 * len(drawn), 3.6), layout="constrained")
    axes = fig.subplots(1, len(drawn), squeeze=False)[0]
    labels = list(dict.fromkeys(r[0] for r in rows))
    for ax, name in zip(axes, drawn):
        col = header.index(name)
        for label in labels:
            pts = [(r[header.index(TOTAL_EDITS)], r[col]) for r in rows if r[0] == label and r[col] is not None]
            if pts:
                ax.plot(*zip(*pts), label=label, **_style(order[label]))
        ax.set_title(name)
        _x_axis(ax)
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
    if not any(r[header.index("source")] == "curve" for r in rows):  # lone dots: from 0 edits, not ±0.16
        for ax in axes:
            ax.set_xlim(0, 1.1 * max(1, *(r[header.index(TOTAL_EDITS)] for r in rows)))
    axes[0].set_ylabel("%")
    _legend(fig, axes)
    fig.suptitle(_metrics_title(rows, header, ds_kind), wrap=True)
    return _save(fig, path)


def draw_downstream(header: list[str], rows: list[list[Any]], metric: str, path: Path, order: dict[str, int]) -> Path:
    Figure = _figure_class()
    tasks = sorted({r[header.index("task")] for r in rows})
    nrows, ncols = _grid(len(tasks), 3)
    fig = Figure(figsize=(3.6 * ncols, 3.0 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).flatten()
    labels = list(dict.fromkeys(r[0] for r in rows))
    col, x = header.index(metric), header.index(TOTAL_EDITS)
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


def _metrics_figures(header: list[str], rows: list[list[Any]], out_dir: Path, order: dict[str, int]) -> list[Path]:
    """metrics_vs_edits.png and .csv; when the runs mix CounterFact and zsRE, one pair per dataset
    (metrics_vs_edits_<kind>): their Efficacy and the rest measure different things (probability
    comparisons vs token accuracy), so one axis would show them as comparable when they are not."""
    col = header.index("ds_kind")
    kinds = list(dict.fromkeys(r[col] for r in rows))
    written = []
    for kind in kinds:
        name = METRICS_FIGURE if len(kinds) == 1 else f"{METRICS_FIGURE}_{kind}"
        kind_rows = [r for r in rows if r[col] == kind]
        written.append(write_text_atomic(out_dir / f"{name}.csv", _csv(header, kind_rows)))
        written.append(draw_metrics(header, kind_rows, out_dir / f"{name}.png", order, kind))
    return written


def _note_missing_curves(summaries: Sequence[RunSummary], header: list[str], rows: list[list[Any]]) -> None:
    """A note on each run drawn without curve points: how to get them (main() prints new notes)."""
    for s in summaries:
        mine = [r for r in rows if r[0] == run_label(s, summaries)]
        if s.kind is None or not s.n_cases or any(r[header.index("source")] == "curve" for r in mine):
            continue
        if mine:
            s.notes.append(f"{METRICS_FIGURE}: only the final point (the run has no curves/ points); {CURVE_HINT}")
            continue
        why = "the run is incomplete" if not s.complete else f"{COMPLETE_MARKER} does not say how many edits were made"
        s.notes.append(f"not in {METRICS_FIGURE}: no curve points and no final point ({why}); {CURVE_HINT}")


def write_figures(summaries: Sequence[RunSummary], out_dir: str | Path, downstream_metric: str = "f1") -> list[Path]:
    """Both figures (where the runs have points) and their CSVs under ``out_dir``; the paths written.
    Curve files left out are named in the runs' ``warnings``, runs without curve points in ``notes``."""
    if downstream_metric not in DOWNSTREAM_METRICS:
        raise PlotError(f"--downstream_metric must be one of {', '.join(DOWNSTREAM_METRICS)}, got {downstream_metric!r}")
    out_dir = Path(out_dir)
    order = {run_label(s, summaries): i for i, s in enumerate(summaries)}  # a run looks the same in both figures
    written: list[Path] = []
    header, rows = metrics_table(summaries)
    _note_missing_curves(summaries, header, rows)
    if rows:
        written += _metrics_figures(header, rows, out_dir, order)
    d_header, d_rows = downstream_table(summaries)
    if d_rows:
        written.append(write_text_atomic(out_dir / f"{DOWNSTREAM_FIGURE}.csv", _csv(d_header, d_rows)))
        written.append(draw_downstream(d_header, d_rows, downstream_metric, out_dir / f"{DOWNSTREAM_FIGURE}.png", order))
    if not written:
        raise PlotError("nothing to plot: no run has curve points (--curve_every), a complete set of case files "
                        "or downstream results (--downstream_eval_steps)")
    return written
