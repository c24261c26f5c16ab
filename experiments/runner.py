"""The sequential-editing experiment: stream records through an editor, then score every case.

Everything the CLI does is callable from Python through :func:`run_experiment`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import platform
import shutil
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import transformers
from tqdm.auto import tqdm

from dsets import (
    AttributeSnippets,
    DataFileMissing,
    load_edit_dataset,
    load_tfidf_vectorizer,
)
from experiments.algorithms import get_algorithm
from experiments.context_fit import check_records_fit
from experiments.curves import maybe_write_curve_point, read_curve_point, weights_digest
from experiments.downstream import run_downstream_eval, write_downstream_result
from experiments.downstream.tasks import check_glue_dir
from experiments.case_scoring import CaseScorer, no_timer
from experiments.metrics.fluency import MetricOptions, metric_settings
from experiments.run_files import (
    COMPLETE_MARKER,
    EDIT_REPORTS,
    LOCK_FILE,
    RUN_PATTERN,
    STATE_FILE,
    case_file,
    check_run_files,
    new_run_dir,
    read_json,
    release_run_lock,
    remove_stale_temporaries,
    take_run_lock,
)
from experiments.timings import TIMINGS_FILE, RunTimings
from experiments.saved_model import (
    edit_info,
    editor_state_path,
    save_dir_problem,
    save_edited_model,
)
from util.atomic_files import write_json_atomic as atomic_write_json
from util.editor import read_state
from util.hparams import HyperParamsError
from util.model_loading import check_device, check_dtype, check_model_source, load_model_and_tokenizer
from util.requests import normalize_request
from util.second_moment import model_fingerprint
from util.tokens import fact_token_index
from util.value_cache import ValueCache

log = logging.getLogger("experiments")
# Top-level packages of this project: their INFO lines reach run.log.
PROJECT_PACKAGES = ("experiments", "util", "dsets", "nse", "memit", "alphaedit", "rome", "baselines")


@dataclass
class RunConfig:
    """The experiment's settings (the CLI flags); saved as config.json in the run folder."""

    alg_name: str
    model_name: str
    hparams_fname: str
    ds_name: str
    dataset_size_limit: int | None = None
    num_edits: int = 1
    downstream_eval_steps: int = 0
    continue_from_run: str | None = None
    skip_generation_tests: bool = False
    generation_test_interval: int = 1
    conserve_memory: bool = False
    use_cache: bool = False
    device: str | None = None
    device_map: str | None = None
    dtype: str = "float32"
    seed: int = 0
    data_dir: str | None = None
    ds_file: str | None = None
    mom2_dataset: str | None = None
    stats_dir: str | None = None
    results_dir: str | None = None
    glue_dir: str | None = None
    downstream_n_per_task: int = 100
    values_batch_size: int | None = None
    eval_pre_edit: bool = False
    stop_after_batches: int | None = None
    dataset_offset: int = 0
    curve_every: int = 0
    save_model: str | None = None
    load_editor_state: str | None = None
    metric_departures: list[str] = dataclasses.field(default_factory=list)  # fluency.DEPARTURES names


class RunError(ValueError):
    """A bad experiment setting, reported before any run folder is created."""


def resolve_hparams_path(hparams_dir: str, fname: str, hparams_root: Path) -> Path:
    """``fname`` as a path, else under ``hparams/<hparams_dir>/`` (MEMIT_seq/prune/rect read MEMIT's)."""
    given = Path(fname).expanduser()
    for candidate in (given, hparams_root / hparams_dir / fname):
        if candidate.is_file():
            return candidate
    available = sorted(p.name for p in (hparams_root / hparams_dir).glob("*.json"))
    raise RunError(f"hyperparameter file {fname!r} not found as a path nor under {hparams_root / hparams_dir}/ "
                   f"(available: {', '.join(available) or 'none'})")


