"""The printed report: the runs, one paper table per dataset kind (and its generation-based one),
and each run's downstream table; columns padded to their widest cell."""
from __future__ import annotations

import math
from collections.abc import Sequence

from experiments.ds_kinds import DsKind, all_kinds
from reporting.errors import listing
from reporting.reading import DOWNSTREAM_METRICS
from reporting.summary import RunSummary
from util.total_edits import TOTAL_EDITS


def anchor_cell(s: RunSummary) -> str:
    """The edits norm anchoring dropped, for a table cell: '-' without anchoring, '?' when unrecorded,
    'N (k of n batches)' when only some batches counted them."""
    a = s.norm_anchor
    if a is None:
        return "-"
    if a["dropped"] is None:
        return "?"
    partial = a["batches_counted"] < a["batches"]
    return f"{a['dropped']}" + (f" ({a['batches_counted']} of {a['batches']} batches)" if partial else "")


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], n_label_columns: int = 1) -> str:
    """Columns padded to their widest cell: label columns left-aligned, the numbers right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = [str(c).ljust(w) if i < n_label_columns else str(c).rjust(w)
                 for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _cell(pair: tuple[float, float] | None) -> str:
    if pair is None:
        return "-"
    mean, std = pair
    return f"{mean:.2f}" if not math.isfinite(std) else f"{mean:.2f} ± {std:.2f}"


def _run_line(s: RunSummary) -> str:
    c = s.config
    limit = c.get("dataset_size_limit")
    parts = [f"model={c.get('model_name', '?')}", f"ds={c.get('ds_name', '?')}",
             f"edits/batch={c.get('num_edits', '?')}", f"size_limit={'all' if limit is None else limit}",
             f"cases={s.n_cases}"]
    if s.n_cases and s.kind and s.kind.generation:
        parts.append(f"generation cases={s.n_generation_cases}")
    if s.norm_anchor is not None:
        parts.append(f"edits dropped by norm anchoring={anchor_cell(s)}")
    return f"{s.label}  [{s.status}]  " + ", ".join(parts) + f"  ({s.path})"


def _metrics_table(summaries: Sequence[RunSummary], kind: DsKind, generation_eval: bool = False) -> str:
    columns = kind.generation_eval_columns if generation_eval else kind.columns
    # An anchored run's dropped edits beside its numbers: they were counted as edits but never asked for.
    anchored = any(s.norm_anchor is not None for s in summaries)
    rows = []
    for s in summaries:
        mark = "" if s.complete else " (INCOMPLETE)"
        if s.pre is not None:
            rows.append([f"{s.label} pre-edited", str(s.n_pre_cases), *(["-"] if anchored else []),
                         *(_cell(s.pre.get(k)) for k in columns)])
        if s.n_cases:
            rows.append([f"{s.label}{mark}", str(s.n_cases), *([anchor_cell(s)] if anchored else []),
                         *(_cell(s.post.get(k)) for k in columns)])
    title = f"{kind.title}: mean ± std over cases ({kind.scale})"
    if generation_eval:
        title = (f"{kind.title}, generation-based (--generation_eval): greedy answer up to a period or newline; "
                 "exact match and token F1 after SQuAD normalisation, ×100, mean ± std over cases")
    header = ["run", "cases", *(["dropped by anchoring"] if anchored else []), *columns.values()]
    return title + "\n" + format_table(header, rows)


def _downstream_table(s: RunSummary) -> str:
    points = s.downstream
    tasks = sorted({t for p in points for t in p["tasks"]})
    header = ["task", "metric", *(f"{p[TOTAL_EDITS]} edits" for p in points)]
    rows = []
    for task in tasks:
        for metric in DOWNSTREAM_METRICS:
            cells = []
            for p in points:
                value = p["tasks"].get(task, {}).get(metric)
                cells.append("-" if value is None else f"{value:.3f}")
            rows.append([task, metric, *cells])
    n = sorted({p["tasks"][t].get("n") for p in points for t in p["tasks"]} - {None})
    title = (f"Downstream {s.label}{'' if s.complete else ' (INCOMPLETE)'}: zero-shot, {s.downstream_protocol} "
             f"protocol, 0-1 (n per task: {listing([str(x) for x in n])})")
    return title + "\n" + format_table(header, rows, n_label_columns=2)


def _has_generation_eval(s: RunSummary) -> bool:
    return any(key in (s.post or {}) or key in (s.pre or {}) for key in ("rewrite_gen_em", "rewrite_gen_f1"))


def format_report(summaries: Sequence[RunSummary], skipped: Sequence[str] = ()) -> str:
    """The whole printed report: run list, one paper table per dataset kind, downstream tables."""
    blocks = ["Runs\n" + "\n".join("  " + _run_line(s) for s in summaries)]
    for s in summaries:
        blocks[0] += "".join(f"\n    note: {n}" for n in s.notes)
    for line in skipped:
        blocks[0] += f"\n  {line}"
    for kind in all_kinds():
        chosen = [s for s in summaries if s.ds_kind == kind.name and (s.n_cases or s.pre is not None)]
        if chosen:
            blocks.append(_metrics_table(chosen, kind))
        if any(_has_generation_eval(s) for s in chosen):
            blocks.append(_metrics_table(chosen, kind, generation_eval=True))
    blocks.extend(_downstream_table(s) for s in summaries if s.downstream)
    return "\n\n".join(blocks) + "\n"

