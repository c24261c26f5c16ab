"""Summaries of run folders: the paper's table per run, runs side by side, and downstream tables.

A run folder ``<results>/<ALG>/run_NNN/`` (written by ``experiments.evaluate``) holds
``config.json``, one ``<num_edits>_edits-case_<id>.json`` per scored case (``post``: metrics of
the edited model, optionally ``pre``: the same on the unedited model), ``downstream/edits_*.json``
(one general-capability evaluation point each) and ``run_complete.json`` once it has finished.
The numbers come from :func:`experiments.metrics.summarize_cases`; this module only finds,
reads, lines up and writes them. ``summarize.py`` at the repository root is its command line.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from experiments.ds_kinds import DsKind, all_kinds, ds_names, kind_named, kind_of, kind_of_post
from experiments.metrics.summary import (
    METRIC_DESCRIPTIONS,
    json_type,
    post_problem,
    summarize_cases,
)
from experiments.run_files import COMPLETE_MARKER, EDIT_REPORTS, RUN_PATTERN
from util.atomic_files import write_text_atomic
from util.total_edits import TOTAL_EDITS, total_edits_of, with_total_edits

CASE_FILE = re.compile(r"^(\d+)_edits-case_(.+)\.json$")  # experiments.run_files.case_file names
PRE_EDIT_DIR, PRE_EDIT_FILE = "pre_edit", re.compile(r"^case_(.+)\.json$")  # --eval_pre_edit scores
DOWNSTREAM_DIR, DOWNSTREAM_FILE = "downstream", re.compile(r"^edits_\d+\.json$")
DOWNSTREAM_METRICS = ("accuracy", "f1", "mcc")
HELP_WIDTH = 100

# What every key of the JSON/CSV output means; the per-case metric keys are in METRIC_DESCRIPTIONS.
RUN_KEY_DESCRIPTIONS: dict[str, str] = {
    "alg_name": "Editing method (the results/<ALG> folder).",
    "run": "Run folder name (run_NNN).",
    "status": "'complete' when run_complete.json exists; 'INCOMPLETE' otherwise (still running, stopped "
              "with --stop_after_batches, or crashed): its numbers cover only the cases scored so far.",
    "path": "The run folder.",
    "model_name": "Model edited (config.json).",
    "ds_name": "Dataset (config.json): " + ", ".join(f"{'/'.join(k.loaders)} = {k.title}" for k in all_kinds()) + ".",
    "downstream_protocol": "How the general-capability tasks were scored: original (the original code's prompts, "
                           "greedy answers, weighted F1) or likelihood; null without downstream points.",
    "ds_kind": "Which paper table the run belongs to: " + " or ".join(k.name for k in all_kinds()) + ".",
    "num_edits": "Edits per batch (config.json; the paper: 100).",
    "dataset_size_limit": "Records edited in all (config.json; null = the whole dataset).",
    "n_cases": "Cases summarized (case files read, after --first_n_cases).",
    "n_generation_cases": "Cases that carry generation metrics (Fluency/Consistency are averaged over these).",
    "n_pre_cases": "Cases with pre-edit scores (the 'pre-edited' row).",
    "post": "Metrics of the edited model after all edits, each {mean, std} over cases (the paper's table row); "
            "an undefined std (Score's) is null in the JSON and empty in the CSV.",
    "pre": "The same metrics on the unedited model (case files' 'pre', else the run's pre_edit/ folder); "
           "null when the run did not score the unedited model (--eval_pre_edit).",
    "norm_anchor": "Runs with norm anchoring (params.json norm_anchor): {dropped, rescaled, dropped_case_ids, "
                   "batches_counted, batches} summed over edit_reports.json. A dropped edit (|v*| > 2 x the anchor) "
                   "asked the model for no change, although the run counts it as made. dropped is null when no "
                   "batch recorded it (runs made before the count); null for runs without anchoring.",
    "case_time_s": "Seconds of the edit of the batch a case was in (the case files' 'time'; every case of a "
                   "batch has the same), {mean, std}; not a scoring time.",
    "paper": "The paper's columns for this dataset, {column: {mean, std}}, for post and pre.",
    "downstream": "General-capability evaluation points, by number of edits so far: "
                  "[{total_edits, batch_index, tasks: {task: {accuracy, f1, mcc, n}}}].",
    "notes": "Anything the reader should know about this run (incomplete, mixed files, missing parts).",
    "warnings": "Files of the run left out of the summary (unreadable or of the wrong shape), each named with "
                "what is wrong and the fix.",
    "skipped (top level)": "Runs left out because they have nothing to summarize yet (only with no --runs).",
    "first_n_cases (top level)": "The --first_n_cases used (null = all cases).",
}
DOWNSTREAM_DESCRIPTIONS: dict[str, str] = {
    "total_edits": "Edits applied before this evaluation point (0 = the unedited model).",
    "batch_index": "Edit batches applied before this evaluation point.",
    "accuracy": "Zero-shot accuracy: the label word with the higher mean log-likelihood is the answer (0-1).",
    "f1": "F1 of the positive class for two-class tasks, macro F1 otherwise (0-1).",
    "mcc": "Matthews correlation coefficient (-1 to 1; 0 = no better than a constant answer).",
    "n": "Examples evaluated for the task.",
}


class SummaryError(ValueError):
    """A folder or file that cannot be summarized; the message says what exists instead."""


Stat = dict[str, float | None]  # {"mean": x, "std": y}; null where undefined (e.g. Score's std)


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
    variant: str = ""  # what sets the run apart from its method's plain form (e.g. "+NAS"), from params.json
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
        return {name: _stat(metrics[key]) for key, name in self.kind.columns.items() if key in metrics}

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
            "post": {k: _stat(v) for k, v in self.post.items()},
            "pre": None if self.pre is None else {k: _stat(v) for k, v in self.pre.items()},
            "norm_anchor": self.norm_anchor,
            "case_time_s": None if self.case_time_s is None else _stat(self.case_time_s),
            "downstream": self.downstream,
            "notes": self.notes,
            "warnings": self.warnings,
        }


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _stat(pair: tuple[float, float]) -> Stat:
    return {"mean": _finite(pair[0]), "std": _finite(pair[1])}


# --- finding runs ---------------------------------------------------------------------------------


def _listing(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "none"


def _run_names(alg_dir: Path) -> list[str]:
    return sorted(p.name for p in alg_dir.iterdir() if p.is_dir() and RUN_PATTERN.match(p.name))


def _normalize_run_name(name: str) -> str:
    name = name.strip()
    return f"run_{int(name):03d}" if name.isdigit() else name  # "--runs=0,1" means run_000,run_001


def find_runs(results_dir: str | Path, dir_names: Sequence[str], runs: Sequence[str] | None = None) -> list[Path]:
    """The run folders to summarize: ``runs`` of each ``dir_name`` (every ``run_*`` when None)."""
    results_dir = Path(results_dir)
    if results_dir.exists() and not results_dir.is_dir():
        raise SummaryError(f"results folder {results_dir} is a file, not a folder (pass --results_dir=<folder>)")
    if not results_dir.is_dir():
        raise SummaryError(f"results folder {results_dir} does not exist (pass --results_dir)")
    if not dir_names:
        raise SummaryError("name at least one algorithm folder with --dir_name (e.g. --dir_name=NSE)")
    if runs is not None and not runs:
        raise SummaryError("--runs names no run; pass run folders (--runs=run_000,run_001 or --runs=0,1), "
                           "or leave --runs out for every run")
    algs = sorted(p.name for p in results_dir.iterdir() if p.is_dir() and _run_names(p))
    found: list[Path] = []
    for dir_name in dir_names:
        if Path(dir_name).name != dir_name or dir_name in (".", ".."):  # "../x", "a/b", "/abs": another folder
            raise SummaryError(f"--dir_name={dir_name!r} is a path; it names algorithm folders under the results "
                               f"folder (e.g. --dir_name=NSE); for runs elsewhere pass --results_dir=<their parent>")
        alg_dir = results_dir / dir_name
        if not alg_dir.is_dir():
            raise SummaryError(f"no folder {dir_name!r} under {results_dir}; algorithms with runs there: "
                               f"{_listing(algs)}")
        existing = _run_names(alg_dir)
        if runs is None:
            if not existing:
                raise SummaryError(f"{alg_dir} holds no run_NNN folders")
            found.extend(alg_dir / name for name in existing)
            continue
        for name in map(_normalize_run_name, runs):
            if name not in existing:
                raise SummaryError(f"{dir_name} has no run {name!r} in {alg_dir}; its runs: {_listing(existing)}")
            found.append(alg_dir / name)
    return found


# --- reading one run ------------------------------------------------------------------------------


class FileProblem(SummaryError):
    """One file of a run that cannot be used as it is; ``str()`` is "<path> is <what is wrong>"."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path} is {problem}")
        self.path = path


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (some editors write one) is fine
    except UnicodeDecodeError as exc:
        raise FileProblem(path, f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}: "
                                "binary, or another encoding such as latin-1)") from None
    except OSError as exc:
        raise FileProblem(path, f"unreadable ({exc.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise FileProblem(path, f"not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _skip(warnings: list[str], err: FileProblem, consequence: str, fix: str) -> None:
    """A bad file among good ones is left out with one line: a whole run is not lost to one file."""
    warnings.append(f"{err}; skipped: {consequence} ({fix})")


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _case_sort_key(case_id: Any) -> tuple[int, Any]:
    text = str(case_id)
    return (0, int(text)) if text.lstrip("-").isdigit() else (1, text)


CONFIG_FIX = "restore it from a copy, or move it out of the run folder to summarize the run without its settings"
# The settings the summary reads from config.json, and the JSON type each must have (or null).
CONFIG_TYPES: dict[str, tuple[type, str]] = {"ds_name": (str, "string"), "model_name": (str, "string"),
                                             "num_edits": (int, "whole number"),
                                             "dataset_size_limit": (int, "whole number")}


def _config_problem(raw: Any) -> str | None:
    if not isinstance(raw, dict):
        return f"a JSON {json_type(raw)}, not the object experiments.evaluate writes ({{args, versions, ...}})"
    if "args" in raw and not isinstance(raw["args"], dict):
        return f"not a run's config: its 'args' is a JSON {json_type(raw['args'])}, not an object"
    args = raw.get("args", raw)
    for key, (kind, name) in CONFIG_TYPES.items():
        value = args.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            return f"not a run's config: its {key!r} is a JSON {json_type(value)}, not a {name}"
    return None


def _run_config(run_dir: Path, notes: list[str]) -> dict[str, Any]:
    """The run's settings; a damaged config.json is refused: which table a run belongs to hangs on it."""
    path = run_dir / "config.json"
    if not path.is_file():
        notes.append("no config.json; model and dataset unknown")
        return {}
    try:
        raw = _read_json(path)
    except FileProblem as err:
        raise SummaryError(f"{err}; {CONFIG_FIX}") from None
    problem = _config_problem(raw)
    if problem:
        raise SummaryError(f"{path} is {problem}; {CONFIG_FIX}")
    # The runner saves the CLI flags under "args" (beside versions and context templates).
    return dict(raw.get("args", raw))


def _uses_norm_anchor(run_dir: Path) -> bool:
    """Whether params.json turns norm anchoring on; False when it cannot be read (the resume check
    names a broken one)."""
    try:
        params = _read_json(run_dir / "params.json")
    except FileProblem:  # missing or unreadable: _read_json turns OSError into FileProblem
        return False
    return isinstance(params, dict) and params.get("norm_anchor") is True


def _variant(run_dir: Path) -> str:
    """"+NAS" for a run with norm anchoring, so figures and tables tell it from the plain method."""
    return "+NAS" if _uses_norm_anchor(run_dir) else ""


def _batch_reports(run_dir: Path, warnings: list[str]) -> list[dict[str, Any]]:
    """edit_reports.json's entries, one per batch; [] when missing or damaged (named in warnings)."""
    path = run_dir / EDIT_REPORTS
    if not path.is_file():
        return []
    try:
        reports = _read_json(path)
        if not isinstance(reports, list) or not all(isinstance(r, dict) for r in reports):
            raise FileProblem(path, "not a list of batch reports ([{batch_index, ...}, ...])")
    except FileProblem as err:
        _skip(warnings, err, "the edits norm anchoring dropped are not counted", "restore it from a copy")
        return []
    return reports


def _anchor_counts(run_dir: Path, notes: list[str], warnings: list[str]) -> dict[str, Any] | None:
    """With norm anchoring: the edits it dropped (z = h0, no change asked) and rescaled, summed over
    the batches whose report counted them; None without anchoring. Batches reported before the count
    existed hold no field: their drops are unknown, not zero, and the note says how many."""
    if not _uses_norm_anchor(run_dir):
        return None
    reports = _batch_reports(run_dir, warnings)
    counted = [r for r in reports if _is_count(r.get("anchor_dropped")) and _is_count(r.get("anchor_rescaled"))]
    if len(counted) < len(reports) or not reports:
        notes.append(f"norm anchoring: dropped edits counted in {len(counted)} of {len(reports)} batch reports "
                     f"({EDIT_REPORTS}; batches edited before the count was recorded hold none)")
    return {"dropped": sum(r["anchor_dropped"] for r in counted) if counted else None,
            "rescaled": sum(r["anchor_rescaled"] for r in counted) if counted else None,
            "dropped_case_ids": [i for r in counted for i in (r.get("anchor_dropped_case_ids") or [])],
            "batches_counted": len(counted), "batches": len(reports)}


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


def _ds_kind(config: dict[str, Any], posts: Sequence[Any]) -> str | None:
    """The name of the run's dataset kind: from config.json's ds_name, else by the metrics' shape."""
    if config.get("ds_name") in ds_names():
        return kind_of(config["ds_name"]).name
    kinds = (kind_of_post(post) for post in posts)
    return next((kind.name for kind in kinds if kind), None)


@dataclass
class CaseFile:
    """One readable case file: its case id (from the file name), path and content."""

    case_id: str
    path: Path
    data: dict[str, Any]


CASE_FIX = "restore it from a copy, or move it out of the run folder"


def _case_file_list(run_dir: Path, first_n_cases: int | None, notes: list[str]) -> list[tuple[str, Path]]:
    files = [(m.group(1), m.group(2), p) for p in run_dir.iterdir() if p.is_file() and (m := CASE_FILE.match(p.name))]
    batch_sizes = sorted({int(n) for n, _, _ in files})
    if len(batch_sizes) > 1:
        raise SummaryError(f"{run_dir} mixes case files of runs with {batch_sizes} edits per batch; "
                           "move the stray ones out before summarizing")
    files.sort(key=lambda f: _case_sort_key(f[1]))
    if first_n_cases is not None and len(files) > first_n_cases:
        notes.append(f"first {first_n_cases} of {len(files)} cases (by case_id)")
        files = files[:first_n_cases]
    return [(case_id, path) for _, case_id, path in files]


def _read_case(path: Path) -> dict[str, Any]:
    case = _read_json(path)
    if not isinstance(case, dict):
        raise FileProblem(path, f"a JSON {json_type(case)}, not a case file of experiments.evaluate "
                                "({case_id, post, ...})")
    if not isinstance(case.get("post"), dict):
        found = "no 'post' metrics" if "post" not in case else f"a 'post' that is a JSON {json_type(case['post'])}"
        raise FileProblem(path, f"not a case file of experiments.evaluate: it has {found}, not an object of metrics")
    return case


def _read_cases(run_dir: Path, first_n_cases: int | None, notes: list[str],
                warnings: list[str]) -> tuple[list[CaseFile], int]:
    """The readable case files, by case_id (the one in the file name), the first N if asked; and how
    many files were looked at. Unreadable ones and ones of the wrong shape are skipped, each named."""
    files = _case_file_list(run_dir, first_n_cases, notes)
    cases = []
    for case_id, path in files:
        try:
            cases.append(CaseFile(case_id, path, _read_case(path)))
        except FileProblem as err:
            _skip(warnings, err, "the summary counts the other case files", CASE_FIX)
    return cases, len(files)


def _usable_cases(cases: list[CaseFile], ds_kind: str, warnings: list[str]) -> list[CaseFile]:
    """The cases whose ``post`` summarize_cases can read as ``ds_kind`` metrics; the rest are named."""
    usable = []
    for case in cases:
        problem = post_problem(case.data["post"], ds_kind)
        if problem:
            _skip(warnings, FileProblem(case.path, f"a case file whose 'post' has the wrong shape: {problem}"),
                  "the summary counts the other case files", CASE_FIX)
        else:
            usable.append(case)
    return usable


def _carried_pre(cases: Sequence[CaseFile], ds_kind: str, warnings: list[str]) -> dict[str, dict[str, Any]]:
    """The case files' own ``pre`` metrics by case id, a damaged one left out (the case's post still counts)."""
    carried = {}
    for case in cases:
        pre = case.data.get("pre")
        problem = None if pre is None else post_problem(pre, ds_kind)
        if problem:
            _skip(warnings, FileProblem(case.path, f"a case file whose 'pre' has the wrong shape: {problem}"),
                  "its pre-edit scores are left out of the pre-edited row", CASE_FIX)
        elif pre is not None:
            carried[case.case_id] = pre
    return carried


def _pre_edit_posts(run_dir: Path, cases: Sequence[CaseFile], ds_kind: str | None, first_n_cases: int | None,
                    notes: list[str], warnings: list[str]) -> dict[str, dict[str, Any]]:
    """Pre-edit metrics by case id (the figures draw the unedited model on each point's own cases):
    the case files' ``pre``, else the run's ``pre_edit/case_<id>.json`` files."""
    carried = _carried_pre(cases, ds_kind, warnings) if ds_kind else {}
    if carried:
        if len(carried) < len(cases):
            notes.append(f"only {len(carried)} of {len(cases)} cases carry pre-edit scores")
        return carried
    folder = run_dir / PRE_EDIT_DIR
    if not folder.is_dir():
        return {}
    found = {m.group(1): p for p in folder.iterdir() if p.is_file() and (m := PRE_EDIT_FILE.match(p.name))}
    if cases:  # the same cases as the post row
        wanted = [c.case_id for c in cases]
    else:
        wanted = sorted(found, key=_case_sort_key)[:first_n_cases]
    read = ((i, _read_pre_edit(found[i], ds_kind, warnings)) for i in wanted if i in found)
    posts = {i: post for i, post in read if post}
    if posts:
        notes.append(f"pre-edited row from {PRE_EDIT_DIR}/ ({len(posts)} cases)")
    return posts


def _read_pre_edit(path: Path, ds_kind: str | None, warnings: list[str]) -> dict[str, Any] | None:
    """One ``pre_edit/case_<id>.json``; None (and a warning) when it is unreadable or of the wrong shape."""
    try:
        post = _read_json(path)
        problem = post_problem(post, ds_kind or _ds_kind({}, [post]) or all_kinds()[0].name)
        if problem:
            raise FileProblem(path, f"not pre-edit scores of the right shape: {problem}")
    except FileProblem as err:
        _skip(warnings, err, "the pre-edited row counts the other cases",
              f"restore it, or move it out of {PRE_EDIT_DIR}/")
        return None
    return post


def _task_problem(task: str, metrics: Any) -> str | None:
    if not isinstance(metrics, dict):
        return f"task {task!r} is a JSON {json_type(metrics)}, not {{accuracy, f1, mcc, n}}"
    for key in (*DOWNSTREAM_METRICS, "n"):
        value = metrics.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"task {task!r} has a JSON {json_type(value)} for {key!r}, not a number"
    return None


def _downstream_problem(point: Any) -> str | None:
    shape = "a downstream result ({total_edits, batch_index, tasks: {task: {accuracy, f1, mcc, n}}})"
    if not isinstance(point, dict) or not isinstance(point.get("tasks"), dict) or total_edits_of(point) is None:
        return f"not {shape}"
    if not _is_count(total_edits_of(point)) or not (point.get("batch_index") is None
                                                   or _is_count(point["batch_index"])):
        return f"not {shape}: total_edits and batch_index must be whole numbers"
    problem = next(filter(None, (_task_problem(t, m) for t, m in point["tasks"].items())), None)
    if problem:
        return f"not {shape}: {problem}"
    try:
        json.dumps(point, allow_nan=False)  # the summary JSON must hold it as it is
    except ValueError:
        return "not a downstream result this harness writes: it holds NaN or Infinity"
    return None


def _read_downstream(run_dir: Path, warnings: list[str]) -> list[dict[str, Any]]:
    """The run's general-capability points by number of edits; a damaged file is one point less."""
    folder = run_dir / DOWNSTREAM_DIR
    if not folder.is_dir():
        return []
    points = []
    for path in sorted(folder.iterdir()):
        if not DOWNSTREAM_FILE.match(path.name) or not path.is_file():
            continue
        try:
            point = _read_json(path)
            problem = _downstream_problem(point)
            if problem:
                raise FileProblem(path, problem)
        except FileProblem as err:
            _skip(warnings, err, "that evaluation point is left out",
                  f"restore it, or move it out of {DOWNSTREAM_DIR}/")
            continue
        points.append(with_total_edits(point))  # a point written before the rename holds num_edits
    return sorted(points, key=lambda p: p[TOTAL_EDITS])


def _final_counts(run_dir: Path, warnings: list[str]) -> tuple[int | None, int | None]:
    """(total_edits, num_batches) the editor had applied when the run finished (run_complete.json);
    a damaged marker still marks the run complete, but its final point cannot be placed in a figure."""
    path = run_dir / COMPLETE_MARKER
    try:
        done = _read_json(path)
        if not isinstance(done, dict):
            raise FileProblem(path, f"a JSON {json_type(done)}, not {{finished, num_batches, total_edits}}")
    except FileProblem as err:
        warnings.append(f"{err}; the run counts as complete, but the figures lack its final point "
                        f"(restore the file from a copy)")
        return None, None
    # total_edits_of: a marker written before the rename holds num_edits
    total_edits, num_batches = total_edits_of(done), done.get("num_batches")
    return (total_edits if _is_count(total_edits) else None), (num_batches if _is_count(num_batches) else None)


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


def _nothing_usable(run_dir: Path, n_files: int, warnings: Sequence[str]) -> SummaryError:
    """Every case file (or every file at all) is damaged: a refusal, not a silent empty row."""
    what = f"none of its {n_files} case files" if n_files else "none of its files"
    return SummaryError(f"{run_dir}: {what} can be summarized ({len(warnings)} damaged); the first: {warnings[0]}")


def summarize_run(run_dir: str | Path, first_n_cases: int | None = None) -> RunSummary:
    """Read one run folder and summarize its cases (post and pre) and downstream points.

    A damaged config.json is refused; a damaged case, pre-edit, downstream or marker file among
    good ones is left out and named in ``warnings`` (the counts say what was summarized)."""
    run_dir = Path(run_dir)
    if first_n_cases is not None and first_n_cases < 1:
        raise SummaryError(f"--first_n_cases must be >= 1, got {first_n_cases}")
    notes: list[str] = []
    warnings: list[str] = []
    complete = (run_dir / COMPLETE_MARKER).is_file()
    if not complete:
        notes.append(f"INCOMPLETE: no {COMPLETE_MARKER} (still running, stopped early or crashed); "
                     "numbers cover the cases scored so far")
    config = _run_config(run_dir, notes)
    cases, n_files = _read_cases(run_dir, first_n_cases, notes, warnings)
    ds_kind = _ds_kind(config, [c.data["post"] for c in cases])
    if cases and ds_kind is None:
        raise SummaryError(f"{run_dir}: cannot tell the dataset: ds_name={config.get('ds_name')!r} in config.json "
                           f"(not one of {', '.join(ds_names())}) and the case files' metrics are of no known kind")
    cases = _usable_cases(cases, ds_kind, warnings) if cases else []
    if n_files and not cases:
        raise _nothing_usable(run_dir, n_files, warnings)
    if len(cases) < n_files:
        notes.append(f"skipped {n_files - len(cases)} of {n_files} case files (unreadable or of the wrong shape)")
    pre_cases = _pre_edit_posts(run_dir, cases, ds_kind, first_n_cases, notes, warnings)
    pre_posts = list(pre_cases.values())
    downstream = _read_downstream(run_dir, warnings)
    if not cases and not pre_posts and not downstream:
        if warnings:
            raise _nothing_usable(run_dir, 0, warnings)
        raise SummaryError(f"{run_dir} has no case files (<num_edits>_edits-case_<id>.json), no pre-edit scores "
                           f"and no downstream results yet; nothing to summarize"
                           + ("" if complete else " (the run is incomplete: editing may still be going on)"))
    final_edits, final_batches = _final_counts(run_dir, warnings) if complete else (None, None)
    summary = RunSummary(alg_name=run_dir.parent.name, run=run_dir.name, path=run_dir, complete=complete,
                         config=config, ds_kind=ds_kind or _ds_kind({}, pre_posts), downstream=downstream,
                         notes=notes, warnings=warnings, final_total_edits=final_edits,
                         final_num_batches=final_batches, variant=_variant(run_dir),
                         norm_anchor=_anchor_counts(run_dir, notes, warnings))
    if cases:
        _case_stats(summary, cases)
    else:
        notes.append("no case files yet: only the pre-edited row and/or downstream results")
    if pre_posts:
        summary.pre_cases = pre_cases
        summary.n_pre_cases = len(pre_posts)
        summary.pre = _summarize(pre_posts, summary.ds_kind, f"{run_dir} (pre)")
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


# --- text report ----------------------------------------------------------------------------------


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
             f"protocol, 0-1 (n per task: {_listing([str(x) for x in n])})")
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