# Numeric flags: (name, smallest allowed value, what the values below mean to the user). None is always allowed.
_NUMBER_RULES = (
    ("dataset_size_limit", 1, "leave it out to edit every record"),
    ("num_edits", 1, "edits per batch"),
    ("downstream_eval_steps", 0, "0 turns the general-capability tasks off"),
    ("downstream_n_per_task", 1, "examples per task"),
    ("values_batch_size", 1, "leave it out for the whole batch"),
    ("stop_after_batches", 0, "batches to edit before stopping"),
    ("dataset_offset", 0, "records to skip"),
    ("curve_every", 0, "0 turns curves off"),
    ("seed", 0, "a seed for the random generators"),
)


def _check_numbers(cfg: RunConfig) -> None:
    for name, low, meaning in _NUMBER_RULES:
        value = getattr(cfg, name)
        if value is not None and value < low:
            raise RunError(f"--{name} must be >= {low} ({meaning}), got {value}")
    if cfg.generation_test_interval == 0 or cfg.generation_test_interval < -1:
        raise RunError(f"--generation_test_interval must be >= 1 (every N-th case) or -1 (none), "
                       f"got {cfg.generation_test_interval}")


def _check_results_dir(results: Path) -> None:
    """The results folder is a folder (or can be made one) that this process can write to."""
    existing = next(p for p in (results, *results.parents) if p.exists())
    if not existing.is_dir():
        raise RunError(f"--results_dir={results}: {existing} is a file, not a folder; pass a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunError(f"--results_dir={results}: {existing} is not writable (by this user, or a read-only "
                       "file system); pass a writable folder")


def _check_ds_file(cfg: RunConfig) -> None:
    if cfg.ds_file is None:
        return
    path = Path(cfg.ds_file).expanduser()
    if path.is_dir():
        raise RunError(f"--ds_file={cfg.ds_file} is a folder; pass a dataset JSON file, or pass the folder as "
                       "--data_dir (it must hold the canonical file names)")
    if not path.is_file():
        raise RunError(f"--ds_file={cfg.ds_file} does not exist; check the path")


def _check_settings(cfg: RunConfig, paths: dict[str, Path]) -> None:
    """Every setting that can be checked without the model: a bad one fails before any work."""
    from dsets import DS_NAMES

    try:
        get_algorithm(cfg.alg_name)
    except ValueError as err:
        raise RunError(str(err)) from None
    if cfg.ds_name not in DS_NAMES:
        raise RunError(f"unknown --ds_name={cfg.ds_name!r}; choose one of {', '.join(DS_NAMES)}")
    _check_numbers(cfg)
    if cfg.ds_name == "cf" and cfg.num_edits > 1:
        raise RunError("--ds_name=cf allows only --num_edits=1 (CounterFact repeats subjects across records); "
                       "use --ds_name=mcf for batches of edits")
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
    _check_results_dir(paths["results"])
    if cfg.save_model and (problem := save_dir_problem(cfg.save_model)):
        raise RunError(problem)
    state = editor_state_path(cfg.model_name, cfg.load_editor_state)  # a missing file fails now
    info = edit_info(state.parent) if state else None
    if info and info.get("alg_name") not in (None, cfg.alg_name):
        raise RunError(f"{state} is the state of an {info['alg_name']} editor; continue it with "
                       f"--alg_name={info['alg_name']} (or --load_editor_state=none to start afresh)")


def _versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}


