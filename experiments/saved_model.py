"""``--save_model DIR``: the edited model as a Hugging Face folder, plus the editor state to continue.

DIR holds what ``save_pretrained`` writes (``config.json``, ``model.safetensors``, the tokenizer
files), so ``AutoModelForCausalLM.from_pretrained(DIR)`` loads the edited model, plus
``editor_state.pt`` (the editor's state: original weights of the edited modules, accumulated keys,
counters, context templates) and ``editing.json`` (what was edited, by which run). A later run
with ``--model_name=DIR`` picks the state up and continues editing as if it had never stopped.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from experiments.run_folder import RunFolder, read_json
from util.editor import move_state, read_state
from util.total_edits import TOTAL_EDITS, total_edits_of

STATE_FILE = RunFolder.STATE  # a saved model's editor state has the name it has in a run folder
EDIT_INFO = "editing.json"
NO_STATE = "none"  # --load_editor_state=none: start from DIR's weights as a fresh model


def save_dir_problem(out_dir: str | Path) -> str | None:
    """Why ``--save_model=out_dir`` would be refused (a folder that is not a saved model), or None."""
    path = Path(out_dir).expanduser()
    if path.exists() and not path.is_dir():
        return f"--save_model={out_dir} is a file; name a folder"
    if path.is_dir() and any(path.iterdir()) and not (path / EDIT_INFO).is_file():
        return (f"--save_model={out_dir} is a non-empty folder that holds no saved edited model ({EDIT_INFO}); "
                "name a new folder (a previous --save_model folder is replaced)")
    return None


def save_edited_model(model, tok, editor, out_dir: str | Path, info: dict[str, Any],
                      state_file: Path | None = None) -> Path:
    """Write model + tokenizer (safetensors), ``editor_state.pt`` and ``editing.json`` into ``out_dir``.

    ``state_file``: an editor state saved earlier (the runner's, from before ``finish()``), moved
    in instead of saving the editor's state now. The folder is written beside ``out_dir`` and
    swapped in at the end, so an interrupted save leaves the previous one (if any) intact."""
    out_dir = Path(out_dir).expanduser()
    problem = save_dir_problem(out_dir)
    if problem:
        raise ValueError(problem)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if state_file is not None:
            move_state(state_file, tmp / STATE_FILE)
        else:
            editor.save(tmp / STATE_FILE)
        payload = {**info, "num_batches": editor.num_batches, TOTAL_EDITS: editor.total_edits, "saved": time.ctime()}
        (tmp / EDIT_INFO).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def edit_info(model_dir: str | Path) -> dict[str, Any] | None:
    """``editing.json`` of a folder written by ``--save_model``, or None."""
    path = Path(model_dir).expanduser() / EDIT_INFO
    return read_json(path) if path.is_file() else None


def editor_state_path(model_name: str, load_editor_state: str | None) -> Path | None:
    """The editor state a run starts from: ``--load_editor_state`` (a file, or a folder holding
    ``editor_state.pt``), else ``<model_name>/editor_state.pt`` when the model is such a folder;
    ``--load_editor_state=none`` starts from the model's weights as they are."""
    if load_editor_state is not None:
        if load_editor_state.lower() == NO_STATE:
            return None
        path = Path(load_editor_state).expanduser()
        path = path / STATE_FILE if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"--load_editor_state={load_editor_state}: {path} does not exist")
        return path
    candidate = Path(model_name).expanduser() / STATE_FILE
    return candidate if candidate.is_file() else None


def _saved_by(save_dir: str, run_dir: Path, total_edits: int) -> bool:
    info = edit_info(save_dir)  # one saved before the rename holds "num_edits"
    return bool(info) and info.get("run") == str(run_dir) and total_edits_of(info) == total_edits


def stage_editor_state(save_dir: str, editor, run_dir: Path) -> Path | None:
    """The editor state before finish() (e.g. PRUNE's final restraint), beside the --save_model folder: a
    run continued from it edits on as the unbroken run would, and finishes at its own end."""
    if _saved_by(save_dir, run_dir, editor.total_edits):
        return None
    target = Path(save_dir).expanduser()
    staged = target.with_name(f".{target.name}.{STATE_FILE}")
    if getattr(editor, "finished", False):  # resumed after finish(): a state staged before the kill, if any
        ok = staged.is_file() and total_edits_of(read_state(staged, mmap=True)) == editor.total_edits
        return staged if ok else None
    editor.save(staged)
    return staged


def save_model_of_run(cfg, model, tok, editor, run_dir: Path, staged_state: Path | None = None) -> bool:
    """--save_model: the edited model (safetensors) + tokenizer + editor state, once per run (False: a
    resumed run had saved it already)."""
    if _saved_by(cfg.save_model, run_dir, editor.total_edits):
        return False
    base = (edit_info(cfg.model_name) or {}).get("base_model", cfg.model_name) if Path(cfg.model_name).is_dir() \
        else cfg.model_name
    save_edited_model(model, tok, editor, cfg.save_model, {"alg_name": cfg.alg_name, "base_model": base,
                                                             "model_name": cfg.model_name, "run": str(run_dir),
                                                             "ds_name": cfg.ds_name, "dtype": cfg.dtype},
                      state_file=staged_state if staged_state and staged_state.is_file() else None)
    return True
