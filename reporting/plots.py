"""Figures of runs against the number of edits (``summarize.py --plot``), and the numbers behind them.

``metrics_vs_edits.png``: Efficacy, Generalization, Specificity (and Score for CounterFact), one
panel each, one line per run; ``metrics_vs_edits_<counterfact|zsre>.png`` instead when the runs
mix the datasets (the same names measure different things there). The points are the run's
``curves/edits_*.json`` (``--curve_every``: the cases edited so far, teacher-forced) and, for a
complete run, its final result from the case files (all cases, after all edits; with
``--first_n_cases``, those cases). Every value is :func:`experiments.metrics.summarize_cases` of
the per-case metrics, ×100. A damaged curve file is left out (named in the run's warnings); a run
without curve points gets a note saying how to get them. Panels wrap at four a row, each with a
y-axis fitted to its lines. Each point has a band of ± 1 standard error over its cases
(:mod:`reporting.curve_stats`; Score's by the delta method). A dashed line is the unedited model
on each point's own cases: ``--baseline``'s per-case scores (``bench/pre_edit_curve.py``), else
the run's pre-edit scores (``--eval_pre_edit``); where it would stretch a panel's axis more than
threefold it is left off that axis and the panel's title gives its value.

``downstream_vs_edits.png``: the general-capability tasks (``downstream/edits_*.json``), one panel
per task, one line per run, the chosen metric (F1 by default).

``metrics_vs_edits.csv`` and ``downstream_vs_edits.csv`` hold exactly the plotted numbers (one
row per run and point; ``<panel> SE`` the band's half-width; the unedited line's rows have source
``unedited`` and, as ``run``, where its scores come from). matplotlib is imported only here, and
only when a figure is drawn.
"""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.curves import CurveFileError, read_curve_file
from experiments.ds_kinds import all_kinds, kind_named
from experiments.metrics.summary import post_problem, summarize_cases
from experiments.run_folder import RunFolder
from reporting.curve_stats import Baseline, baseline_point, standard_errors
from reporting.errors import SummaryError
from reporting.reading import DOWNSTREAM_METRICS
from reporting.summary import RunSummary
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
CURVE_FIX = f"delete it or move it out of {RunFolder.CURVES_DIR}/"
SE = " SE"  # the CSV column of a panel's standard error: "<panel> SE"
UNEDITED, UNEDITED_SOURCE = "unedited model", "unedited"
NO_BASELINE_HINT = ("the run has no pre-edit scores: run experiments.evaluate with --eval_pre_edit, or pass "
                    "summarize.py --baseline=FILE (bench/pre_edit_curve.py's JSON)")
CURVE_HINT = "run experiments.evaluate with --curve_every=N to add a point every N batches"
MAX_COLUMNS = 4  # panels a row: seven in one row made each too narrow to read
# The y-axis: at least MIN_SPAN points tall (a flat line is not magnified into noise), padded by
# Y_PAD of its span each side, within Y_LIMITS (every drawn metric is a rate ×100).
MIN_SPAN, Y_PAD, Y_LIMITS = 2.0, 0.08, (-1.0, 101.0)
FAR_UNEDITED = 3.0  # the unedited line stays on a panel's axis unless that would stretch it more than this
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
    for path in RunFolder(s.path).curve_files():
        try:
            point = read_curve_file(path)
        except CurveFileError as err:
            _skip_curve(s, str(err))
            continue
        if _usable_curve_point(s, point, path):
            points.append(point)
    return points


def _panel_values(kind, values: dict[str, tuple[float, float]], ses: dict[str, float]) -> dict[str, float | None]:
    """Each panel's mean and its standard error (``<panel> SE``); None where the point has neither."""
    row: dict[str, float | None] = {}
    for key, name in (*kind.curve_metrics, *GENERATION_PANELS):
        mean, se = values.get(key, (math.nan, math.nan))[0], ses.get(key, math.nan)
        row[name] = mean if math.isfinite(mean) else None
        row[f"{name}{SE}"] = se if math.isfinite(se) and row[name] is not None else None
    return row