def run_experiment(cfg: RunConfig, paths: dict[str, Path]) -> Path:
    """Run (or continue) one experiment; returns its run folder. ``paths``: results, data, stats,
    hparams, glue folders (already resolved against globals.yml and the CLI)."""
    _check_settings(cfg, paths)
    alg = get_algorithm(cfg.alg_name)
    hparams_path = resolve_hparams_path(alg.hparams_dir, cfg.hparams_fname, paths["hparams"])
    hparams = _load_hparams(cfg.alg_name, hparams_path)
    if cfg.mom2_dataset and hasattr(hparams, "mom2_dataset"):
        hparams = dataclasses.replace(hparams, mom2_dataset=cfg.mom2_dataset)
    elif cfg.mom2_dataset:
        log.warning("--mom2_dataset ignored: %s uses no covariance statistics", cfg.alg_name)
    if cfg.downstream_eval_steps:
        check_glue_dir(paths["glue"])
    with ExitStack() as held:
        resume_dir = _resume_dir(cfg, paths["results"], hparams)
        if resume_dir and (resume_dir / COMPLETE_MARKER).is_file():
            log.warning("%s is complete (%s): nothing to resume, nothing changed; start a new run to edit more",
                        resume_dir, COMPLETE_MARKER)
            return resume_dir
        notes = _lock(resume_dir, held, cfg) if resume_dir else []  # before the model: a second process stops now
        log.info("loading %s (%s)", cfg.model_name, cfg.dtype)
        model, tok = load_model_and_tokenizer(cfg.model_name, cfg.device, cfg.dtype, cfg.device_map)
        try:
            hparams.resolved_for(model)  # layers and module names against this model, before any work
        except HyperParamsError as err:
            raise RunError(f"{hparams_path}: {err}") from None
        records = _load_records(cfg, paths, tok)
        requests = [_request_of(r, tok) for r in records]  # validates every record before any edit
        run_dir = resume_dir or new_run_dir(paths["results"] / cfg.alg_name)
        notes += [] if resume_dir else _lock(run_dir, held, cfg)
        try:
            with _log_file(run_dir):
                log.info("%s run folder %s: %d records in batches of %d", "resuming" if resume_dir else "new",
                         run_dir, len(records), cfg.num_edits)
                for note in notes:
                    log.warning(note)
                return _run(cfg, paths, alg, hparams, model, tok, records, requests, run_dir, fresh=resume_dir is None)
        except BaseException:
            if resume_dir is None and _holds_no_results(run_dir):
                shutil.rmtree(run_dir, ignore_errors=True)  # nothing worth resuming: leave no husk
                with contextlib.suppress(OSError):
                    run_dir.parent.rmdir()  # the method's folder, when this run was its only one
            raise


def _load_hparams(alg_name: str, path: Path):
    """The method's hyperparameters from ``path``; a file of another method's keys says which method."""
    from experiments.algorithms import ALGORITHMS

    alg = ALGORITHMS[alg_name]
    try:
        return alg.hparams_class.from_json(path)
    except HyperParamsError as err:
        if "unknown key" not in str(err) and "missing required key" not in str(err):
            raise
        for name, other in ALGORITHMS.items():
            if other.hparams_class is alg.hparams_class:
                continue
            try:
                other.hparams_class.from_json(path)
            except HyperParamsError:
                continue
            raise HyperParamsError(f"{err}. The file reads as {name}'s hyperparameters: run it with "
                                   f"--alg_name={name}, or pass a {alg_name} file (hparams/{alg.hparams_dir}/)") from None
        raise


def _lock(run_dir: Path, held: ExitStack, cfg: RunConfig) -> list[str]:
    """Lock ``run_dir`` until ``held`` closes and clean what a killed process left; notes for run.log."""
    taken_over = take_run_lock(run_dir)
    held.callback(release_run_lock, run_dir)
    stale = remove_stale_temporaries(run_dir)
    if cfg.save_model:  # a killed --save_model leaves its half-written folder beside the target
        target = Path(cfg.save_model).expanduser()
        stale += remove_stale_temporaries(target.parent, prefix=target.name, below=False)
    notes = [taken_over] if taken_over else []
    if stale:
        notes.append(f"removed {len(stale)} temporary file(s) a killed save left: {', '.join(p.name for p in stale)}")
    return notes


