"""Resuming: which run folder a run continues, what it may change, and what the run started from.

A run continues ``--continue_from_run`` only when every setting that changes what is computed or
scored equals the run's (``resumable`` settings, experiments.settings, may differ), and its
hyperparameters equal ``params.json`` by content. A fresh run may also start from a saved editor
state (``--save_model`` folder, ``--load_editor_state``).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from experiments.metrics.fluency import MetricOptions, metric_settings
from experiments.run_files import check_run_files
from experiments.run_folder import RUN_NAME, RunFolder, read_json
from experiments.saved_model import editor_state_path
from experiments.settings import RunConfig, RunError, resumable_settings, settings_before
from util.editor import read_state
from util.total_edits import TOTAL_EDITS, total_edits_of

log = logging.getLogger("experiments")


class ResumeError(RunError):
    """A run that cannot be resumed as asked; the message says how to resume it or to start anew."""


def _same_setting(saved: Any, now: Any) -> bool:
    if saved == now:
        return True
    if isinstance(saved, str) and isinstance(now, str):  # the same path written differently
        return Path(saved).expanduser().resolve() == Path(now).expanduser().resolve()
    return False


def resume_dir(cfg: RunConfig, results: Path, hparams) -> RunFolder | None:
    """The run folder to continue; refused when a setting that changes the results differs from the run's."""
    if not cfg.continue_from_run:
        return None
    if not RUN_NAME.match(cfg.continue_from_run):  # a path would resume a run of another method or folder
        raise ResumeError(f"--continue_from_run={cfg.continue_from_run!r} is not a run folder name; pass the name of "
                          f"a folder in {results / cfg.alg_name} (run_NNN), and --results_dir for another results "
                          "folder")
    folder = RunFolder(results / cfg.alg_name / cfg.continue_from_run)
    if not folder.config_file.is_file():
        raise ResumeError(f"--continue_from_run={cfg.continue_from_run}: {folder.path} holds no {RunFolder.CONFIG} "
                          "to resume")
    check_run_files(folder)
    _check_same_settings(cfg, folder.read_config()["args"])
    _check_same_hparams(folder, hparams.to_dict(), getattr(type(hparams), "VALUES_BEFORE", {}))
    return folder


def _check_same_settings(cfg: RunConfig, saved: dict[str, Any]) -> None:
    defaults, free = settings_before(), resumable_settings()  # what a setting added since the run began meant
    differ = [f"{key}={value!r} differs from the run's {saved.get(key, defaults.get(key))!r}"
              for key, value in dataclasses.asdict(cfg).items()
              if key not in free and not _same_setting(saved.get(key, defaults.get(key)), value)]
    if differ:
        raise ResumeError(f"--continue_from_run={cfg.continue_from_run}: {'; '.join(differ)}. These change what is "
                          f"computed or scored: resume with the run's flags ({RunFolder.CONFIG}) or start a new run")


# Keys of a hyperparameter file that change nothing computed: a copy with other notes resumes the run.
DOCUMENTATION_KEYS = ("notes",)


def _check_same_hparams(folder: RunFolder, now: dict[str, Any], before: dict[str, Any]) -> None:
    """A key the run's params.json lacks (added since) means its former behaviour: ``before`` where the
    default changed what is computed, else the value it has now."""
    path = folder.params_file
    saved = folder.read_params()
    now = {k: v for k, v in now.items() if k not in DOCUMENTATION_KEYS}
    if saved is not None:
        saved = {k: v for k, v in saved.items() if k not in DOCUMENTATION_KEYS}
        saved = {**{k: before.get(k, v) for k, v in now.items() if k not in saved}, **saved}
    if saved is not None and saved != now:
        keys = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
        changes = "; ".join(f"{k}: run {saved.get(k)!r}, now {now.get(k)!r}" for k in keys)
        raise ResumeError(f"--continue_from_run: the hyperparameters differ from {path} ({changes}); "
                          "resume with the run's hyperparameters or start a new run")


def record_resume(cfg: RunConfig, folder: RunFolder, config: dict) -> None:
    """config.json keeps, per resume, the settings it changed (resumable ones only: the others are refused)."""
    args = config["args"]
    changed = {k: v for k, v in dataclasses.asdict(cfg).items()
               if k in resumable_settings() - {"continue_from_run"} and args.get(k) != v}
    entry: dict[str, Any] = {"time": time.ctime(), "changed": changed}
    _record_metric_settings(cfg, config, entry)
    config.setdefault("resumed", []).append(entry)
    folder.write_config(config)


def _record_metric_settings(cfg: RunConfig, config: dict, entry: dict) -> None:
    """The metric settings of this process (Fluency's word tokenizer depends on NLTK's data being
    installed here): where they differ from the run's, say so and record both, so that Fluency
    computed from now on is attributed to the tokenizer that computed it."""
    now = metric_settings(MetricOptions.from_names(cfg.metric_departures))
    before = config.get("metrics")
    if not isinstance(before, dict) or before.get("word_tokenizer") == now["word_tokenizer"]:
        return
    log.warning("this process splits words for Fluency with %s, the run's earlier processes with %s "
                "(NLTK's punkt_tab data is %s here); Fluency computed from now on uses %s, and %s "
                "records it", now["word_tokenizer"], before.get("word_tokenizer"),
                "installed" if now["word_tokenizer"] == "nltk.word_tokenize" else "not installed",
                now["word_tokenizer"], RunFolder.CONFIG)
    entry["metrics_before"] = before
    config["metrics"] = {**before, **now}


def continued_from(cfg: RunConfig) -> tuple[dict | None, list | None]:
    """The saved editor state a fresh run continues from ({editor_state, num_batches, total_edits}, read
    memory-mapped) and its context templates; (None, None) when it starts from unedited weights."""
    path = editor_state_path(cfg.model_name, cfg.load_editor_state)
    if path is None:
        return None, None
    state = read_state(path, mmap=True)
    info = {"editor_state": str(path.resolve()), "num_batches": int(state["num_batches"]),
            TOTAL_EDITS: int(total_edits_of(state))}  # read_state accepts a state saved before the rename
    templates = state.get("context_templates")
    return info, templates if isinstance(templates, list) else None


def earlier_timings(folder: RunFolder) -> dict | None:
    """The timings of the run's earlier processes; a damaged file (diagnostics only) starts afresh."""
    path = folder.timings_file
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except (ValueError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict) and all(isinstance(data.get(k), t) for k, t in
                                      (("segments", list), ("batches", list), ("before_edits", dict), ("final", dict))):
        return data
    log.warning("%s is damaged or not a timings file; its earlier segments are dropped and it is written anew", path)
    return None
