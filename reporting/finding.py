"""Finding the run folders a command names: ``--dir_name`` algorithm folders under the results
folder, and their ``--runs`` (every run folder when none are named), each checked to exist."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from experiments.run_folder import run_name, run_names
from reporting.errors import SummaryError, listing


def _normalize_run_name(name: str) -> str:
    name = name.strip()
    return run_name(int(name)) if name.isdigit() else name  # "--runs=0,1" means run_000,run_001


def _check_request(results_dir: Path, dir_names: Sequence[str], runs: Sequence[str] | None) -> None:
    if results_dir.exists() and not results_dir.is_dir():
        raise SummaryError(f"results folder {results_dir} is a file, not a folder (pass --results_dir=<folder>)")
    if not results_dir.is_dir():
        raise SummaryError(f"results folder {results_dir} does not exist (pass --results_dir)")
    if not dir_names:
        raise SummaryError("name at least one algorithm folder with --dir_name (e.g. --dir_name=NSE)")
    if runs is not None and not runs:
        raise SummaryError("--runs names no run; pass run folders (--runs=run_000,run_001 or --runs=0,1), "
                           "or leave --runs out for every run")


def _alg_dir(results_dir: Path, dir_name: str) -> Path:
    """The algorithm folder ``dir_name`` names; refused when it is a path or does not exist."""
    if Path(dir_name).name != dir_name or dir_name in (".", ".."):  # "../x", "a/b", "/abs": another folder
        raise SummaryError(f"--dir_name={dir_name!r} is a path; it names algorithm folders under the results "
                           f"folder (e.g. --dir_name=NSE); for runs elsewhere pass --results_dir=<their parent>")
    alg_dir = results_dir / dir_name
    if not alg_dir.is_dir():
        algs = sorted(p.name for p in results_dir.iterdir() if p.is_dir() and run_names(p))
        raise SummaryError(f"no folder {dir_name!r} under {results_dir}; algorithms with runs there: "
                           f"{listing(algs)}")
    return alg_dir


def _runs_of(alg_dir: Path, runs: Sequence[str] | None) -> list[Path]:
    existing = run_names(alg_dir)
    if runs is None:
        if not existing:
            raise SummaryError(f"{alg_dir} holds no run_NNN folders")
        return [alg_dir / name for name in existing]
    found = []
    for name in map(_normalize_run_name, runs):
        if name not in existing:
            raise SummaryError(f"{alg_dir.name} has no run {name!r} in {alg_dir}; its runs: {listing(existing)}")
        found.append(alg_dir / name)
    return found


def find_runs(results_dir: str | Path, dir_names: Sequence[str], runs: Sequence[str] | None = None) -> list[Path]:
    """The run folders to summarize: ``runs`` of each ``dir_name`` (every ``run_*`` when None)."""
    results_dir = Path(results_dir)
    _check_request(results_dir, dir_names, runs)
    return [run for dir_name in dir_names for run in _runs_of(_alg_dir(results_dir, dir_name), runs)]