def _load_records(cfg: RunConfig, paths: dict[str, Path], tok) -> list[dict]:
    """This run's records: after --dataset_offset, at most --dataset_size_limit; none is an error."""
    size = None if cfg.dataset_size_limit is None else cfg.dataset_offset + cfg.dataset_size_limit
    records = load_edit_dataset(cfg.ds_name, cfg.ds_file or paths["data"], tok=tok, size=size)
    kept = records[cfg.dataset_offset:]
    if not kept:
        skipped = f" and --dataset_offset={cfg.dataset_offset} skips them all" if cfg.dataset_offset else ""
        raise RunError(f"no records to edit: {records.source} holds {len(records)} record(s){skipped}")
    if cfg.num_edits > len(kept):  # case files are named after --num_edits: they would claim edits never made
        raise RunError(f"--num_edits={cfg.num_edits} is more than the {len(kept)} record(s) to edit "
                       f"({records.source}); pass --num_edits={len(kept)} or less")
    if len(kept) % cfg.num_edits:  # case files say "<num_edits>_edits": the last batch is smaller
        log.warning("the last batch holds %d edit(s), not --num_edits=%d (%d records); its case files are named "
                    "%d_edits like the others, their grouped_case_ids list the batch", len(kept) % cfg.num_edits,
                    cfg.num_edits, len(kept), cfg.num_edits)
    if cfg.dataset_size_limit is not None and len(kept) < cfg.dataset_size_limit:
        log.warning("--dataset_size_limit=%d: %s holds only %d record(s) to edit; editing those",
                    cfg.dataset_size_limit, records.source, len(kept))
    return list(kept)


def _holds_no_results(run_dir: Path) -> bool:
    """Only the files written at start (config, params, log, lock): scores or state are kept."""
    return {p.name for p in run_dir.iterdir()} <= {"config.json", "params.json", "run.log", LOCK_FILE}


# Flags a resumed run may change: they change neither what is computed nor how it is scored (the
# hyperparameter file and corpus are compared by content, params.json). Every other flag must match.
RESUMABLE_FLAGS = frozenset({"continue_from_run", "stop_after_batches", "device", "device_map", "conserve_memory", "use_cache",
                             "stats_dir", "results_dir", "save_model", "hparams_fname", "mom2_dataset"})


def _same_setting(saved: Any, now: Any) -> bool:
    if saved == now:
        return True
    if isinstance(saved, str) and isinstance(now, str):  # the same path written differently
        return Path(saved).expanduser().resolve() == Path(now).expanduser().resolve()
    return False


def _resume_dir(cfg: RunConfig, results: Path, hparams) -> Path | None:
    """The run folder to continue; refused when a flag that changes the results differs from the run's."""
    if not cfg.continue_from_run:
        return None
    if not RUN_PATTERN.match(cfg.continue_from_run):  # a path would resume a run of another method or folder
        raise RunError(f"--continue_from_run={cfg.continue_from_run!r} is not a run folder name; pass the name of a "
                       f"folder in {results / cfg.alg_name} (run_NNN), and --results_dir for another results folder")
    run_dir = results / cfg.alg_name / cfg.continue_from_run
    if not (run_dir / "config.json").is_file():
        raise RunError(f"--continue_from_run={cfg.continue_from_run}: {run_dir} holds no config.json to resume")
    check_run_files(run_dir)
    saved = read_json(run_dir / "config.json")["args"]
    defaults = dataclasses.asdict(RunConfig("", "", "", ""))  # a flag added since the run was started
    differ = [f"{key}={value!r} differs from the run's {saved.get(key, defaults[key])!r}"
              for key, value in dataclasses.asdict(cfg).items()
              if key not in RESUMABLE_FLAGS and not _same_setting(saved.get(key, defaults[key]), value)]
    if differ:
        raise RunError(f"--continue_from_run={cfg.continue_from_run}: {'; '.join(differ)}. These change what is "
                       "computed or scored: resume with the run's flags (config.json) or start a new run")
    saved_params = read_json(run_dir / "params.json") if (run_dir / "params.json").is_file() else None
    now = hparams.to_dict()
    if saved_params is not None and saved_params != now:
        keys = sorted(k for k in saved_params.keys() | now.keys() if saved_params.get(k) != now.get(k))
        changes = "; ".join(f"{k}: run {saved_params.get(k)!r}, now {now.get(k)!r}" for k in keys)
        raise RunError(f"--continue_from_run: the hyperparameters differ from {run_dir / 'params.json'} ({changes}); "
                       "resume with the run's hyperparameters or start a new run")
    return run_dir