def metric_points(s: RunSummary) -> list[dict[str, Any]]:
    """The run's points: its curve files, then (complete runs) the final result of the case files,
    which replaces a curve point at the same number of edits. Each holds its case ids, so the
    unedited model can be scored on the same cases."""
    if s.kind is None:
        return []
    points: dict[int, dict[str, Any]] = {}
    for point in _curve_points(s):
        posts = list(point["cases"].values())
        points[point[TOTAL_EDITS]] = {"source": "curve", TOTAL_EDITS: point[TOTAL_EDITS],
                                      "batch_index": point.get("batch_index"), "case_ids": list(point["cases"]),
                                      "values": summarize_cases(posts, s.ds_kind),  # type: ignore[arg-type]
                                      "se": standard_errors(posts, s.ds_kind)}  # type: ignore[arg-type]
    if s.complete and s.n_cases and s.final_total_edits is not None:
        finals = list(s.post_cases.values())
        points[s.final_total_edits] = {"source": "final", TOTAL_EDITS: s.final_total_edits,
                                       "batch_index": s.final_num_batches, "case_ids": list(s.post_cases),
                                       "values": s.post, "se": standard_errors(finals, s.ds_kind)}  # type: ignore[arg-type]
    return [{**{k: p[k] for k in ("source", TOTAL_EDITS, "batch_index", "case_ids")},
             "n_cases": len(p["case_ids"]), **_panel_values(s.kind, p["values"], p["se"])}
            for _, p in sorted(points.items())]


def _unedited_source(s: RunSummary, baseline: Baseline | None) -> Baseline | None:
    """--baseline's scores when given (one source for every run), else the run's own pre-edit scores."""
    if baseline is not None:
        return baseline
    return Baseline(f"{s.label}: pre-edit scores", s.pre_cases) if s.pre_cases else None


def unedited_points(s: RunSummary, points: Sequence[dict[str, Any]], baseline: Baseline | None) -> list[dict[str, Any]]:
    """The unedited model on each point's own cases; a point it cannot be scored on (cases missing)
    is left out and named in the run's notes, as is a run with no unedited scores at all."""
    source = _unedited_source(s, baseline)
    if source is None:
        if points:
            s.notes.append(f"{METRICS_FIGURE}: no unedited-model line ({NO_BASELINE_HINT})")
        return []
    rows = []
    for p in points:
        got = baseline_point(source.cases, p["case_ids"], s.ds_kind)  # type: ignore[arg-type]
        if isinstance(got, str):
            s.notes.append(f"{METRICS_FIGURE}: no unedited-model point at {p[TOTAL_EDITS]} edits: {got}")
            continue
        rows.append({"source": UNEDITED_SOURCE, TOTAL_EDITS: p[TOTAL_EDITS], "batch_index": p["batch_index"],
                     "case_ids": p["case_ids"], "n_cases": p["n_cases"], "from": source.source,
                     "ds_kind": s.ds_kind, **_panel_values(s.kind, *got)})
    return rows


def _shared_unedited(per_run: dict[str, list[dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """(label, point) of the unedited lines: one line when the runs' points at each number of edits
    are on the same cases with the same scores (the usual case: one protocol), else one per run
    (other cases, or another model's pre-edit scores)."""
    distinct: dict[tuple, dict[str, Any]] = {}
    for points in per_run.values():
        for p in points:
            values = tuple(p[name] for name in panels())
            distinct.setdefault((p[TOTAL_EDITS], p["ds_kind"], tuple(sorted(p["case_ids"])), values), p)
    edits = [key[:2] for key in distinct]  # (edits, dataset): the runs of one dataset share a line
    if len(edits) == len(set(edits)):
        return [(UNEDITED, p) for _, p in sorted(distinct.items(), key=lambda item: item[0][0])]
    return [(f"{UNEDITED} ({label})", p) for label, points in per_run.items() for p in points]


def _csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else (repr(v) if isinstance(v, float) else v) for v in r] for r in rows])
    return out.getvalue()


def metrics_table(summaries: Sequence[RunSummary],
                  baseline: Baseline | None = None) -> tuple[list[str], list[list[Any]]]:
    """One row per run and point, each panel's mean and standard error; then the unedited model's
    rows (source ``unedited``; ``run`` says where its scores come from)."""
    names = [c for name in panels() for c in (name, f"{name}{SE}")]
    header = ["label", "alg_name", "run", "ds_kind", "source", TOTAL_EDITS, "batch_index", "n_cases", *names]
    rows, unedited = [], {}
    for s in summaries:
        points = metric_points(s)
        label = run_label(s, summaries)
        unedited[label] = unedited_points(s, points, baseline)
        rows += [[label, s.alg_name, s.run, s.ds_kind, p["source"], p[TOTAL_EDITS], p["batch_index"], p["n_cases"],
                  *(p.get(name) for name in names)] for p in points]
    for label, p in _shared_unedited(unedited):
        rows.append([label, "", p["from"], p["ds_kind"], p["source"], p[TOTAL_EDITS], p["batch_index"], p["n_cases"],
                     *(p.get(name) for name in names)])
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
    """One legend for the figure, from every panel (a run or the unedited line may miss the first)."""
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if entries:
        fig.legend(list(entries.values()), list(entries), loc="outside lower center", ncol=min(len(entries), 4),
                   frameon=False)


