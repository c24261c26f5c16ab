"""Every check of a run's settings that needs no model: a bad one fails before any work, in one line."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from experiments.algorithms import get_algorithm
from experiments.ds_kinds import kind_of
from experiments.metrics.fluency import MetricOptions
from experiments.run_paths import RunPaths
from experiments.saved_model import edit_info, editor_state_path, save_dir_problem
from experiments.settings import RunConfig, RunError, check_values
from util.model_loading import check_device, check_dtype, check_model_source

log = logging.getLogger("experiments")


def check_settings(cfg: RunConfig, paths: RunPaths) -> None:
    """Choices, ranges, combinations, and the files and folders the run reads and writes."""
    try:
        get_algorithm(cfg.alg_name)
    except ValueError as err:
        raise RunError(str(err)) from None
    check_values(cfg)
    why = kind_of(cfg.ds_name).rule_for_batches(cfg.ds_name, cfg.num_edits)
    if why:
        raise RunError(f"--ds_name={cfg.ds_name} allows only --num_edits=1: {why}")
    try:
        MetricOptions.from_names(cfg.metric_departures)
    except ValueError as err:
        raise RunError(f"--metric_departures: {err}") from None
    check_dtype(cfg.dtype)
    check_device(cfg.device)
    if cfg.device and cfg.device_map:
        raise RunError(f"--device={cfg.device} and --device_map={cfg.device_map} both place the model; give one")
    check_model_source(cfg.model_name)
    _check_ds_file(cfg)
    _check_writable("--results_dir", paths.results)
    _check_stats_dir(paths.stats)
    if cfg.save_model and (problem := save_dir_problem(cfg.save_model)):
        raise RunError(problem)
    _check_editor_state(cfg)


def _check_writable(flag: str, folder: Path) -> None:
    """``folder`` is a folder (or can be made one) that this process can write to."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise RunError(f"{flag}={folder}: {existing} is a file, not a folder; pass a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunError(f"{flag}={folder}: {existing} is not writable (by this user, or a read-only "
                       "file system); pass a writable folder")


def _check_stats_dir(stats: Path) -> None:
    """A read-only statistics cache that exists may hold everything the run needs (a shared cache): a
    warning; one that cannot be created, or is a file, is an error."""
    if stats.is_dir() and not os.access(stats, os.W_OK | os.X_OK):
        log.warning("--stats_dir=%s is not writable: statistics (and --use_cache values) not cached there yet "
                    "cannot be saved, and the run stops when it needs them; pass a writable --stats_dir to be safe",
                    stats)
        return
    _check_writable("--stats_dir", stats)


def _check_ds_file(cfg: RunConfig) -> None:
    if cfg.ds_file is None:
        return
    path = Path(cfg.ds_file).expanduser()
    if path.is_dir():
        raise RunError(f"--ds_file={cfg.ds_file} is a folder; pass a dataset JSON file, or pass the folder as "
                       "--data_dir (it must hold the canonical file names)")
    if not path.is_file():
        raise RunError(f"--ds_file={cfg.ds_file} does not exist; check the path")


def _check_editor_state(cfg: RunConfig) -> None:
    state = editor_state_path(cfg.model_name, cfg.load_editor_state)  # a missing file fails now
    info = edit_info(state.parent) if state else None
    if info and info.get("alg_name") not in (None, cfg.alg_name):
        raise RunError(f"{state} is the state of an {info['alg_name']} editor; continue it with "
                       f"--alg_name={info['alg_name']} (or --load_editor_state=none to start afresh)")
