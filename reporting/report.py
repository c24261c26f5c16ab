"""``summarize.py --report``: one markdown file with a run's settings, the summary table and the figures.

Several runs (``--runs``, or several ``--dir_name``) share one report: their settings side by
side, one table per dataset, the downstream tables, and the figures of ``--plot`` (linked
relative to the report, so the folder can be moved or published as it is).
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.ds_kinds import all_kinds
from experiments.run_folder import RunFolder
from reporting.reading import DOWNSTREAM_METRICS
from reporting.summary import RunSummary
from reporting.tables import anchor_cell
from util.atomic_files import write_text_atomic
from util.total_edits import TOTAL_EDITS, total_edits_of

# The settings worth a row in the report (config.json "args"), in this order; the rest follow.
KEY_SETTINGS = ("alg_name", "model_name", "hparams_fname", "ds_name", "ds_file", "dataset_size_limit",
                "dataset_offset", "num_edits", "dtype", "seed", "downstream_eval_steps", "curve_every")


# Under each figure, what its marks mean (by the file name's first word).
FIGURE_NOTES = {"metrics": "Bands: ± 1 standard error of each line's mean over its cases; runs scored on the same "
                           "cases differ with a smaller, paired error, so overlapping bands do not mean no difference. "
                           "Dashed: the unedited model on the same cases. ",
                "downstream": "No bands: the task files hold no per-example results. "}


def _md_cell(value: Any) -> str:
    text = "—" if value is None or value == "" else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(map(_md_cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows]
    return "\n".join(lines)


def _mean_std(pair: tuple[float, float] | None) -> str:
    if pair is None:
        return "—"
    mean, std = pair
    return f"{mean:.2f}" if not math.isfinite(std) else f"{mean:.2f} ± {std:.2f}"


def _config_file(s: RunSummary) -> dict[str, Any]:
    """The whole config.json (versions, continuation); {} when unreadable: summarize_run has already
    refused a damaged one, and the report must not fail on a file changed since."""
    try:
        raw = RunFolder(s.path).read_config() or {}
    except (OSError, ValueError):  # ValueError: invalid JSON or not UTF-8
        return {}
    return raw if isinstance(raw, dict) else {}


def _params_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig").strip()
    except (OSError, UnicodeDecodeError) as err:
        return f"(not shown: {path.name} cannot be read as UTF-8 text: {err})"


def _settings(s: RunSummary) -> str:
    args = {k: v for k, v in s.config.items() if v not in (None, [], False)}
    ordered = [k for k in KEY_SETTINGS if k in args] + sorted(k for k in args if k not in KEY_SETTINGS)
    rows = [[f"`{k}`", f"`{args[k]}`"] for k in ordered]
    raw = _config_file(s)
    c = raw.get("continued_from")
    if isinstance(c, dict) and c:  # total_edits_of: runs continued before the rename wrote "num_edits"
        rows.append(["continued from", f"`{c.get('editor_state')}` ({total_edits_of(c)} edits before this run)"])
    versions = raw.get("versions")
    for name, version in (versions if isinstance(versions, dict) else {}).items():
        rows.append([f"{name} version", f"`{version}`"])
    text = f"### {s.label} ({s.status})\n\nFolder: `{s.path}`\n\n" + md_table(["setting", "value"], rows)
    params = RunFolder(s.path).params_file
    if params.is_file():
        text += (f"\n\n<details><summary>Hyperparameters ({RunFolder.PARAMS})</summary>\n\n```json\n"
                 + _params_text(params) + "\n```\n\n</details>")
    return text


def _results(summaries: Sequence[RunSummary]) -> list[str]:
    blocks = []
    for kind in all_kinds():
        columns, rows = kind.columns, []
        for s in summaries:
            if s.ds_kind != kind.name:
                continue
            if s.pre is not None:
                rows.append([f"{s.label} pre-edited", s.n_pre_cases, *(_mean_std(s.pre.get(k)) for k in columns)])
            if s.n_cases:
                mark = "" if s.complete else " (INCOMPLETE)"
                rows.append([f"{s.label}{mark}", s.n_cases, *(_mean_std(s.post.get(k)) for k in columns)])
        if rows:
            blocks.append(f"### {kind.title}\n\nMean ± std over cases ({kind.scale}).\n\n"
                          + md_table(["run", "cases", *columns.values()], rows))
    for s in summaries:
        if not s.downstream:
            continue
        tasks = sorted({t for p in s.downstream for t in p["tasks"]})
        header = ["task", "metric", *(f"{p[TOTAL_EDITS]} edits" for p in s.downstream)]
        rows = []
        for task in tasks:
            for metric in DOWNSTREAM_METRICS:
                values = [p["tasks"].get(task, {}).get(metric) for p in s.downstream]
                rows.append([task, metric, *("—" if v is None else f"{v:.3f}" for v in values)])
        blocks.append(f"### Downstream: {s.label}\n\nZero-shot general-capability tasks, 0-1.\n\n" + md_table(header, rows))
    return blocks


def _overview(summaries: Sequence[RunSummary]) -> str:
    """One row per run; with a column of the edits norm anchoring dropped when a run anchored (they
    count as edits but asked the model for no change)."""
    anchored = any(s.norm_anchor is not None for s in summaries)
    header = ["run", "status", "model", "dataset", "edits/batch", "cases",
              *(["edits dropped by norm anchoring"] if anchored else [])]
    rows = [[s.label, s.status, s.config.get("model_name"), s.config.get("ds_name"), s.config.get("num_edits"),
             s.n_cases, *([anchor_cell(s)] if anchored else [])] for s in summaries]
    return md_table(header, rows)


def format_markdown_report(summaries: Sequence[RunSummary], report_path: Path, figures: Sequence[Path] = (),
                           skipped: Sequence[str] = (), command: str | None = None) -> str:
    runs = ", ".join(s.label for s in summaries)
    parts = [f"# Sequential editing report: {runs}",
             f"Written {time.strftime('%Y-%m-%d %H:%M')}" + (f" by `{command}`" if command else "") + "."]
    parts.append("## Runs\n\n" + _overview(summaries))
    notes = [f"- {s.label}: {n}" for s in summaries for n in [*s.notes, *s.warnings]]
    notes += [f"- {line}" for line in skipped]
    if notes:
        parts.append("Notes:\n\n" + "\n".join(notes))
    parts.append("## Results\n\n" + ("\n\n".join(_results(summaries)) or "No scored cases yet."))
    images = [p for p in figures if p.suffix == ".png"]
    if images:
        here = report_path.parent
        lines = []
        for png in images:
            rel = Path(os.path.relpath(png, here)).as_posix()
            csv_rel = Path(os.path.relpath(png.with_suffix(".csv"), here)).as_posix()
            title = png.stem.replace("_", " ")
            lines.append(f"### {title}\n\n![{title}]({rel})\n\n" + FIGURE_NOTES.get(png.stem.split("_")[0], "")
                         + f"The numbers plotted: [{csv_rel}]({csv_rel})")
        parts.append("## Figures\n\n" + "\n\n".join(lines))
    parts.append("## Settings\n\n" + "\n\n".join(_settings(s) for s in summaries))
    return "\n\n".join(parts) + "\n"


def write_report(summaries: Sequence[RunSummary], path: str | Path, figures: Sequence[Path] = (),
                 skipped: Sequence[str] = (), command: str | None = None) -> Path:
    path = Path(path)
    return write_text_atomic(path, format_markdown_report(summaries, path, figures, skipped, command))