def _request_of(record: dict, tok) -> dict:
    request = normalize_request({"case_id": record["case_id"], **record["requested_rewrite"]})
    try:  # a subject that does not survive tokenisation fails now, not hours into the run
        fact_token_index(tok, request["prompt"], request["subject"])
    except ValueError as err:
        raise RunError(f"case_id={record['case_id']}: {err}") from None
    return request


def _run(cfg, paths, alg, hparams, model, tok, records, requests, run_dir: Path, fresh: bool) -> Path:
    if fresh:
        continued, templates = _continued_from(cfg)
        templates = templates or alg.editor_class.make_context_templates(model, tok, hparams, cfg.seed)
        check_records_fit(model, tok, records, templates, _generation_every(cfg))  # before any edit
        atomic_write_json(run_dir / "params.json", hparams.to_dict())
        metrics = metric_settings(MetricOptions.from_names(cfg.metric_departures))  # tokenizer used, departures
        atomic_write_json(run_dir / "config.json", {"args": dataclasses.asdict(cfg), "versions": _versions(),
                                                   "context_templates": templates, "started": time.ctime(),
                                                   "metrics": metrics, "continued_from": continued})
    else:
        config = read_json(run_dir / "config.json")
        templates, continued = config["context_templates"], config.get("continued_from")
        check_records_fit(model, tok, records, templates, _generation_every(cfg))
        _record_resume(cfg, run_dir, config)
    editor = _make_editor(cfg, paths, alg, hparams, model, tok, templates)
    # The state before prepare(): C0 is collected on the original weights, which a saved edited model
    # (--model_name=<--save_model folder>) gets back only from its state.
    if (run_dir / STATE_FILE).is_file():
        editor.load(run_dir / STATE_FILE)
        log.info("resuming %s after batch %d (%d edits)", run_dir, editor.num_batches, editor.num_edits)
    elif continued:
        editor.load(continued["editor_state"])
        if getattr(editor, "finished", False):
            raise RunError(f"{continued['editor_state']} was saved after the editor finished (finish()); "
                           "it cannot edit more: continue from a state saved before (--save_model stores one)")
        log.info("continuing from %s: %d edits in %d batches so far", continued["editor_state"], editor.num_edits,
                 editor.num_batches)
    timings = RunTimings(run_dir, _earlier_timings(run_dir))
    with timings.phase("prepare_seconds", where="before_edits"):
        editor.prepare()  # C0 now: a missing corpus fails before pre-edit scoring and downstream runs
    first_batch = continued["num_batches"] if continued else 0  # editor batches before this run's first
    extras = None  # attribute snippets + TF-IDF, loaded once for both scoring passes

    def scorer(generation: bool = True) -> CaseScorer:
        nonlocal extras
        if generation and extras is None:
            extras = _generation_resources(cfg, paths) if cfg.ds_name != "zsre" else (None, None)
        return CaseScorer(model, tok, cfg.ds_name, _generation_every(cfg) if generation else 0, cfg.seed,
                          MetricOptions.from_names(cfg.metric_departures), extras if generation else (None, None))

    if cfg.eval_pre_edit and editor.num_batches == first_batch:
        with timings.phase("pre_edit_seconds", where="before_edits"):
            _score_cases(cfg, scorer(), records, run_dir / "pre_edit", "pre-edit scoring")
    batches = [requests[s : s + cfg.num_edits] for s in range(0, len(requests), cfg.num_edits)]
    with timings.phase("downstream_seconds", where="before_edits"):
        _maybe_downstream(cfg, paths, model, tok, run_dir, editor.num_batches, editor.num_edits)
    with timings.phase("curve_seconds", where="before_edits"):
        _maybe_curve(cfg, scorer(False), records, run_dir, editor, first_batch)  # a point a kill interrupted
    timings.write()
    done = editor.num_batches - first_batch  # this run's batches already applied
    for index in tqdm(range(done, len(batches)), desc="editing", unit="batch", initial=done, total=len(batches)):
        if cfg.stop_after_batches is not None and index >= cfg.stop_after_batches:
            log.info("stopping after %d batches as asked; continue with --continue_from_run=%s", index, run_dir.name)
            return run_dir
        timings.start_batch(editor.num_batches + 1)
        report = editor.edit(batches[index])  # the editor logs its one-line report
        _append_report(run_dir, report)
        with timings.phase("save_seconds"):
            editor.save(run_dir / STATE_FILE)
        with timings.phase("downstream_seconds"):
            _maybe_downstream(cfg, paths, model, tok, run_dir, editor.num_batches, editor.num_edits)
        with timings.phase("curve_seconds"):
            _maybe_curve(cfg, scorer(False), records, run_dir, editor, first_batch)
        timings.end_batch(report, run_dir / STATE_FILE)
    staged = _stage_editor_state(cfg, editor, run_dir) if cfg.save_model else None  # before finish(): continuable
    if not editor.finished:
        with timings.phase("finish_seconds", where="final"):
            editor.finish()  # e.g. PRUNE's restraint at the original's timing; idempotent once saved
            editor.save(run_dir / STATE_FILE)
    if cfg.save_model:
        with timings.phase("save_model_seconds", where="final"):
            _save_model(cfg, model, tok, editor, run_dir, staged)
    final = scorer()
    n_generation = sum(final.has_generation(i, r) for i, r in enumerate(records))
    known = _curve_posts_of_these_weights(cfg, run_dir, editor)
    log.info("final scoring: %d cases (%d with generation)%s", len(records), n_generation,
             "; teacher-forced metrics from the last curve point (the same weights)" if known else "")
    _score_cases(cfg, final, records, run_dir, "scoring edited model", num_edits=cfg.num_edits,
                 first_batch=first_batch, timer=lambda name: timings.phase(name, where="final"), known=known)
    timings.note("final", n_cases=len(records), n_generation_cases=n_generation)
    timings.write()
    atomic_write_json(run_dir / COMPLETE_MARKER, {"finished": time.ctime(), "num_batches": editor.num_batches,
                                                 "num_edits": editor.num_edits})
    log.info("run complete: %d edits in %d batches, %d cases scored; summarize with python summarize.py "
             "--dir_name=%s --runs=%s", editor.num_edits, editor.num_batches, len(records), cfg.alg_name, run_dir.name)
    return run_dir


