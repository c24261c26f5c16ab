"""``globals.yml``: the folders the harness reads and writes, by key (RESULTS_DIR, DATA_DIR, ...).

Relative paths are taken from the repository root, so a run does not depend on the current
directory; a caller-supplied override (a CLI flag such as ``--data_dir``) wins and is taken as given.
"""
from __future__ import annotations

from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
GLOBALS_FILE = REPO_ROOT / "globals.yml"

# Used when globals.yml is missing or lacks a key, so a bare checkout still runs.
DEFAULT_GLOBALS: dict[str, str] = {
    "RESULTS_DIR": "results",
    "DATA_DIR": "data",
    "STATS_DIR": "data/stats",
    "HPARAMS_DIR": "hparams",
    "REMOTE_ROOT_URL": "https://memit.baulab.info",
}


def load_globals(path: Path | None = None) -> dict[str, str]:
    """Read globals.yml (defaults for missing keys); re-read on every call, nothing is cached."""
    path = GLOBALS_FILE if path is None else Path(path)
    values = dict(DEFAULT_GLOBALS)
    if path.is_file():
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path} must be a YAML mapping such as 'DATA_DIR: data', got {type(loaded).__name__}")
        values.update({str(k): str(v) for k, v in loaded.items()})
    return values


def resolve_global_dir(key: str, override: str | Path | None = None, globals_file: Path | None = None) -> Path:
    """The folder named by ``key`` in globals.yml, or ``override`` when one is given."""
    if override is not None:
        return Path(override).expanduser()
    values = load_globals(globals_file)
    if key not in values:
        raise KeyError(f"globals.yml has no {key!r}; known keys: {sorted(values)}")
    path = Path(values[key]).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path
