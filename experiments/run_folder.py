"""A run folder's layout: every file ``experiments.evaluate`` writes in ``<results>/<ALG>/run_NNN/``, named once.

The runner and its scoring passes write through :class:`RunFolder`, and the reporter
(``reporting/``, ``summarize.py``) reads through it, so a name spelt here is the only spelling::

    config.json                       settings ("args"), versions, context templates, metric settings, resumes
    params.json                       the method's hyperparameters
    edit_reports.json                 one report per batch
    timings.json                      where the wall time went (experiments.timings)
    run.log, run.lock                 the log; the lock of the process working in the folder
    editor_state.pt                   the editor's state after the last batch (also in --save_model folders)
    <num_edits>_edits-case_<id>.json  one per scored case: the run's results
    pre_edit/case_<id>.json           --eval_pre_edit: a case on the unedited model
    downstream/edits_<NNNNNN>.json    a general-capability point, by edits applied so far
    curves/edits_<NNNNNN>.json        a --curve_every point, by edits applied so far
    run_complete.json                 written last: {finished, num_batches, total_edits}

Every layout written so far reads with these names: files written before the count's rename hold
``num_edits`` for ``total_edits`` (``util.total_edits`` reads both), and archived folders whose
case files sit in a tarball read once it is unpacked.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from util.atomic_files import write_json_atomic
from util.total_edits import TOTAL_EDITS

RUN_NAME = re.compile(r"^run_(\d{3,})$")
CASE_FILE = re.compile(r"^(\d+)_edits-case_(.+)\.json$")
PRE_EDIT_FILE = re.compile(r"^case_(.+)\.json$")
POINT_FILE = re.compile(r"^edits_(\d+)\.json$")  # a downstream or curve point


def read_json(path: str | Path) -> Any:
    """A JSON file of a run; a byte-order mark (some editors write one) is not JSON, and is allowed."""
    with open(path, encoding="utf-8-sig") as f:
        return json.load(f)


def run_name(number: int) -> str:
    return f"run_{number:03d}"


def run_names(alg_dir: Path) -> list[str]:
    """The run folders (``run_NNN``) under a method's folder, by name."""
    return sorted(p.name for p in alg_dir.iterdir() if p.is_dir() and RUN_NAME.match(p.name))


@dataclass(frozen=True)
class CaseFileName:
    """A case file found in a run folder: the batch size and case id its name holds."""

    num_edits: int
    case_id: str
    path: Path