def _earlier_timings(run_dir: Path) -> dict | None:
    """The timings of the run's earlier processes; a damaged file (diagnostics only) starts afresh."""
    path = run_dir / TIMINGS_FILE
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


def _generation_every(cfg: RunConfig) -> int:
    """Generation tests on every N-th case (0: none), as CaseScorer runs them."""
    if cfg.skip_generation_tests or cfg.ds_name == "zsre":
        return 0
    return max(cfg.generation_test_interval, 0)


def _record_resume(cfg: RunConfig, run_dir: Path, config: dict) -> None:
    """config.json keeps, per resume, the flags it changed (RESUMABLE_FLAGS only: the others are refused)."""
    args = config["args"]
    changed = {k: v for k, v in dataclasses.asdict(cfg).items()
               if k in RESUMABLE_FLAGS - {"continue_from_run"} and args.get(k) != v}
    config.setdefault("resumed", []).append({"time": time.ctime(), "changed": changed})
    atomic_write_json(run_dir / "config.json", config)


def _continued_from(cfg) -> tuple[dict | None, list | None]:
    """The saved editor state a fresh run continues from ({editor_state, num_batches, num_edits}, read
    memory-mapped) and its context templates; (None, None) when it starts from unedited weights."""
    path = editor_state_path(cfg.model_name, cfg.load_editor_state)
    if path is None:
        return None, None
    state = read_state(path, mmap=True)
    info = {"editor_state": str(path.resolve()), "num_batches": int(state["num_batches"]),
            "num_edits": int(state["num_edits"])}
    templates = state.get("context_templates")
    return info, templates if isinstance(templates, list) else None


