"""The sequential-editing experiment: stream records through an editor, then score every case.

Everything the CLI does is callable from Python through :func:`run_experiment`. Read in order:
:func:`run_experiment` (checks, run folder, model), :func:`_run` (the batch loop), :func:`_finish`
(finish, save, final scoring). The settings are :class:`experiments.settings.RunConfig`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import platform
import shutil
import time
from contextlib import ExitStack
from pathlib import Path

import torch
import transformers
from tqdm.auto import tqdm

from experiments.algorithms import Algorithm, get_algorithm, variant_label
from experiments.anchor_pool import editor_inputs
from experiments.context_fit import check_records_fit
from experiments.downstream.tasks import check_glue_dir
from experiments.hparams_files import load_hparams, resolve_hparams_path
from experiments.metrics.fluency import MetricOptions, metric_settings
from experiments.records import load_records, request_of
from experiments.resume import continued_from, earlier_timings, record_resume, resume_dir
from experiments.run_files import new_run_folder, release_run_lock, remove_stale_temporaries, take_run_lock
from experiments.run_folder import RunFolder
from experiments.run_log import run_log
from experiments.run_paths import RunPaths
from experiments.saved_model import save_model_of_run, stage_editor_state
from experiments.scoring_passes import CaseScoring, CurvePass, DownstreamPass, Scorers, generation_every
from experiments.setting_checks import check_settings
from experiments.settings import RunConfig, RunError
from experiments.timings import RunTimings
from util.editor import Editor
from util.hparams import HyperParamsError
from util.model_loading import load_model_and_tokenizer
from util.second_moment import model_fingerprint
from util.value_cache import ValueCache

__all__ = ["RunConfig", "RunError", "RunPaths", "run_experiment"]

log = logging.getLogger("experiments")


def run_experiment(cfg: RunConfig, paths: RunPaths | None = None) -> Path:
    """Run (or continue) one experiment; returns its run folder. ``paths``: the folders it reads and
    writes (default: the settings' folders, else globals.yml)."""
    paths = paths or RunPaths.of(cfg)
    check_settings(cfg, paths)
    alg = get_algorithm(cfg.alg_name)
    hparams_path = resolve_hparams_path(alg.hparams_dir, cfg.hparams_fname, paths.hparams)
    hparams = load_hparams(cfg.alg_name, hparams_path)
    if cfg.mom2_dataset and hasattr(hparams, "mom2_dataset"):
        hparams = dataclasses.replace(hparams, mom2_dataset=cfg.mom2_dataset)
    elif cfg.mom2_dataset:
        log.warning("--mom2_dataset ignored: %s uses no covariance statistics", cfg.alg_name)
    if cfg.downstream_eval_steps:
        check_glue_dir(paths.glue)
    with ExitStack() as held:
        resumed = resume_dir(cfg, paths.results, hparams)
        if resumed and resumed.is_complete:
            log.warning("%s is complete (%s): nothing to resume, nothing changed; start a new run to edit more",
                        resumed.path, RunFolder.COMPLETE)
            return resumed.path
        notes = _lock(resumed, held, cfg) if resumed else []  # before the model: a second process stops now
        log.info("loading %s (%s)", cfg.model_name, cfg.dtype)
        model, tok = load_model_and_tokenizer(cfg.model_name, cfg.device, cfg.dtype, cfg.device_map)
        try:
            hparams.resolved_for(model)  # layers and module names against this model, before any work
        except HyperParamsError as err:
            raise RunError(f"{hparams_path}: {err}") from None
        records = load_records(cfg, paths, tok)
        requests = [request_of(r, tok) for r in records]  # validates every record before any edit
        folder = resumed or new_run_folder(paths.results / cfg.alg_name)
        notes += [] if resumed else _lock(folder, held, cfg)
        try:
            with run_log(folder.path):
                log.info("%s run folder %s: %d records in batches of %d", "resuming" if resumed else "new",
                         folder.path, len(records), cfg.num_edits)
                for note in notes:
                    log.warning(note)
                editor, first_batch = _start(cfg, paths, alg, hparams, model, tok, records, folder)
                return _run(cfg, paths, editor, records, requests, folder, first_batch)
        except BaseException:
            if resumed is None and folder.holds_no_results():
                shutil.rmtree(folder.path, ignore_errors=True)  # nothing worth resuming: leave no husk
                with contextlib.suppress(OSError):
                    folder.path.parent.rmdir()  # the method's folder, when this run was its only one
            raise


def _lock(folder: RunFolder, held: ExitStack, cfg: RunConfig) -> list[str]:
    """Lock the folder until ``held`` closes and clean what a killed process left; notes for the run's log."""
    taken_over = take_run_lock(folder)
    held.callback(release_run_lock, folder)
    stale = remove_stale_temporaries(folder.path)
    if cfg.save_model:  # a killed --save_model leaves its half-written folder beside the target
        target = Path(cfg.save_model).expanduser()
        stale += remove_stale_temporaries(target.parent, prefix=target.name, below=False)
    notes = [taken_over] if taken_over else []
    if stale:
        notes.append(f"removed {len(stale)} temporary file(s) a killed save left: {', '.join(p.name for p in stale)}")
    return notes


def _start(cfg: RunConfig, paths: RunPaths, alg: Algorithm, hparams, model, tok, records: list[dict],
           folder: RunFolder) -> tuple[Editor, int]:
    """The editor as the run left it (or as a saved state left it, or fresh), with config.json written
    or its resume recorded; also the editor batches before this run's first."""
    config = folder.read_config()  # None: a new run
    if config:
        continued, templates = config.get("continued_from"), config["context_templates"]
    else:
        continued, templates = continued_from(cfg)
        templates = templates or alg.editor_class.make_context_templates(model, tok, hparams, cfg.seed)
    check_records_fit(model, tok, records, templates, generation_every(cfg))  # before any edit
    if config:
        record_resume(cfg, folder, config)
    else:
        folder.write_params(hparams.to_dict())
        metrics = metric_settings(MetricOptions.from_names(cfg.metric_departures))  # tokenizer used, departures
        # The variant label: the reporter tells the run from its method's plain form without knowing the method.
        folder.write_config({"args": dataclasses.asdict(cfg), "versions": _versions(),
                             "context_templates": templates, "started": time.ctime(),
                             "metrics": metrics, "continued_from": continued,
                             "variant": variant_label(hparams.to_dict())})
    editor = _make_editor(cfg, paths, alg, hparams, model, tok, templates)
    # The state before prepare(): C0 is collected on the original weights, which a saved edited model
    # (--model_name=<--save_model folder>) gets back only from its state.
    if folder.state_file.is_file():
        editor.load(folder.state_file)
        log.info("resuming %s after batch %d (%d edits)", folder.path, editor.num_batches, editor.total_edits)
    elif continued:
        editor.load(continued["editor_state"])
        if getattr(editor, "finished", False):
            raise RunError(f"{continued['editor_state']} was saved after the editor finished (finish()); "
                           "it cannot edit more: continue from a state saved before (--save_model stores one)")
        log.info("continuing from %s: %d edits in %d batches so far", continued["editor_state"], editor.total_edits,
                 editor.num_batches)
    return editor, continued["num_batches"] if continued else 0


def _run(cfg: RunConfig, paths: RunPaths, editor: Editor, records: list[dict], requests: list[dict],
         folder: RunFolder, first_batch: int) -> Path:
    """The batch loop: edit, save the state, then the passes due after this batch (downstream, curve)."""
    timings = RunTimings(folder.timings_file, earlier_timings(folder))
    with timings.phase("prepare_seconds", where="before_edits"):
        editor.prepare()  # C0 now: a missing corpus fails before pre-edit scoring and downstream runs
    scorers = Scorers(cfg, paths, editor.model, editor.tok)
    if cfg.eval_pre_edit and editor.num_batches == first_batch:
        with timings.phase("pre_edit_seconds", where="before_edits"):
            CaseScoring(cfg, scorers(), records, folder, "pre-edit scoring").run()
    passes = [DownstreamPass(cfg, paths, editor.model, editor.tok, folder),
              CurvePass(cfg, scorers, records, folder, first_batch)]
    for scoring in passes:  # the unedited model's tasks; a curve point a kill interrupted
        with timings.phase(scoring.phase, where="before_edits"):
            scoring.run(editor)
    timings.write()
    batches = [requests[s : s + cfg.num_edits] for s in range(0, len(requests), cfg.num_edits)]
    done = editor.num_batches - first_batch  # this run's batches already applied
    for index in tqdm(range(done, len(batches)), desc="editing", unit="batch", initial=done, total=len(batches)):
        if cfg.stop_after_batches is not None and index >= cfg.stop_after_batches:
            log.info("stopping after %d batches as asked; continue with --continue_from_run=%s", index, folder.name)
            return folder.path
        timings.start_batch(editor.num_batches + 1)
        report = editor.edit(batches[index])  # the editor logs its one-line report
        folder.append_report(_report_entry(report))
        with timings.phase("save_seconds"):
            editor.save(folder.state_file)
        for scoring in passes:
            with timings.phase(scoring.phase):
                scoring.run(editor)
        timings.end_batch(report, folder.state_file)
    return _finish(cfg, editor, scorers, passes[1], records, folder, first_batch, timings)


def _finish(cfg: RunConfig, editor: Editor, scorers: Scorers, curves: CurvePass, records: list[dict],
            folder: RunFolder, first_batch: int, timings: RunTimings) -> Path:
    """After the last batch: the editor's finish(), --save_model, the final scoring, the completion marker."""
    staged = stage_editor_state(cfg.save_model, editor, folder.path) if cfg.save_model else None  # continuable
    if not editor.finished:
        with timings.phase("finish_seconds", where="final"):
            editor.finish()  # e.g. PRUNE's restraint at the original's timing; idempotent once saved
            editor.save(folder.state_file)
    if cfg.save_model:
        with timings.phase("save_model_seconds", where="final"):
            if save_model_of_run(cfg, editor.model, editor.tok, editor, folder.path, staged):
                log.info("edited model, tokenizer and editor state saved to %s", cfg.save_model)
    final = scorers()
    n_generation = sum(final.has_generation(i, r) for i, r in enumerate(records))
    known = curves.posts_of_these_weights(editor)
    log.info("final scoring: %d cases (%d with generation)%s", len(records), n_generation,
             "; teacher-forced metrics from the last curve point (the same weights)" if known else "")
    CaseScoring(cfg, final, records, folder, "scoring edited model", batch_size=cfg.num_edits, first_batch=first_batch,
                timer=lambda name: timings.phase(name, where="final"), known=known).run(editor)
    timings.note("final", n_cases=len(records), n_generation_cases=n_generation)
    timings.write()
    folder.write_complete(editor.num_batches, editor.total_edits)
    log.info("run complete: %d edits in %d batches, %d cases scored; summarize with python summarize.py "
             "--dir_name=%s --runs=%s", editor.total_edits, editor.num_batches, len(records), cfg.alg_name,
             folder.name)
    return folder.path


def _versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}


def _report_entry(report) -> dict:
    """An EditReport as JSON: NaN (e.g. no fresh value loss: every z came from the cache) becomes null."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in dataclasses.asdict(report).items()}


def _make_editor(cfg: RunConfig, paths: RunPaths, alg: Algorithm, hparams, model, tok, templates) -> Editor:
    editor = alg.make_editor(model, tok, hparams, stats_dir=paths.stats, context_templates=templates,
                             seed=cfg.seed, originals_on_cpu=cfg.conserve_memory,
                             values_batch_size=cfg.values_batch_size, **editor_inputs(hparams))
    if cfg.use_cache and not editor.has_values:
        log.warning("--use_cache ignored: %s optimises no target values", cfg.alg_name)
    elif cfg.use_cache:
        resolved = editor.hparams  # module paths filled in for this model
        names = [resolved.rewrite_module(l) for l in resolved.layers]
        model_id = f"{Path(cfg.model_name).name}-{model_fingerprint(model, names)}-{cfg.dtype}"
        editor.value_cache = ValueCache(paths.stats / "value_cache", model_id, cfg.ds_name, editor.value_spec,
                                        templates)
    return editor
