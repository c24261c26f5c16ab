"""The contract every editing method fulfils; the experiment runner uses nothing else.

A method subclasses :class:`Editor` and provides:

- ``hparams`` resolved for the model (``hparams.resolved_for(model)``) — done here;
- :meth:`_edited_weights`: the tensors it changes (views into the model), keyed by a stable name;
- :meth:`_edit`: apply one batch of validated requests, filling the report;
- optionally :meth:`_prepare` (statistics, context templates), :meth:`_check_requests`,
  :meth:`_extra_state` / :meth:`_load_extra_state` (state beyond weights and counters) and
  :meth:`finish` (work after the last batch).

The base keeps the original and current edited weights, counters and context templates, and saves
and loads them atomically, so every method resumes the same way.
"""
from __future__ import annotations

import logging
import os
import pickle
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Hashable, Iterator, Sequence

import torch
from torch import nn

from util.atomic_files import save_torch_atomic
from util.phase_timer import PhaseTimer
from util.requests import normalize_request
from util.total_edits import TOTAL_EDITS, total_edits_of
from util.value_cache import ValueCache

log = logging.getLogger(__name__)
STATE_VERSION = 3  # 3: originals in their own file, lambda C0 + Cp as one matrix


class EditorStateError(ValueError):
    """An editor state file that cannot be read or does not fit this editor; the message names it."""


