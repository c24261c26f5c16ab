"""Working in a run folder: making a new one, checking a resumed one's files, the lock a working
process holds on it, and the temporaries a killed save left. Its layout is ``experiments.run_folder``."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from experiments.run_folder import RUN_NAME, RunFolder, read_json, run_name

TEMP_PATTERN = re.compile(r"^\..+\.tmp$")  # util.atomic_files' and saved_model's temporaries


class RunFolderError(ValueError):
    """A run folder that cannot be used now (another process works in it); the message says why."""


# A resumed run's own files and the JSON type each holds: read before any work, so a damaged one
# stops the resume at once instead of after the next batch (whose work would be lost).
RUN_FILES = {RunFolder.CONFIG: dict, RunFolder.PARAMS: dict, RunFolder.EDIT_REPORTS: list}


def check_run_files(folder: RunFolder) -> None:
    """Every file of RUN_FILES that exists in the folder parses and holds its type (edit reports:
    objects with a ``batch_index``); else a :class:`RunFolderError` naming the file and the fix."""
    for name, kind in RUN_FILES.items():
        path = folder.file(name)
        if not path.is_file():
            continue
        try:
            data = read_json(path)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RunFolderError(f"{path} is damaged ({type(err).__name__}: {err}); restore it from a copy, or start "
                                 "a new run (this run's case files and editor state stay where they are)") from None
        if not _holds_what_is_written(name, data, kind):
            reports = name == RunFolder.EDIT_REPORTS
            raise RunFolderError(f"{path} does not hold what this harness writes there (a JSON {kind.__name__}"
                                 f"{' of batch reports' if reports else ''}); restore it from a copy, "
                                 "or start a new run")


def _holds_what_is_written(name: str, data: Any, kind: type) -> bool:
    if not isinstance(data, kind):
        return False
    if name == RunFolder.EDIT_REPORTS:
        return all(isinstance(r, dict) and isinstance(r.get("batch_index"), int) for r in data)
    return name != RunFolder.CONFIG or isinstance(data.get("args"), dict)


def new_run_folder(alg_dir: Path) -> RunFolder:
    """The next free ``run_NNN`` under ``alg_dir``, created atomically (safe for parallel runs)."""
    alg_dir.mkdir(parents=True, exist_ok=True)
    taken = [int(m.group(1)) for p in alg_dir.iterdir() if (m := RUN_NAME.match(p.name))]
    number = max(taken, default=-1) + 1
    while True:
        candidate = alg_dir / run_name(number)
        try:
            candidate.mkdir()
            return RunFolder(candidate)
        except FileExistsError:
            number += 1


def _holder_alive(holder: dict[str, Any]) -> bool:
    """Whether the process that wrote a lock still runs; one on another machine is taken to run."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def _read_holder(lock: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(lock.read_text())
    except FileNotFoundError:
        return {}  # released between our attempt and this read: try again
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # written by a process killed at that moment
    return holder if isinstance(holder, dict) and "pid" in holder else None


def take_run_lock(folder: RunFolder) -> str | None:
    """Lock the folder for this process (its lock file: pid, host, time). Another live process's lock
    is a :class:`RunFolderError`; a dead one's is taken over. Returns a note on a lock taken over, or None."""
    run_dir, lock = folder.path, folder.lock_file
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.ctime()}
    note = None
    for _ in range(3):  # a lock released or taken over by another process meanwhile: look again
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_holder(lock)
            if holder and _holder_alive(holder):
                raise RunFolderError(
                    f"{run_dir} is in use by process {holder['pid']} on {holder.get('host')} (since "
                    f"{holder.get('since')}); wait for it to end or stop it. If no such process runs, "
                    f"delete {lock}") from None
            if holder != {}:
                note = f"took over {lock} from process {(holder or {}).get('pid', '?')}, which no longer runs"
                lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as out:
            json.dump(me, out)
        return note
    raise RunFolderError(f"could not lock {run_dir}: other processes keep taking it; is the run started twice?")


def release_run_lock(folder: RunFolder) -> None:
    """Remove the folder's lock file if this process holds it."""
    lock = folder.lock_file
    holder = _read_holder(lock) if lock.exists() else None
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        lock.unlink(missing_ok=True)


def remove_stale_temporaries(folder: Path, prefix: str = "", below: bool = True) -> list[Path]:
    """Delete the temporary files (and folders) a killed save left in ``folder`` (and below, with
    ``below``) whose name starts with ``.<prefix>``. Call only while holding the run's lock."""
    found = (folder.rglob if below else folder.glob)(f".{prefix}*") if folder.is_dir() else []
    stale = [p for p in found if TEMP_PATTERN.match(p.name)]
    for path in sorted(stale, reverse=True):  # deepest first
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return stale
