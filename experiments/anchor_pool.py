"""The requests norm anchoring measures its anchor on: read here, by the experiment, and given to the
editor (``anchor_pool=``), because a method does not read datasets (tests/test_import_layers.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dsets import CounterFactDataset
from util.globals import REPO_ROOT
from util.requests import normalize_request


def read_anchor_pool(file: str) -> list[dict]:
    """The rewrite requests of a CounterFact file (a relative path: from the current folder, else
    from the repository, as the shipped hparams name it)."""
    path = Path(file).expanduser()
    path = path if path.exists() else REPO_ROOT / path
    return [normalize_request({"case_id": r["case_id"], **r["requested_rewrite"]}) for r in CounterFactDataset(path)]


def editor_inputs(hparams: Any) -> dict[str, Any]:
    """What an editor is given beside its hparams and the run's settings: the pool of
    ``norm_anchor_pool`` where the hparams anchor (``norm_anchor``), else nothing."""
    if not getattr(hparams, "norm_anchor", False):
        return {}
    return {"anchor_pool": read_anchor_pool(hparams.norm_anchor_pool)}
