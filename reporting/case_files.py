"""A run's cases read and checked: its case files (the edited model's metrics, ``post``, and the
unedited model's, ``pre``, when the run scored it) and its ``pre_edit/`` files. A case file that
cannot be read or has the wrong shape is left out with a warning naming it; the rest count."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.ds_kinds import all_kinds, ds_names, kind_of, kind_of_post
from experiments.metrics.summary import json_type, post_problem
from experiments.run_folder import RunFolder
from reporting.errors import FileProblem, SummaryError
from reporting.reading import read_checked, skip


def case_sort_key(case_id: Any) -> tuple[int, Any]:
    """Numeric ids in numeric order, then the others by text."""
    text = str(case_id)
    return (0, int(text)) if text.lstrip("-").isdigit() else (1, text)


def ds_kind_of(settings: dict[str, Any], posts: Sequence[Any]) -> str | None:
    """The name of the run's dataset kind: from its ds_name setting, else by the metrics' shape."""
    if settings.get("ds_name") in ds_names():
        return kind_of(settings["ds_name"]).name
    kinds = (kind_of_post(post) for post in posts)
    return next((kind.name for kind in kinds if kind), None)


@dataclass
class CaseFile:
    """One readable case file: its case id (from the file name), path and content."""

    case_id: str
    path: Path
    data: dict[str, Any]


CASE_FIX = "restore it from a copy, or move it out of the run folder"


def _case_file_list(folder: RunFolder, first_n_cases: int | None, notes: list[str]) -> list[tuple[str, Path]]:
    files = folder.case_files()
    batch_sizes = sorted({f.num_edits for f in files})
    if len(batch_sizes) > 1:
        raise SummaryError(f"{folder.path} mixes case files of runs with {batch_sizes} edits per batch; "
                           "move the stray ones out before summarizing")
    files.sort(key=lambda f: case_sort_key(f.case_id))
    if first_n_cases is not None and len(files) > first_n_cases:
        notes.append(f"first {first_n_cases} of {len(files)} cases (by case_id)")
        files = files[:first_n_cases]
    return [(f.case_id, f.path) for f in files]


def _read_case(path: Path) -> dict[str, Any]:
    case = read_checked(path)
    if not isinstance(case, dict):
        raise FileProblem(path, f"a JSON {json_type(case)}, not a case file of experiments.evaluate "
                                "({case_id, post, ...})")
    if not isinstance(case.get("post"), dict):
        found = "no 'post' metrics" if "post" not in case else f"a 'post' that is a JSON {json_type(case['post'])}"
        raise FileProblem(path, f"not a case file of experiments.evaluate: it has {found}, not an object of metrics")
    return case


def read_cases(folder: RunFolder, first_n_cases: int | None, notes: list[str],
                warnings: list[str]) -> tuple[list[CaseFile], int]:
    """The readable case files, by case_id (the one in the file name), the first N if asked; and how
    many files were looked at. Unreadable ones and ones of the wrong shape are skipped, each named."""
    files = _case_file_list(folder, first_n_cases, notes)
    cases = []
    for case_id, path in files:
        try:
            cases.append(CaseFile(case_id, path, _read_case(path)))
        except FileProblem as err:
            skip(warnings, err, "the summary counts the other case files", CASE_FIX)
    return cases, len(files)


def usable_cases(cases: list[CaseFile], ds_kind: str, warnings: list[str]) -> list[CaseFile]:
    """The cases whose ``post`` summarize_cases can read as ``ds_kind`` metrics; the rest are named."""
    usable = []
    for case in cases:
        problem = post_problem(case.data["post"], ds_kind)
        if problem:
            skip(warnings, FileProblem(case.path, f"a case file whose 'post' has the wrong shape: {problem}"),
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
            skip(warnings, FileProblem(case.path, f"a case file whose 'pre' has the wrong shape: {problem}"),
                 "its pre-edit scores are left out of the pre-edited row", CASE_FIX)
        elif pre is not None:
            carried[case.case_id] = pre
    return carried


def pre_edit_posts(folder: RunFolder, cases: Sequence[CaseFile], ds_kind: str | None, first_n_cases: int | None,
                    notes: list[str], warnings: list[str]) -> dict[str, dict[str, Any]]:
    """Pre-edit metrics by case id (the figures draw the unedited model on each point's own cases):
    the case files' ``pre``, else the run's ``pre_edit/case_<id>.json`` files."""
    carried = _carried_pre(cases, ds_kind, warnings) if ds_kind else {}
    if carried:
        if len(carried) < len(cases):
            notes.append(f"only {len(carried)} of {len(cases)} cases carry pre-edit scores")
        return carried
    found = folder.pre_edit_files()
    if not found:
        return {}
    if cases:  # the same cases as the post row
        wanted = [c.case_id for c in cases]
    else:
        wanted = sorted(found, key=case_sort_key)[:first_n_cases]
    read = ((i, _read_pre_edit(found[i], ds_kind, warnings)) for i in wanted if i in found)
    posts = {i: post for i, post in read if post}
    if posts:
        notes.append(f"pre-edited row from {RunFolder.PRE_EDIT_DIR}/ ({len(posts)} cases)")
    return posts


def _read_pre_edit(path: Path, ds_kind: str | None, warnings: list[str]) -> dict[str, Any] | None:
    """One ``pre_edit/case_<id>.json``; None (and a warning) when it is unreadable or of the wrong shape."""
    try:
        post = read_checked(path)
        problem = post_problem(post, ds_kind or ds_kind_of({}, [post]) or all_kinds()[0].name)
        if problem:
            raise FileProblem(path, f"not pre-edit scores of the right shape: {problem}")
    except FileProblem as err:
        skip(warnings, err, "the pre-edited row counts the other cases",
             f"restore it, or move it out of {RunFolder.PRE_EDIT_DIR}/")
        return None
    return post

