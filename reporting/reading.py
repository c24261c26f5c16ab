"""One run's files besides its cases, read and checked: config.json, params.json, edit_reports.json,
the downstream points and run_complete.json (their names and places: ``experiments.run_folder``).

A damaged config.json is refused (which table a run belongs to hangs on it); any other damaged
file is left out with one line in the run's warnings naming it, what is lost and the fix.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from experiments.metrics.summary import json_type
from experiments.run_folder import RunFolder, read_json
from reporting.errors import FileProblem, SummaryError
from util.total_edits import TOTAL_EDITS, total_edits_of, with_total_edits

DOWNSTREAM_METRICS = ("accuracy", "f1", "mcc")  # each task's metrics in a downstream point
CONFIG_FIX = "restore it from a copy, or move it out of the run folder to summarize the run without its settings"
# The settings the summary reads from config.json, and the JSON type each must have (or null).
CONFIG_TYPES: dict[str, tuple[type, str]] = {"ds_name": (str, "string"), "model_name": (str, "string"),
                                             "num_edits": (int, "whole number"),
                                             "dataset_size_limit": (int, "whole number")}


def read_checked(path: Path) -> Any:
    """A run file's JSON; a :class:`FileProblem` saying what is wrong when it cannot be read as JSON."""
    try:
        return read_json(path)
    except UnicodeDecodeError as exc:
        raise FileProblem(path, f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}: "
                                "binary, or another encoding such as latin-1)") from None
    except json.JSONDecodeError as exc:
        raise FileProblem(path, f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except OSError as exc:
        raise FileProblem(path, f"unreadable ({exc.strerror})") from None


def skip(warnings: list[str], err: FileProblem, consequence: str, fix: str) -> None:
    """A bad file among good ones is left out with one line: a whole run is not lost to one file."""
    warnings.append(f"{err}; skipped: {consequence} ({fix})")


def is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


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


def read_config(folder: RunFolder, notes: list[str]) -> dict[str, Any]:
    """config.json as written ({} when there is none, with a note); a damaged one is refused."""
    path = folder.config_file
    if not path.is_file():
        notes.append(f"no {RunFolder.CONFIG}; model and dataset unknown")
        return {}
    try:
        raw = read_checked(path)
    except FileProblem as err:
        raise SummaryError(f"{err}; {CONFIG_FIX}") from None
    problem = _config_problem(raw)
    if problem:
        raise SummaryError(f"{path} is {problem}; {CONFIG_FIX}")
    return raw


def settings_of(config: dict[str, Any]) -> dict[str, Any]:
    """The run's flags: the runner saves them under "args" (beside versions and context templates);
    the earliest runs saved them alone."""
    return dict(config.get("args", config))


def read_params(folder: RunFolder) -> dict[str, Any]:
    """params.json's hyperparameters; {} when it is missing or unreadable (the resume check names a
    broken one): the report then shows the method's plain form."""
    try:
        params = read_checked(folder.params_file)
    except FileProblem:  # missing or unreadable: read_checked turns OSError into FileProblem
        return {}
    return params if isinstance(params, dict) else {}


def read_batch_reports(folder: RunFolder, warnings: list[str]) -> list[dict[str, Any]]:
    """edit_reports.json's entries, one per batch; [] when missing or damaged (named in warnings)."""
    path = folder.edit_reports_file
    if not path.is_file():
        return []
    try:
        reports = read_checked(path)
        if not isinstance(reports, list) or not all(isinstance(r, dict) for r in reports):
            raise FileProblem(path, "not a list of batch reports ([{batch_index, ...}, ...])")
    except FileProblem as err:
        skip(warnings, err, "the edits norm anchoring dropped are not counted", "restore it from a copy")
        return []
    return reports


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
    if not is_count(total_edits_of(point)) or not (point.get("batch_index") is None
                                                  or is_count(point["batch_index"])):
        return f"not {shape}: total_edits and batch_index must be whole numbers"
    problem = next(filter(None, (_task_problem(t, m) for t, m in point["tasks"].items())), None)
    if problem:
        return f"not {shape}: {problem}"
    try:
        json.dumps(point, allow_nan=False)  # the summary JSON must hold it as it is
    except ValueError:
        return "not a downstream result this harness writes: it holds NaN or Infinity"
    return None


def _downstream_point(path: Path) -> dict[str, Any]:
    point = read_checked(path)
    problem = _downstream_problem(point)
    if problem:
        raise FileProblem(path, problem)
    return with_total_edits(point)  # a point written before the rename holds num_edits


def read_downstream(folder: RunFolder, warnings: list[str]) -> list[dict[str, Any]]:
    """The run's general-capability points by number of edits; a damaged file is one point less."""
    points = []
    for path in folder.downstream_files():
        try:
            points.append(_downstream_point(path))
        except FileProblem as err:
            skip(warnings, err, "that evaluation point is left out",
                 f"restore it, or move it out of {RunFolder.DOWNSTREAM_DIR}/")
    return sorted(points, key=lambda p: p[TOTAL_EDITS])


def final_counts(folder: RunFolder, warnings: list[str]) -> tuple[int | None, int | None]:
    """(total_edits, num_batches) the editor had applied when the run finished (run_complete.json);
    a damaged marker still marks the run complete, but its final point cannot be placed in a figure."""
    path = folder.complete_file
    try:
        done = read_checked(path)
        if not isinstance(done, dict):
            raise FileProblem(path, f"a JSON {json_type(done)}, not {{finished, num_batches, total_edits}}")
    except FileProblem as err:
        warnings.append(f"{err}; the run counts as complete, but the figures lack its final point "
                        f"(restore the file from a copy)")
        return None, None
    # total_edits_of: a marker written before the rename holds num_edits
    total_edits, num_batches = total_edits_of(done), done.get("num_batches")
    return (total_edits if is_count(total_edits) else None), (num_batches if is_count(num_batches) else None)