@dataclass(frozen=True)
class RunFolder:
    """One run folder: its files' paths, the listing of its case and point files, and its JSON files."""

    path: Path

    CONFIG: ClassVar[str] = "config.json"
    PARAMS: ClassVar[str] = "params.json"
    EDIT_REPORTS: ClassVar[str] = "edit_reports.json"
    TIMINGS: ClassVar[str] = "timings.json"
    LOG: ClassVar[str] = "run.log"
    LOCK: ClassVar[str] = "run.lock"
    STATE: ClassVar[str] = "editor_state.pt"
    COMPLETE: ClassVar[str] = "run_complete.json"
    PRE_EDIT_DIR: ClassVar[str] = "pre_edit"
    DOWNSTREAM_DIR: ClassVar[str] = "downstream"
    CURVES_DIR: ClassVar[str] = "curves"
    CASE_NAME: ClassVar[str] = "<num_edits>_edits-case_<id>.json"  # how case files are named, for messages
    # What a run writes when it starts, before any result: a folder holding only these has none.
    AT_START: ClassVar[frozenset[str]] = frozenset({CONFIG, PARAMS, LOG, LOCK})

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def alg_name(self) -> str:
        """The method's folder the run sits in (the ``--alg_name``, or an archived copy's name)."""
        return self.path.parent.name

    # --- paths ------------------------------------------------------------------------------------

    def file(self, name: str) -> Path:
        """The path of one of the names above, e.g. ``folder.file(RunFolder.CONFIG)``."""
        return self.path / name

    @property
    def config_file(self) -> Path:
        return self.path / self.CONFIG

    @property
    def params_file(self) -> Path:
        return self.path / self.PARAMS

    @property
    def edit_reports_file(self) -> Path:
        return self.path / self.EDIT_REPORTS

    @property
    def timings_file(self) -> Path:
        return self.path / self.TIMINGS

    @property
    def lock_file(self) -> Path:
        return self.path / self.LOCK

    @property
    def state_file(self) -> Path:
        return self.path / self.STATE

    @property
    def complete_file(self) -> Path:
        return self.path / self.COMPLETE

    @property
    def pre_edit_dir(self) -> Path:
        return self.path / self.PRE_EDIT_DIR

    @property
    def downstream_dir(self) -> Path:
        return self.path / self.DOWNSTREAM_DIR

    @property
    def curves_dir(self) -> Path:
        return self.path / self.CURVES_DIR

    def case_file(self, num_edits: int, case_id: Any) -> Path:
        return self.path / f"{num_edits}_edits-case_{case_id}.json"

    def pre_edit_file(self, case_id: Any) -> Path:
        return self.pre_edit_dir / f"case_{case_id}.json"

    def downstream_file(self, total_edits: int) -> Path:
        return self.downstream_dir / _point_name(total_edits)

    def curve_file(self, total_edits: int) -> Path:
        return self.curves_dir / _point_name(total_edits)

    # --- what is there ----------------------------------------------------------------------------

    @property
    def is_complete(self) -> bool:
        return self.complete_file.is_file()

    def holds_no_results(self) -> bool:
        """Only the files written at start: no scores, no state, nothing worth resuming."""
        return {p.name for p in self.path.iterdir()} <= self.AT_START

    def case_files(self, num_edits: int | None = None) -> list[CaseFileName]:
        """The case files (``<num_edits>_edits-case_<id>.json``; of one batch size when given), unordered."""
        found = [CaseFileName(int(m.group(1)), m.group(2), p) for p in self.path.iterdir()
                 if p.is_file() and (m := CASE_FILE.match(p.name))]
        return [f for f in found if num_edits is None or f.num_edits == num_edits]

    def pre_edit_files(self) -> dict[str, Path]:
        """``pre_edit/case_<id>.json`` by case id; {} without the folder."""
        folder = self.pre_edit_dir
        if not folder.is_dir():
            return {}
        return {m.group(1): p for p in folder.iterdir() if p.is_file() and (m := PRE_EDIT_FILE.match(p.name))}

    def downstream_files(self) -> list[Path]:
        return _point_files(self.downstream_dir)

    def curve_files(self) -> list[Path]:
        return _point_files(self.curves_dir)

    # --- its JSON files ---------------------------------------------------------------------------

    def read_config(self) -> dict[str, Any] | None:
        """config.json as written (None when there is none); a damaged one raises (ValueError, OSError)."""
        return read_json(self.config_file) if self.config_file.is_file() else None

    def write_config(self, config: dict[str, Any]) -> None:
        write_json_atomic(self.config_file, config)

    def read_params(self) -> dict[str, Any] | None:
        return read_json(self.params_file) if self.params_file.is_file() else None

    def write_params(self, params: dict[str, Any]) -> None:
        write_json_atomic(self.params_file, params)

    def read_complete(self) -> Any:
        """run_complete.json as written ({finished, num_batches, total_edits}; older: num_edits)."""
        return read_json(self.complete_file)

    def write_complete(self, num_batches: int, total_edits: int) -> None:
        """The completion marker, written last: a folder with it holds a finished run."""
        write_json_atomic(self.complete_file, {"finished": time.ctime(), "num_batches": num_batches,
                                               TOTAL_EDITS: total_edits})

    def edit_reports(self) -> list[dict[str, Any]]:
        """edit_reports.json's entries, one per batch; [] before the first."""
        return read_json(self.edit_reports_file) if self.edit_reports_file.is_file() else []

    def append_report(self, report: dict[str, Any]) -> None:
        """One entry per batch (time, value loss, residuals per round...); a re-done batch replaces its
        entry and the ones after it."""
        reports = [r for r in self.edit_reports() if r["batch_index"] < report["batch_index"]]
        write_json_atomic(self.edit_reports_file, reports + [report])


def _point_name(total_edits: int) -> str:
    return f"edits_{total_edits:06d}.json"


def _point_files(folder: Path) -> list[Path]:
    """The point files (``edits_NNNNNN.json``) of a downstream or curves folder, by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if POINT_FILE.match(p.name) and p.is_file())