def _x_axis(ax, edits: Sequence[int] = ()) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("number of edits")
    if 0 < len(set(edits)) <= 6:  # ticks where the points are, not at round numbers between them
        ax.set_xticks(sorted(set(edits)))
        return
    # At most 5 ticks: panels are narrow and four-digit edit counts otherwise run into each other.
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))


def _style(i: int) -> dict[str, Any]:
    """Run ``i``'s colour and marker; later runs get smaller markers, so points that coincide (equal
    results) stay visible as nested markers."""
    return {"color": f"C{i % 10}", "marker": "os^Dv<>ph*"[i % 10], "markersize": max(3.0, 8.0 - 1.5 * i)}


def _unedited_style(label: str, order: dict[str, int]) -> dict[str, Any]:
    """Dashed, without markers: grey when one line stands for every run, else its run's colour."""
    run = label.removeprefix(f"{UNEDITED} (").removesuffix(")")
    colour = f"C{order[run] % 10}" if run in order else "0.35"
    return {"color": colour, "linestyle": "--", "marker": None, "linewidth": 1.4}


def _grid(n: int, max_cols: int) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def _metrics_title(rows: list[list[Any]], header: list[str], ds_kind: str) -> str:
    if not any(r[header.index("source")] == "curve" for r in rows):
        # One dot per run says nothing about the path there; say how to get the path.
        return f"{kind_named(ds_kind).title}: final results only; no curve points ({CURVE_HINT})"
    unedited = any(r[header.index("source")] == UNEDITED_SOURCE for r in rows)
    generation = any(r[header.index(name)] is not None for r in rows for _, name in GENERATION_PANELS
                     if name in header)
    return (f"{kind_named(ds_kind).title}: the cases edited so far vs number of edits (last point: all cases, "
            "from the final case files); bands: ± 1 standard error over cases"
            + ("; dashed: the unedited model on the same cases" if unedited else "")
            + ("; EM panels: exact match of the greedy answer, the others teacher-forced" if generation else ""))


def _y_range(edited: list[tuple[float, float]], unedited: list[tuple[float, float]],
             unedited_means: list[float]) -> tuple[tuple[float, float], str | None]:
    """A panel's y-limits fitted to its lines with their bands, so differences of a point or two
    show; the unedited line is inside them unless it would stretch the axis more than FAR_UNEDITED
    times, when the panel says where it is instead (the second value)."""
    lo, hi = min(a for a, _ in edited), max(b for _, b in edited)
    note = None
    if unedited:
        ulo, uhi = min(a for a, _ in unedited), max(b for _, b in unedited)
        if max(hi, uhi) - min(lo, ulo) <= FAR_UNEDITED * max(hi - lo, MIN_SPAN):
            lo, hi = min(lo, ulo), max(hi, uhi)
        else:
            where = "below" if uhi < lo else "above" if ulo > hi else "outside"
            low, high = min(unedited_means), max(unedited_means)
            value = f"{low:.1f}" if f"{low:.1f}" == f"{high:.1f}" else f"{low:.1f}-{high:.1f}"
            note = f"unedited model: {value}, {where} this axis"
    middle, half = (lo + hi) / 2, max(hi - lo, MIN_SPAN) / 2 * (1 + 2 * Y_PAD)
    return (max(middle - half, Y_LIMITS[0]), min(middle + half, Y_LIMITS[1])), note


def _draw_line(ax, xs: list[float], ys: list[float], ses: list[float | None], label: str, style: dict[str, Any]):
    """The line and its band of ± 1 standard error (none at a point without one); its extent with the band."""
    ax.plot(xs, ys, label=label, **style)
    lows = [y - (e or 0.0) for y, e in zip(ys, ses)]
    highs = [y + (e or 0.0) for y, e in zip(ys, ses)]
    ax.fill_between(xs, lows, highs, color=style["color"], alpha=0.15 if style.get("linestyle") != "--" else 0.1,
                    linewidth=0)
    return min(lows), max(highs)


