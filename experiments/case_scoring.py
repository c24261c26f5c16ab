"""Scoring a run's cases: the teacher-forced metrics of many cases per forward pass, then the
generation metrics of the cases that have them.

The final scoring, the pre-edit scoring and the curve points all score through
:class:`CaseScorer`, so the three compute the same numbers for the same model. Teacher-forced
metrics of ``chunk`` cases are computed together (their prompts fill the same padded batches; the
scores are each prompt's own up to float round-off, tests/test_metrics.py); generation runs per
case with the case's own seed, as before.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from experiments.metrics.counterfact import generation_metrics, probability_metrics_many
from experiments.metrics.fluency import MetricOptions
from experiments.metrics.zsre import compute_rewrite_quality_zsre_many

CHUNK_CASES = 32  # cases whose teacher-forced prompts are scored together (~800 sequences)
Timer = Callable[[str], contextlib.AbstractContextManager]


def _no_timer(_name: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


@dataclass
class CaseScorer:
    """Scores CounterFact or zsRE records on ``model`` as it is now."""

    model: Any
    tok: Any
    ds_name: str
    generation_every: int = 0          # generation metrics on every N-th case (0: none)
    seed: int = 0
    options: MetricOptions = MetricOptions()
    extras: tuple[Any, Any] = (None, None)  # attribute snippets, TF-IDF vectorizer (Consistency)
    chunk: int = CHUNK_CASES

    def teacher_forced(self, records: Sequence[dict]) -> list[dict[str, Any]]:
        if self.ds_name == "zsre":
            return compute_rewrite_quality_zsre_many(self.model, self.tok, records)
        return probability_metrics_many(self.model, self.tok, records)

    def has_generation(self, index: int, record: dict) -> bool:
        """Whether the case at ``index`` (its position in the run's records) gets generation metrics."""
        return (self.ds_name != "zsre" and self.generation_every > 0 and index % self.generation_every == 0
                and bool(record.get("generation_prompts")))

    def generation(self, record: dict) -> dict[str, Any]:
        snips, vec = self.extras
        return generation_metrics(self.model, self.tok, record, snips, vec, seed=self.seed + int(record["case_id"]),
                                  options=self.options)

    def score(self, indexed: Sequence[tuple[int, dict]], timer: Timer = _no_timer,
              known: Callable[[dict], dict | None] | None = None) -> Iterator[tuple[int, dict, dict]]:
        """``(index, record, post)`` for every ``(index, record)``, ``chunk`` cases at a time.

        ``known(record)``: teacher-forced metrics already computed on this same model (a curve
        point of the same weights), used instead of scoring again; None where there are none.
        """
        for begin in range(0, len(indexed), self.chunk):
            part = indexed[begin : begin + self.chunk]
            posts = [dict(known(r) or {}) if known else {} for _, r in part]
            todo = [j for j, post in enumerate(posts) if not post]
            if todo:
                with timer("teacher_forced_seconds"):
                    for j, post in zip(todo, self.teacher_forced([part[j][1] for j in todo])):
                        posts[j] = post
            for (index, record), post in zip(part, posts):
                if self.has_generation(index, record):
                    with timer("generation_seconds"):
                        post.update(self.generation(record))
                yield index, record, post