def read_state(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """The state dict saved in ``path``; a damaged or truncated file is an :class:`EditorStateError`."""
    state = _load_saved(path, "editor state", mmap)
    if not isinstance(state, dict) or total_edits_of(state) is None:
        raise EditorStateError(f"{path} is not an editor state (no '{TOTAL_EDITS}'); is it the right file?")
    return state


def _load_saved(path: str | Path, what: str, mmap: bool = False) -> Any:
    """``torch.load`` (tensors and plain data only) whose failures name the file. Saves are atomic,
    so a damaged file was damaged after it was written (a copy cut short, a bad disk); a file that
    is not a torch archive, or holds other objects, is not one this harness wrote."""
    try:
        return torch.load(path, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise EditorStateError(f"{what} {path} does not exist") from None
    except pickle.UnpicklingError:
        # torch's message advises weights_only=False, i.e. running whatever code the file holds: never.
        raise EditorStateError(f"{path} is not a file this harness wrote as {what} (it holds objects other than "
                               "tensors and plain data, or is not a torch file at all); pass the right file") from None
    # torch's zip reader reports a cut file as RuntimeError; an older pickle format as EOF
    except (RuntimeError, EOFError, OSError) as err:
        if Path(path).stat().st_size and not _is_torch_archive(path):  # an emptied file is damaged, not foreign
            raise EditorStateError(f"{path} is not a file this harness wrote as {what} (not a torch archive); "
                                   "pass the right file") from None
        raise EditorStateError(f"{what} {path} is damaged or truncated ({type(err).__name__}: "
                               f"{str(err).splitlines()[0][:200] if str(err) else ''}); restore it from a copy, "
                               "or start afresh without it (a new run, or --load_editor_state=none)") from None


def _is_torch_archive(path: str | Path) -> bool:
    """torch.save writes zip archives: they start with the local-file-header magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


@dataclass
class EditReport:
    """What one call of :meth:`Editor.edit` did; methods extend it with their own diagnostics."""

    batch_index: int
    n_requests: int
    total_edits: int
    seconds: float = 0.0
    # Wall seconds per phase ("values", "key reads", "solves", ...), accelerators synchronised.
    phase_seconds: dict[str, float] = field(default_factory=dict)

    def log_line(self) -> str:
        return f"batch {self.batch_index}: {self.n_requests} edits ({self.total_edits} total) in {self.seconds:.1f}s"


class Editor(ABC):
    """Applies one method's edits batch after batch to ``model`` in place."""

    hparams_class: ClassVar[type]  # the method's hyperparameter dataclass (from_json); every method sets it
    report_class: ClassVar[type[EditReport]] = EditReport
    has_values: ClassVar[bool] = False  # whether --use_cache means anything for this method

    def __init__(
        self,
        model: nn.Module,
        tok,
        hparams,
        *,
        stats_dir: str | Path | None = None,
        context_templates: list[list[str]] | None = None,
        seed: int = 0,
        batch_size: int = 64,
        values_batch_size: int | None = None,
        value_cache: ValueCache | None = None,
        originals_on_cpu: bool = False,
        progress: bool = True,
    ) -> None:
        self.model, self.tok = model, tok
        self.hparams = hparams.resolved_for(model)
        self.stats_dir, self.seed, self.progress = stats_dir, seed, progress
        self.batch_size, self.values_batch_size = batch_size, values_batch_size
        self.context_templates = context_templates
        self.value_cache = value_cache
        self.weights = self._edited_weights()
        _refuse_offloaded(model, self.weights)
        # --conserve_memory keeps the copy of the original weights in host memory.
        keep_on = torch.device("cpu") if originals_on_cpu else None
        self.original = {k: w.detach().to(keep_on, copy=True) for k, w in self.weights.items()}
        self.num_batches = 0
        self.total_edits = 0  # edits applied so far (num_edits elsewhere is edits per batch)
        self.finished = False
        self.last_report: EditReport | None = None
        self.timer = PhaseTimer.for_model(model)  # a fresh one per batch; methods time their phases with it
        self._originals_saved_to: Path | None = None

    # -- what a method provides ------------------------------------------------------------
    @abstractmethod
    def _edited_weights(self) -> dict[Hashable, torch.Tensor]:
        """The tensors this method changes, as views writing into the model."""

    @abstractmethod
    def _edit(self, requests: list[dict], report: EditReport) -> None:
        """Apply one batch (requests already validated and normalised)."""

    @classmethod
    def make_context_templates(cls, model: nn.Module, tok, hparams, seed: int) -> list[list[str]] | None:
        """The context templates this method averages over, from the unedited model (None: none)."""
        return None

    def _prepare(self) -> None:
        """Work that describes the unedited model (runs inside :meth:`rewound`)."""

    def _is_prepared(self) -> bool:
        """Whether :meth:`_prepare`'s work is done (edit() prepares first otherwise)."""
        return True

    def _check_requests(self, requests: list[dict]) -> None:
        """Raise a clear error for a request this method cannot edit, before any weight changes."""

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def finish(self) -> None:
        """Called once after the last batch (e.g. PRUNE's restraint at the original's timing)."""
        self.finished = True

    # -- the runner's interface -------------------------------------------------------------
    @contextmanager
    def rewound(self) -> Iterator[None]:
        """The edited tensors hold their original values inside the block, the edits afterwards."""
        edited = {k: w.detach().clone() for k, w in self.weights.items()}
        try:
            with torch.no_grad():
                for k, w in self.weights.items():
                    w.copy_(self.original[k])
            yield
        finally:
            with torch.no_grad():
                for k, w in self.weights.items():
                    w.copy_(edited[k])

    def prepare(self) -> None:
        """Statistics and context templates now (otherwise the first edit does it), so a missing
        corpus fails before hours of other work. They describe the unedited model."""
        with self.rewound():
            self._prepare()

    def edit(self, requests: Sequence[dict]) -> EditReport:
        """Apply one batch of edit requests to the model in place."""
        start = time.time()
        # Targets get their leading space before anything is computed from them.
        requests = [normalize_request(r) for r in requests]
        if not requests:
            raise ValueError("edit() needs at least one request")
        self._check_requests(requests)
        if self.finished:
            raise RuntimeError("this editor has finished (finish() was called); start a new one to edit more")
        report = self.report_class(self.num_batches, len(requests), self.total_edits + len(requests))
        self.timer = PhaseTimer.for_model(self.model)
        if not self._is_prepared():
            with self.timer("preparation"):
                self.prepare()
        self._edit(requests, report)
        report.phase_seconds = self.timer.as_dict()
        self.num_batches += 1
        self.total_edits += len(requests)
        report.seconds = time.time() - start
        self.last_report = report
        logging.getLogger(type(self).__module__).info(report.log_line())
        return report

    # -- persistence ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "method": type(self).__name__,
            "hparams": self.hparams.to_dict(),
            "context_templates": self.context_templates,
            "num_batches": self.num_batches,
            TOTAL_EDITS: self.total_edits,
            "finished": self.finished,
            # copies: on CPU .cpu() would alias the live tensors, which later edits change in place
            "original": {k: w.detach().to("cpu", copy=True) for k, w in self.original.items()},
            "current": {k: w.detach().to("cpu", copy=True) for k, w in self.weights.items()},
            **self._extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore counters, templates, original and edited weights (into the model) and extras."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"editor state version {state.get('version')} is not {STATE_VERSION}; "
                             "it was saved by another version of this code")
        if state.get("method") != type(self).__name__:
            raise ValueError(f"the state was saved by {state.get('method')}, not {type(self).__name__}")
        saved_keys, keys = sorted(state["current"], key=str), sorted(self.weights, key=str)
        if saved_keys != keys:
            raise ValueError(f"saved state edits {saved_keys}, these hparams edit {keys}")
        with torch.no_grad():
            for k, w in self.weights.items():
                saved = state["current"][k]
                if tuple(saved.shape) != tuple(w.shape) or saved.dtype != w.dtype:
                    raise ValueError(f"saved weights {k} are {tuple(saved.shape)} {saved.dtype}, the model's are "
                                     f"{tuple(w.shape)} {w.dtype}: resume with the same model and --dtype")
                w.copy_(saved)
                self.original[k] = state["original"][k].to(device=self.original[k].device, dtype=w.dtype)
        self.context_templates = state["context_templates"]
        self.num_batches = state["num_batches"]
        self.total_edits = int(total_edits_of(state))  # states saved before the rename hold "num_edits"
        self.finished = state.get("finished", False)
        self._load_extra_state(state)

    def save(self, path: str | Path) -> None:
        """Atomic: a crash while saving leaves the previous file intact.

        The original weights go to :func:`originals_path` beside it, written once per file name
        rather than every batch (on an 8B model they are hundreds of MB that never change).
        """
        path = Path(path)
        state = self.state_dict()
        originals, target = state.pop("original"), originals_path(path)
        if self._originals_saved_to != target or not target.is_file():
            save_torch_atomic(originals, target)
            self._originals_saved_to = target
        save_torch_atomic(state, path)

    def load(self, path: str | Path) -> None:
        path = Path(path)
        state = read_state(path)
        if state.get("version") == STATE_VERSION:  # older versions fail in load_state_dict, saying why
            originals = originals_path(path)
            if not originals.is_file():
                raise EditorStateError(f"{path} needs the original weights in {originals} (written once per run "
                                       "beside it), which is missing; copy or move both files together")
            state["original"] = _load_saved(originals, "original weights")
            self._originals_saved_to = originals
        try:
            self.load_state_dict(state)
        except (ValueError, KeyError) as err:  # another method, model, dtype or code version
            raise EditorStateError(f"editor state {path} does not fit this run: {err}") from None


def _refuse_offloaded(model: nn.Module, weights: dict[Hashable, torch.Tensor]) -> None:
    """A device map that offloads a module leaves its weight on 'meta' (the real one is loaded per
    forward); an edit there would write nowhere."""
    names = {id(p): n for n, p in model.named_parameters()}
    offloaded = [names.get(id(w if w._base is None else w._base), str(k)) for k, w in weights.items()
                 if w.device.type == "meta"]
    if offloaded:
        raise ValueError(f"edited weights {offloaded} are offloaded by the device map (on 'meta'); give their "
                         "layers a GPU or 'cpu' in the device map, or use fewer/larger devices (--device_map)")


def originals_path(state_path: str | Path) -> Path:
    """Where :meth:`Editor.save` keeps the original weights of the state file ``state_path``."""
    state_path = Path(state_path)
    return state_path.with_name(f"{state_path.stem}.original{state_path.suffix}")


def move_state(src: str | Path, dst: str | Path) -> None:
    """Move a saved editor state and its original weights (originals first: a state file is never
    without them)."""
    os.replace(originals_path(src), originals_path(dst))
    os.replace(src, dst)