def _maybe_curve(cfg, scorer: CaseScorer, records, run_dir: Path, editor, first_batch: int) -> None:
    """--curve_every: the cases of this run edited so far, teacher-forced, every N batches."""
    if not cfg.curve_every:
        return
    edited = records[: (editor.num_batches - first_batch) * cfg.num_edits]
    maybe_write_curve_point(run_dir, cfg.curve_every, editor.num_batches, editor.num_edits, cfg.ds_name, edited,
                            scorer.teacher_forced, weights_digest=lambda: weights_digest(editor.weights.values()))


def _curve_posts_of_these_weights(cfg, run_dir: Path, editor):
    """The final scoring's teacher-forced metrics where the curve point after the last batch already
    holds them for exactly these weights (same digest: finish() changed nothing); else None."""
    if not cfg.curve_every:
        return None
    point = read_curve_point(run_dir, editor.num_edits)
    if point is None or point.get("weights_digest") != weights_digest(editor.weights.values()):
        return None
    return lambda record: point["cases"].get(str(record["case_id"]))


def _saved_already(cfg, editor, run_dir: Path) -> bool:
    info = edit_info(cfg.save_model)
    return bool(info) and info.get("run") == str(run_dir) and info.get("num_edits") == editor.num_edits


def _stage_editor_state(cfg, editor, run_dir: Path) -> Path | None:
    """The editor state before finish() (e.g. PRUNE's final restraint), beside the --save_model folder: a
    run continued from it edits on as the unbroken run would, and finishes at its own end."""
    if _saved_already(cfg, editor, run_dir):
        return None
    target = Path(cfg.save_model).expanduser()
    staged = target.with_name(f".{target.name}.{STATE_FILE}")
    if getattr(editor, "finished", False):  # resumed after finish(): a state staged before the kill, if any
        ok = staged.is_file() and read_state(staged, mmap=True)["num_edits"] == editor.num_edits
        return staged if ok else None
    editor.save(staged)
    return staged


def _save_model(cfg, model, tok, editor, run_dir: Path, staged_state: Path | None = None) -> None:
    """--save_model: the edited model (safetensors) + tokenizer + editor state, once per run."""
    if _saved_already(cfg, editor, run_dir):
        return  # a resumed run that had saved it already
    base = (edit_info(cfg.model_name) or {}).get("base_model", cfg.model_name) if Path(cfg.model_name).is_dir() \
        else cfg.model_name
    save_edited_model(model, tok, editor, cfg.save_model, {"alg_name": cfg.alg_name, "base_model": base,
                                                             "model_name": cfg.model_name, "run": str(run_dir),
                                                             "ds_name": cfg.ds_name, "dtype": cfg.dtype},
                      state_file=staged_state if staged_state and staged_state.is_file() else None)
    log.info("edited model, tokenizer and editor state saved to %s", cfg.save_model)


def _append_report(run_dir: Path, report) -> None:
    """``edit_reports.json``: one entry per batch (time, value loss, residuals per round...)."""
    path = run_dir / EDIT_REPORTS
    reports = read_json(path) if path.is_file() else []
    reports = [r for r in reports if r["batch_index"] < report.batch_index]  # a re-done batch replaces its entry
    # NaN (e.g. no fresh value loss: every z came from the cache) is not JSON: null.
    entry = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in dataclasses.asdict(report).items()}
    atomic_write_json(path, reports + [entry])


def _make_editor(cfg, paths, alg, hparams, model, tok, templates):
    editor = alg.make_editor(model, tok, hparams, stats_dir=paths["stats"], context_templates=templates,
                             seed=cfg.seed, originals_on_cpu=cfg.conserve_memory,
                             values_batch_size=cfg.values_batch_size)
    if cfg.use_cache and not editor.has_values:
        log.warning("--use_cache ignored: %s optimises no target values", cfg.alg_name)
    elif cfg.use_cache:
        resolved = editor.hparams  # module paths filled in for this model
        names = [resolved.rewrite_module(l) for l in resolved.layers]
        model_id = f"{Path(cfg.model_name).name}-{model_fingerprint(model, names)}-{cfg.dtype}"
        editor.value_cache = ValueCache(paths["stats"] / "value_cache", model_id, cfg.ds_name, editor.value_spec,
                                        templates)
    return editor


