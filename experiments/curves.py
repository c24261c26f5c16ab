"""Learning curves of a sequential-editing run: the cases edited so far, scored every N batches.

With ``--curve_every N`` the runner calls :func:`maybe_write_curve_point` after each batch. After
every N-th batch (counted like ``--downstream_eval_steps``: batches the editor has applied), the
cases of this run edited so far are scored teacher-forced only (no generation: Efficacy,
Generalization, Specificity and their magnitudes; zsRE accuracies) and written to
``<run>/curves/edits_<NNNNNN>.json``::

    {"total_edits", "batch_index", "n_cases", "ds_kind", "case_ids": [...],
     "summary": {metric: {"mean", "std"}},     # experiments.metrics.summarize_cases, ×100
     "cases": {case_id: post}}                 # the per-case teacher-forced metrics

An existing point is never recomputed, and a missing one (a run killed while scoring it) is
scored when the run resumes, before its next batch. Scoring reads the model only, so the final
results are the same with and without curves. ``summarize.py --plot`` draws these points.
Points written before the rename hold ``num_edits`` for ``total_edits``; the readers accept both.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from experiments.case_scoring import CHUNK_CASES
from experiments.ds_kinds import all_kinds, kind_of
from experiments.metrics.summary import summarize_cases
from experiments.run_folder import RunFolder
from util.atomic_files import write_json_atomic
from util.total_edits import TOTAL_EDITS, total_edits_of, with_total_edits

log = logging.getLogger("experiments")

class CurveFileError(ValueError):
    """A curve file that cannot be read; the message names it."""


def is_curve_point(every: int, batch_index: int) -> bool:
    """After the ``batch_index``-th batch (1-based count of batches applied), with ``--curve_every``."""
    return every > 0 and batch_index > 0 and batch_index % every == 0


def _stat(pair: tuple[float, float]) -> dict[str, float | None]:
    return {k: (float(v) if math.isfinite(v) else None) for k, v in zip(("mean", "std"), pair)}


def weights_digest(tensors) -> str:
    """sha1 of every byte of the edited weights: a curve point's teacher-forced metrics stand for the
    final scoring's only when the weights are exactly these (sparse NSE updates defeat sampling)."""
    h = hashlib.sha1()
    for w in tensors:
        h.update(w.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def maybe_write_curve_point(folder: RunFolder, every: int, batch_index: int, total_edits: int, ds_name: str,
                            edited: Sequence[dict], score_many: Callable[[Sequence[dict]], list[dict[str, Any]]],
                            weights_digest: Callable[[], str] | None = None, chunk: int = CHUNK_CASES) -> Path | None:
    """Score ``edited`` (the records edited so far) with ``score_many(records) -> posts``, ``chunk``
    cases at a time, and write the point, when ``batch_index`` is a curve point and its file does
    not exist yet. ``weights_digest`` (optional) is recorded, so the final scoring can reuse it."""
    if not is_curve_point(every, batch_index) or not edited:
        return None
    path = folder.curve_file(total_edits)
    if path.is_file():
        return None
    ds_kind = kind_of(ds_name).name
    posts = {}
    with tqdm(total=len(edited), desc=f"curve after {total_edits} edits", unit="case", leave=False) as bar:
        for begin in range(0, len(edited), chunk):
            part = edited[begin : begin + chunk]
            for record, post in zip(part, score_many(part)):
                posts[str(record["case_id"])] = post
            bar.update(len(part))
    summary = summarize_cases(list(posts.values()), ds_kind)  # type: ignore[arg-type]
    point = {
        TOTAL_EDITS: int(total_edits), "batch_index": int(batch_index), "n_cases": len(posts), "ds_kind": ds_kind,
        "case_ids": [record["case_id"] for record in edited],
        "summary": {k: _stat(v) for k, v in summary.items()}, "cases": posts,
    }
    if weights_digest is not None:
        point["weights_digest"] = weights_digest()
    write_json_atomic(path, point)
    shown = ", ".join(f"{k} {v[0]:.1f}" for k, v in summary.items() if k.endswith(("_success", "_acc")))
    log.info("curve after %d edits (%d cases): %s", total_edits, len(posts), shown)
    return path


def read_curve_point(folder: RunFolder, total_edits: int) -> dict[str, Any] | None:
    """The run's curve point after ``total_edits`` edits; None when there is none (or it is unreadable:
    it is only ever a shortcut)."""
    try:
        point = json.loads(folder.curve_file(total_edits).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return with_total_edits(point) if isinstance(point, dict) and isinstance(point.get("cases"), dict) else None


def read_curve_file(path: Path) -> dict[str, Any]:
    """One curve file's point; a :class:`CurveFileError` naming the file and what is wrong otherwise."""
    try:
        point = json.loads(path.read_text(encoding="utf-8-sig"))  # a byte-order mark is fine
    except json.JSONDecodeError as exc:
        raise CurveFileError(f"{path} is not valid JSON ({exc.msg})") from None
    except UnicodeDecodeError:
        raise CurveFileError(f"{path} is not UTF-8 text (binary, or another encoding such as latin-1)") from None
    except OSError as exc:
        raise CurveFileError(f"{path} cannot be read ({exc.strerror})") from None
    keys = {"n_cases", "cases", "ds_kind"}
    if not isinstance(point, dict) or not keys <= set(point) or total_edits_of(point) is None:
        raise CurveFileError(f"{path} is not a curve point ({{total_edits, n_cases, ds_kind, cases, ...}})")
    point = with_total_edits(point)  # a point written before the rename holds num_edits
    total_edits = point[TOTAL_EDITS]
    if not isinstance(total_edits, int) or isinstance(total_edits, bool) or total_edits < 0:
        raise CurveFileError(f"{path} is not a curve point: its total_edits is {total_edits!r}, not a whole number")
    if point["ds_kind"] not in {kind.name for kind in all_kinds()} or not isinstance(point["cases"], dict):
        raise CurveFileError(f"{path} is not a curve point: ds_kind must be one of "
                             f"{', '.join(kind.name for kind in all_kinds())} and cases an "
                             "object {case_id: metrics}")
    return point