# --- files ----------------------------------------------------------------------------------------


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
                values += ["" if _finite(mean) is None else f"{mean:.6g}", "" if _finite(std) is None else f"{std:.6g}"]
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


def describe_outputs() -> str:
    """Every output key in paper terms (the ``--help`` epilog)."""
    def block(title: str, table: dict[str, str]) -> str:
        width = max(len(k) for k in table)
        lines = [textwrap.fill(v, HELP_WIDTH, initial_indent=f"  {k.ljust(width)}  ",
                               subsequent_indent=" " * (width + 4)) for k, v in table.items()]
        return title + "\n" + "\n".join(lines)

    columns = "\n".join(textwrap.fill(f"{kind.title}: " + ", ".join(f"{name} = {key}" for key, name in kind.columns.items()),
                                     HELP_WIDTH, initial_indent="  ", subsequent_indent="    ")
                       for kind in all_kinds())
    return "\n\n".join([
        "Paper columns (printed tables, and 'paper' in the JSON):\n" + columns,
        block("Per-run keys:", RUN_KEY_DESCRIPTIONS),
        block("Metrics ('post'/'pre' in the JSON; CSV columns <key> and <key>_std), mean ± std over cases:",
              METRIC_DESCRIPTIONS),
        block("Downstream (downstream/edits_*.json; <prefix>_downstream.csv):", DOWNSTREAM_DESCRIPTIONS),
    ]) + "\n"
