"""One run folder summarized: its cases' metrics (post and pre, ``experiments.metrics.summarize_cases``),
its downstream points, what norm anchoring did, and its label; and the runs a command asks for.

This module knows no method: a run's variant label is the one its config.json holds (the runner
writes it), or for folders from before that, the one ``experiments.algorithms`` reads from its
hyperparameters.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from experiments.algorithms import anchors_norms, variant_label
from experiments.ds_kinds import DsKind, ds_names, kind_named
from experiments.metrics.summary import summarize_cases
from experiments.run_folder import RunFolder
from reporting.case_files import CaseFile, ds_kind_of, pre_edit_posts, read_cases, usable_cases
from reporting.errors import SummaryError
from reporting.finding import find_runs
from reporting.reading import (
    final_counts,
    is_count,
    read_batch_reports,
    read_config,
    read_downstream,
    read_params,
    settings_of,
)

Stat = dict[str, float | None]  # {"mean": x, "std": y}; null where undefined (e.g. Score's std)


def finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def stat(pair: tuple[float, float]) -> Stat:
    return {"mean": finite(pair[0]), "std": finite(pair[1])}


@dataclass
class RunSummary:
    """Everything the report shows about one run folder."""

    alg_name: str
    run: str
    path: Path
    complete: bool
    config: dict[str, Any]
    ds_kind: str | None  # the DsKind's name
    n_cases: int = 0
    n_generation_cases: int = 0
    n_pre_cases: int = 0
    post: dict[str, tuple[float, float]] = field(default_factory=dict)
    pre: dict[str, tuple[float, float]] | None = None
    case_time_s: tuple[float, float] | None = None
    downstream: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Files left out, one line each (which file, what is wrong, the fix); main() prints them.
    warnings: list[str] = field(default_factory=list)
    final_total_edits: int | None = None  # run_complete.json: edits applied when the run finished
    final_num_batches: int | None = None
    variant: str = ""  # what sets the run apart from its method's plain form (e.g. "+NAS"): _variant
    norm_anchor: dict[str, Any] | None = None  # with anchoring: what it did over the batches (_anchor_counts)
    # Per-case metrics by case id, kept for the figures (standard errors, the unedited model on the
    # same cases); not in the summary files, which hold the means and stds.
    post_cases: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    pre_cases: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        return f"{self.alg_name}/{self.run}" + (f" {self.variant}" if self.variant else "")

    @property
    def kind(self) -> DsKind | None:
        return kind_named(self.ds_kind) if self.ds_kind else None

    @property
    def downstream_protocol(self) -> str:
        """How its general-capability tasks were scored (runs from before the setting: likelihood)."""
        return str(self.config.get("downstream_protocol", "likelihood"))

    @property
    def status(self) -> str:
        return "complete" if self.complete else "INCOMPLETE"

    def paper(self, metrics: dict[str, tuple[float, float]] | None) -> dict[str, Stat] | None:
        if metrics is None or self.kind is None:
            return None
        return {name: stat(metrics[key]) for key, name in self.kind.columns.items() if key in metrics}

    def to_json(self) -> dict[str, Any]:
        return {
            "alg_name": self.alg_name,
            "run": self.run,
            "path": str(self.path),
            "status": self.status,
            **{key: self.config.get(key) for key in ("model_name", "ds_name", "num_edits", "dataset_size_limit")},
            "ds_kind": self.ds_kind,
            "downstream_protocol": self.downstream_protocol if self.downstream else None,
            "n_cases": self.n_cases,
            "n_generation_cases": self.n_generation_cases,
            "n_pre_cases": self.n_pre_cases,
            "paper": {"post": self.paper(self.post) if self.n_cases else None, "pre": self.paper(self.pre)},
            "post": {k: stat(v) for k, v in self.post.items()},
            "pre": None if self.pre is None else {k: stat(v) for k, v in self.pre.items()},
            "norm_anchor": self.norm_anchor,
            "case_time_s": None if self.case_time_s is None else stat(self.case_time_s),
            "downstream": self.downstream,
            "notes": self.notes,
            "warnings": self.warnings,
        }


def _variant(config: dict[str, Any], params: dict[str, Any]) -> str:
    """The run's own label (config.json's "variant", written by the runner); for a run from before it,
    what experiments.algorithms reads from its hyperparameters."""
    label = config.get("variant")
    return label if isinstance(label, str) else variant_label(params)


def _anchor_counts(folder: RunFolder, params: dict[str, Any], notes: list[str],
                   warnings: list[str]) -> dict[str, Any] | None:
    """With norm anchoring: the edits it dropped (z = h0, no change asked) and rescaled, summed over
    the batches whose report counted them; None without anchoring. Batches reported before the count
    existed hold no field: their drops are unknown, not zero, and the note says how many."""
    if not anchors_norms(params):
        return None
    reports = read_batch_reports(folder, warnings)
    counted = [r for r in reports if is_count(r.get("anchor_dropped")) and is_count(r.get("anchor_rescaled"))]
    if len(counted) < len(reports) or not reports:
        notes.append(f"norm anchoring: dropped edits counted in {len(counted)} of {len(reports)} batch reports "
                     f"({RunFolder.EDIT_REPORTS}; batches edited before the count was recorded hold none)")
    return {"dropped": sum(r["anchor_dropped"] for r in counted) if counted else None,
            "rescaled": sum(r["anchor_rescaled"] for r in counted) if counted else None,
            "dropped_case_ids": [i for r in counted for i in (r.get("anchor_dropped_case_ids") or [])],
            "batches_counted": len(counted), "batches": len(reports)}


def _summarize(posts: Sequence[dict[str, Any]], ds_kind: str, where: str) -> dict[str, tuple[float, float]]:
    try:
        return summarize_cases(posts, ds_kind)  # type: ignore[arg-type]
    except ValueError as exc:
        raise SummaryError(f"{where}: {exc}") from exc


def _case_stats(summary: RunSummary, cases: Sequence[CaseFile]) -> None:
    posts = [c.data["post"] for c in cases]
    summary.post_cases = {c.case_id: c.data["post"] for c in cases}
    summary.n_cases = len(cases)
    summary.n_generation_cases = sum("ngram_entropy" in p for p in posts)
    summary.post = _summarize(posts, summary.ds_kind, f"{summary.path} (post)")
    times = [float(c.data["time"]) for c in cases if isinstance(c.data.get("time"), (int, float))]
    if times:
        summary.case_time_s = (float(np.mean(times)), float(np.std(times)))


def _pre_stats(summary: RunSummary, pre_cases: dict[str, dict[str, Any]]) -> None:
    summary.pre_cases = pre_cases
    summary.n_pre_cases = len(pre_cases)
    summary.pre = _summarize(list(pre_cases.values()), summary.ds_kind, f"{summary.path} (pre)")


def _nothing_usable(run_dir: Path, n_files: int, warnings: Sequence[str]) -> SummaryError:
    """Every case file (or every file at all) is damaged: a refusal, not a silent empty row."""
    what = f"none of its {n_files} case files" if n_files else "none of its files"
    return SummaryError(f"{run_dir}: {what} can be summarized ({len(warnings)} damaged); the first: {warnings[0]}")


def _nothing_to_summarize(folder: RunFolder, warnings: Sequence[str]) -> SummaryError:
    if warnings:
        return _nothing_usable(folder.path, 0, warnings)
    return SummaryError(f"{folder.path} has no case files ({RunFolder.CASE_NAME}), no pre-edit scores "
                        f"and no downstream results yet; nothing to summarize"
                        + ("" if folder.is_complete else " (the run is incomplete: editing may still be going on)"))


def _cases(folder: RunFolder, settings: dict[str, Any], first_n_cases: int | None, notes: list[str],
           warnings: list[str]) -> tuple[list[CaseFile], str | None]:
    """The usable cases and the run's dataset kind; refused when case files exist but none can be read."""
    cases, n_files = read_cases(folder, first_n_cases, notes, warnings)
    ds_kind = ds_kind_of(settings, [c.data["post"] for c in cases])
    if cases and ds_kind is None:
        raise SummaryError(f"{folder.path}: cannot tell the dataset: ds_name={settings.get('ds_name')!r} in "
                           f"{RunFolder.CONFIG} (not one of {', '.join(ds_names())}) and the case files' metrics are "
                           "of no known kind")
    cases = usable_cases(cases, ds_kind, warnings) if cases else []
    if n_files and not cases:
        raise _nothing_usable(folder.path, n_files, warnings)
    if len(cases) < n_files:
        notes.append(f"skipped {n_files - len(cases)} of {n_files} case files (unreadable or of the wrong shape)")
    return cases, ds_kind


