"""Run folders: their names and the files in them."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

RUN_PATTERN = re.compile(r"^run_(\d{3,})$")
COMPLETE_MARKER = "run_complete.json"
STATE_FILE = "editor_state.pt"
EDIT_REPORTS = "edit_reports.json"


def read_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


def new_run_dir(alg_dir: Path) -> Path:
    """The next free ``run_NNN`` under ``alg_dir``, created atomically (safe for parallel runs)."""
    alg_dir.mkdir(parents=True, exist_ok=True)
    taken = [int(m.group(1)) for p in alg_dir.iterdir() if (m := RUN_PATTERN.match(p.name))]
    number = max(taken, default=-1) + 1
    while True:
        candidate = alg_dir / f"run_{number:03d}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            number += 1


def case_file(run_dir: Path, num_edits: int, case_id) -> Path:
    return run_dir / f"{num_edits}_edits-case_{case_id}.json"