def _draw_panel(ax, header: list[str], rows: list[list[Any]], name: str, order: dict[str, int]) -> None:
    col, se_col, x, source = (header.index(c) for c in (name, f"{name}{SE}", TOTAL_EDITS, "source"))
    extents: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    unedited_means: list[float] = []
    for label in dict.fromkeys(r[0] for r in rows):
        mine = sorted((r for r in rows if r[0] == label and r[col] is not None), key=lambda r: r[x])
        if not mine:
            continue
        unedited = mine[0][source] == UNEDITED_SOURCE
        style = _unedited_style(label, order) if unedited else _style(order[label])
        ys = [r[col] for r in mine]
        extents[unedited].append(_draw_line(ax, [r[x] for r in mine], ys, [r[se_col] for r in mine], label, style))
        unedited_means += ys if unedited else []
    limits, note = _y_range(extents[False], extents[True], unedited_means)
    ax.set_ylim(*limits)
    ax.set_title(name if note is None else f"{name}\n({note})", fontsize=10)
    _x_axis(ax, [r[x] for r in rows if r[col] is not None])
    ax.grid(alpha=0.3)


def draw_metrics(header: list[str], rows: list[list[Any]], path: Path, order: dict[str, int],
                 ds_kind: str = "counterfact") -> Path:
    return _save(metrics_figure(header, rows, order, ds_kind), path)


def metrics_figure(header: list[str], rows: list[list[Any]], order: dict[str, int], ds_kind: str = "counterfact"):
    """One panel per metric the runs have (at most MAX_COLUMNS a row), one line per run with its
    band, and the unedited model dashed; each panel's y-axis fitted to what it shows."""
    Figure = _figure_class()
    edited = [r for r in rows if r[header.index("source")] != UNEDITED_SOURCE]
    drawn = [name for name in panels() if name in header and any(r[header.index(name)] is not None for r in edited)]
    nrows, ncols = _grid(len(drawn), MAX_COLUMNS)
    fig = Figure(figsize=(3.5 * ncols, 3.1 * nrows + 1.0), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).flatten()
    for ax, name in zip(axes, drawn):
        _draw_panel(ax, header, rows, name, order)
    for ax in axes[len(drawn):]:
        ax.set_visible(False)
    if not any(r[header.index("source")] == "curve" for r in rows):  # lone dots: from 0 edits, not ±0.16
        for ax in axes:
            ax.set_xlim(0, 1.1 * max(1, *(r[header.index(TOTAL_EDITS)] for r in rows)))
    for ax in axes[::ncols]:
        ax.set_ylabel("%")
    _legend(fig, axes[:len(drawn)])
    fig.suptitle(_metrics_title(rows, header, ds_kind), wrap=True)
    return fig


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
        _x_axis(ax, [r[x] for r in rows])
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
            s.notes.append(f"{METRICS_FIGURE}: only the final point (the run has no {RunFolder.CURVES_DIR}/ points); "
                           f"{CURVE_HINT}")
            continue
        why = ("the run is incomplete" if not s.complete
               else f"{RunFolder.COMPLETE} does not say how many edits were made")
        s.notes.append(f"not in {METRICS_FIGURE}: no curve points and no final point ({why}); {CURVE_HINT}")


def write_figures(summaries: Sequence[RunSummary], out_dir: str | Path, downstream_metric: str = "f1",
                  baseline: Baseline | None = None) -> list[Path]:
    """Both figures (where the runs have points) and their CSVs under ``out_dir``; the paths written.
    The unedited model's line comes from ``baseline`` (``--baseline``), else each run's pre-edit scores.
    Curve files left out are named in the runs' ``warnings``, runs without curve points in ``notes``."""
    if downstream_metric not in DOWNSTREAM_METRICS:
        raise PlotError(f"--downstream_metric must be one of {', '.join(DOWNSTREAM_METRICS)}, got {downstream_metric!r}")
    out_dir = Path(out_dir)
    order = {run_label(s, summaries): i for i, s in enumerate(summaries)}  # a run looks the same in both figures
    written: list[Path] = []
    header, rows = metrics_table(summaries, baseline)
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