def summarize_run(run_dir: str | Path, first_n_cases: int | None = None) -> RunSummary:
    """Read one run folder and summarize its cases (post and pre) and downstream points.

    A damaged config.json is refused; a damaged case, pre-edit, downstream or marker file among
    good ones is left out and named in ``warnings`` (the counts say what was summarized)."""
    folder = RunFolder(Path(run_dir))
    if first_n_cases is not None and first_n_cases < 1:
        raise SummaryError(f"--first_n_cases must be >= 1, got {first_n_cases}")
    notes: list[str] = []
    warnings: list[str] = []
    complete = folder.is_complete
    if not complete:
        notes.append(f"INCOMPLETE: no {RunFolder.COMPLETE} (still running, stopped early or crashed); "
                     "numbers cover the cases scored so far")
    config = read_config(folder, notes)
    settings = settings_of(config)
    cases, ds_kind = _cases(folder, settings, first_n_cases, notes, warnings)
    pre_cases = pre_edit_posts(folder, cases, ds_kind, first_n_cases, notes, warnings)
    downstream = read_downstream(folder, warnings)
    if not cases and not pre_cases and not downstream:
        raise _nothing_to_summarize(folder, warnings)
    final_edits, final_batches = final_counts(folder, warnings) if complete else (None, None)
    params = read_params(folder)
    summary = RunSummary(alg_name=folder.alg_name, run=folder.name, path=folder.path, complete=complete,
                         config=settings, ds_kind=ds_kind or ds_kind_of({}, list(pre_cases.values())),
                         downstream=downstream, notes=notes, warnings=warnings, final_total_edits=final_edits,
                         final_num_batches=final_batches, variant=_variant(config, params),
                         norm_anchor=_anchor_counts(folder, params, notes, warnings))
    if cases:
        _case_stats(summary, cases)
    else:
        notes.append("no case files yet: only the pre-edited row and/or downstream results")
    if pre_cases:
        _pre_stats(summary, pre_cases)
    return summary


def summarize_runs(results_dir: str | Path, dir_names: Sequence[str], runs: Sequence[str] | None = None,
                   first_n_cases: int | None = None) -> tuple[list[RunSummary], list[str]]:
    """Summaries of the chosen runs, and lines about runs skipped for having nothing to show.

    A run named in ``runs`` must have something to summarize; when every run is taken (``runs``
    None), an empty one (e.g. just started) is skipped with a line saying so.
    """
    summaries, skipped = [], []
    for run_dir in find_runs(results_dir, dir_names, runs):
        try:
            summaries.append(summarize_run(run_dir, first_n_cases))
        except SummaryError as exc:
            if runs is not None or "nothing to summarize" not in str(exc):
                raise
            skipped.append(f"skipped {run_dir.parent.name}/{run_dir.name}: {exc}")
    if not summaries:
        raise SummaryError("no run has anything to summarize yet:\n  " + "\n  ".join(skipped))
    return summaries, skipped
