"""What the metrics know of each dataset kind's cases: the per-prompt lists a case's ``post`` holds,
how it reduces to one number per metric, and which rates form the Score.

A dataset kind (:mod:`experiments.ds_kinds`) holds one of these beside its loaders and tables, so a
summary can be asked for by the kind's name from here, below the dataset kinds: the metrics never
import the kinds that use them. A new kind whose cases are shaped like no kind here adds its entry
to :data:`CASE_KINDS` and names it in its ``DsKind``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from experiments.metrics.per_case import CORRECT, NLL_PAIRS, Post, PostList, Row, counterfact_row, zsre_row


@dataclass(frozen=True)
class CaseKind:
    name: str                              # the kind's name, as curve files and summaries write it
    post_lists: tuple[PostList, ...]       # the lists a post holds per group; the first is required
    per_case: Callable[[Post], Row]        # a case's post -> one number per metric
    score_of: tuple[str, ...] = ()         # rates whose harmonic mean is "score" (none: no Score)


COUNTERFACT_CASES = CaseKind("counterfact", (NLL_PAIRS, CORRECT), counterfact_row,
                             score_of=("rewrite_success", "paraphrase_success", "neighborhood_success"))
ZSRE_CASES = CaseKind("zsre", (CORRECT,), zsre_row)
CASE_KINDS: tuple[CaseKind, ...] = (COUNTERFACT_CASES, ZSRE_CASES)


def case_kind_named(name: str) -> CaseKind:
    """The case kind called ``name``; read from :data:`CASE_KINDS` at each call, so an entry added
    to it is seen everywhere."""
    for kind in CASE_KINDS:
        if kind.name == name:
            return kind
    raise ValueError(f"unknown dataset kind {name!r}; known: {', '.join(k.name for k in CASE_KINDS)}")
