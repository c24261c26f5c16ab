"""The scoring a run does besides editing, behind one interface: ``run(editor)`` when the pass is due.

* :class:`DownstreamPass`: general-capability tasks on the unedited model and every N batches.
* :class:`CurvePass`: the cases edited so far, teacher-forced, every N batches (``curves/``).
* :class:`CaseScoring`: one JSON per case, on the unedited model (``--eval_pre_edit``) or after
  the last batch (the run's results); an interrupted pass resumes from the files it wrote.

Each pass reads the model only, so a run's results are the same whichever passes it runs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from tqdm.auto import tqdm

from dsets import AttributeSnippets, DataFileMissing, load_tfidf_vectorizer
from experiments.case_scoring import CaseScorer, Timer, no_timer
from experiments.curves import maybe_write_curve_point, read_curve_point, weights_digest
from experiments.downstream import run_downstream_eval, write_downstream_result
from experiments.ds_kinds import kind_of
from experiments.metrics.fluency import MetricOptions
from experiments.run_folder import RunFolder, read_json
from experiments.run_paths import RunPaths
from experiments.settings import RunConfig
from util.atomic_files import write_json_atomic

log = logging.getLogger("experiments")


class ScoringPass(Protocol):
    phase: str  # the timings.json phase its seconds are counted under

    def run(self, editor) -> None:
        """Score the model as ``editor`` has left it, if this pass is due now (else nothing)."""


def generation_every(cfg: RunConfig) -> int:
    """Generation tests on every N-th case (0: none), as CaseScorer runs them."""
    if cfg.skip_generation_tests or not kind_of(cfg.ds_name).generation:
        return 0
    return max(cfg.generation_test_interval, 0)


class Scorers:
    """CaseScorers of one run; the attribute snippets and TF-IDF (Consistency) are loaded once, when
    a generation pass first needs them."""

    def __init__(self, cfg: RunConfig, paths: RunPaths, model, tok) -> None:
        self.cfg, self.paths, self.model, self.tok = cfg, paths, model, tok
        self._extras: tuple[Any, Any] | None = None

    def __call__(self, generation: bool = True) -> CaseScorer:
        cfg = self.cfg
        if generation and self._extras is None:
            self._extras = _generation_resources(cfg, self.paths) if generation_every(cfg) else (None, None)
        return CaseScorer(self.model, self.tok, cfg.ds_name, generation_every(cfg) if generation else 0, cfg.seed,
                          MetricOptions.from_names(cfg.metric_departures),
                          self._extras if generation else (None, None),
                          generation_eval=cfg.generation_eval)


def _generation_resources(cfg: RunConfig, paths: RunPaths) -> tuple[Any, Any]:
    """Attribute snippets and TF-IDF for Consistency; offline, their absence costs only that metric."""
    if cfg.skip_generation_tests or cfg.generation_test_interval <= 0:
        return None, None
    try:
        snips = AttributeSnippets(paths.data)
    except DataFileMissing as err:
        log.warning("Consistency (reference_score) will be missing: %s", err)
        return None, None
    return snips, load_tfidf_vectorizer(paths.data, fit_texts=snips.texts())


@dataclass
class DownstreamPass:
    """``--downstream_eval_steps``: the tasks on the unedited model and after every N-th batch, once each."""

    cfg: RunConfig
    paths: RunPaths
    model: Any
    tok: Any
    folder: RunFolder
    phase: str = "downstream_seconds"

    def run(self, editor) -> None:
        steps = self.cfg.downstream_eval_steps
        if not steps or editor.num_batches % steps:
            return
        path = self.folder.downstream_file(editor.total_edits)
        if path.is_file():
            return
        log.info("downstream after %d edits: starting", editor.total_edits)
        result = run_downstream_eval(self.model, self.tok, self.paths.glue, n_per_task=self.cfg.downstream_n_per_task,
                                     seed=self.cfg.seed, protocol=self.cfg.downstream_protocol)
        write_downstream_result(path, result, total_edits=editor.total_edits, batch_index=editor.num_batches)
        log.info("downstream after %d edits: %s", editor.total_edits,
                 ", ".join(f"{t} acc {m['accuracy']:.3f}" for t, m in result.items()))


@dataclass
class CurvePass:
    """``--curve_every``: the cases of this run edited so far, teacher-forced, every N batches."""

    cfg: RunConfig
    scorers: Scorers
    records: list[dict]
    folder: RunFolder
    first_batch: int  # editor batches before this run's first (a run continued from a saved state)
    phase: str = "curve_seconds"

    def run(self, editor) -> None:
        if not self.cfg.curve_every:
            return
        edited = self.records[: (editor.num_batches - self.first_batch) * self.cfg.num_edits]
        maybe_write_curve_point(self.folder, self.cfg.curve_every, editor.num_batches, editor.total_edits,
                                self.cfg.ds_name, edited, self.scorers(False).curve_metrics,
                                weights_digest=lambda: weights_digest(editor.weights.values()))

    def posts_of_these_weights(self, editor) -> Callable[[dict], dict | None] | None:
        """The teacher-forced metrics of the point after the last batch, where it was scored on exactly
        these weights (same digest: finish() changed nothing); else None."""
        if not self.cfg.curve_every:
            return None
        point = read_curve_point(self.folder, editor.total_edits)
        if point is None or point.get("weights_digest") != weights_digest(editor.weights.values()):
            return None
        return lambda record: point["cases"].get(str(record["case_id"]))


@dataclass
class CaseScoring:
    """One JSON per case. ``batch_size`` None: the pre-edit scores (RunFolder.pre_edit_file);
    else the run's results (RunFolder.case_file, with the pre-edit scores if any)."""

    cfg: RunConfig
    scorer: CaseScorer
    records: list[dict]
    folder: RunFolder
    desc: str
    batch_size: int | None = None
    first_batch: int = 0
    timer: Timer = no_timer
    known: Callable[[dict], dict | None] | None = None  # teacher-forced metrics already computed
    phase: str = "pre_edit_seconds"

    def path_of(self, record: dict) -> Path:
        if self.batch_size is None:
            return self.folder.pre_edit_file(record["case_id"])
        return self.folder.case_file(self.batch_size, record["case_id"])

    def run(self, editor=None) -> None:
        todo = [(i, r) for i, r in enumerate(self.records) if not self.path_of(r).is_file()]
        reports = self.folder.edit_reports() if self.batch_size else []
        seconds = {r["batch_index"]: r["seconds"] for r in reports}
        with tqdm(total=len(self.records), initial=len(self.records) - len(todo), desc=self.desc, unit="case") as bar:
            for i, record, metrics in self.scorer.score(todo, timer=self.timer, known=self.known):
                bar.update()
                result = metrics if self.batch_size is None else self._result(i, record, metrics, seconds)
                write_json_atomic(self.path_of(record), result)

    def _result(self, index: int, record: dict, metrics: dict, seconds: dict[int, float]) -> dict:
        """A case file: the metrics, its batch's case ids and edit seconds, the pre-edit scores if any."""
        size = self.batch_size
        group = index // size * size
        result = {"case_id": record["case_id"],
                  "grouped_case_ids": [r["case_id"] for r in self.records[group : group + size]],
                  "num_edits": size, "requested_rewrite": record["requested_rewrite"],
                  "time": seconds.get(self.first_batch + index // size), "post": metrics}  # its batch's
        pre = self.folder.pre_edit_file(record["case_id"])
        if pre.is_file():
            result["pre"] = read_json(pre)
        return result
