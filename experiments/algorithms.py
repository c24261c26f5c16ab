"""Editing methods the harness can run, keyed by ``--alg_name``.

A method provides its hyperparameter class and a factory for a stateful editor with
``edit(requests) -> report`` (``report.log_line()``), ``save(path)``, ``load(path)``,
``num_batches`` and ``context_templates``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from nse import NSEEditor, NSEHyperParams


@dataclass(frozen=True)
class Algorithm:
    hparams_class: type
    make_editor: Callable  # (model, tok, hparams, **options) -> editor


ALGORITHMS: dict[str, Algorithm] = {
    "NSE": Algorithm(NSEHyperParams, NSEEditor),
}


def get_algorithm(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise ValueError(f"unknown --alg_name={name!r}; available: {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name]