def _maybe_downstream(cfg, paths, model, tok, run_dir: Path, batch_index: int, num_edits: int) -> None:
    """Evaluate general capability on the unedited model and every N batches (once per point)."""
    if not cfg.downstream_eval_steps or batch_index % cfg.downstream_eval_steps:
        return
    path = run_dir / "downstream" / f"edits_{num_edits:06d}.json"
    if path.is_file():
        return
    log.info("downstream after %d edits: starting", num_edits)
    result = run_downstream_eval(model, tok, paths["glue"], n_per_task=cfg.downstream_n_per_task, seed=cfg.seed)
    write_downstream_result(path, result, num_edits=num_edits, batch_index=batch_index)
    log.info("downstream after %d edits: %s", num_edits,
             ", ".join(f"{t} acc {m['accuracy']:.3f}" for t, m in result.items()))


def _score_cases(cfg, scorer: CaseScorer, records, out_dir: Path, desc: str, num_edits: int | None = None,
                 first_batch: int = 0, timer=None, known=None) -> None:
    """One JSON per case; existing files are kept, so an interrupted scoring pass resumes."""
    reports = read_json(out_dir / EDIT_REPORTS) if num_edits and (out_dir / EDIT_REPORTS).is_file() else []
    edit_seconds = {r["batch_index"]: r["seconds"] for r in reports}

    def path_of(record: dict) -> Path:
        return case_file(out_dir, num_edits, record["case_id"]) if num_edits else out_dir / f"case_{record['case_id']}.json"

    todo = [(i, r) for i, r in enumerate(records) if not path_of(r).is_file()]
    bar = tqdm(total=len(records), initial=len(records) - len(todo), desc=desc, unit="case")
    with bar:
        for i, record, metrics in scorer.score(todo, timer=timer or no_timer, known=known):
            bar.update()
            if num_edits is None:
                atomic_write_json(path_of(record), metrics)
                continue
            group = i // cfg.num_edits * cfg.num_edits
            result = {"case_id": record["case_id"],
                      "grouped_case_ids": [r["case_id"] for r in records[group : group + cfg.num_edits]],
                      "num_edits": cfg.num_edits, "requested_rewrite": record["requested_rewrite"],
                      "time": edit_seconds.get(first_batch + i // cfg.num_edits), "post": metrics}  # its batch's
            pre = out_dir / "pre_edit" / f"case_{record['case_id']}.json"
            if pre.is_file():
                result["pre"] = read_json(pre)
            atomic_write_json(path_of(record), result)


def _generation_resources(cfg, paths):
    """Attribute snippets and TF-IDF for Consistency; offline, their absence costs only that metric."""
    if cfg.skip_generation_tests or cfg.generation_test_interval <= 0:
        return None, None
    try:
        snips = AttributeSnippets(paths["data"])
    except DataFileMissing as err:
        log.warning("Consistency (reference_score) will be missing: %s", err)
        return None, None
    return snips, load_tfidf_vectorizer(paths["data"], fit_texts=snips.texts())


@contextmanager
def _log_file(run_dir: Path) -> Iterator[None]:
    """Every package's log lines also go to run_dir/run.log for the duration of the run (and no
    longer): the handler sits on the root logger, and the project's own packages log at INFO."""
    handler = logging.FileHandler(run_dir / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    ours = [logging.getLogger(name) for name in PROJECT_PACKAGES]
    levels = [lg.level for lg in ours]
    root.addHandler(handler)
    for lg in ours:
        if lg.getEffectiveLevel() > logging.INFO:
            lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for lg, level in zip(ours, levels):
            lg.setLevel(level)
        root.removeHandler(handler)
        handler.close()
