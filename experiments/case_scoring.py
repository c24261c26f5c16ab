"""Scoring a run's cases: the teacher-forced metrics of many cases per forward pass, then the
generation metrics of the cases that have them, several cases per batch.

The final scoring, the pre-edit scoring and the curve points all score through
:class:`CaseScorer`, so the three compute the same numbers for the same model. Teacher-forced
metrics of ``chunk`` cases are computed together (their prompts fill the same padded batches; the
scores are each prompt's own up to float round-off, tests/test_metrics.py); generation samples
``generation_chunk`` cases together, each from its own seed as if alone (util.generation.SampleGroup).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from experiments.ds_kinds import kind_of
from experiments.metrics.fluency import MetricOptions
from experiments.metrics.generation_eval import generation_eval_many

GEN_EVAL_KEY = "rewrite_gen_em"  # a post holding it has the generation-based scores

CHUNK_CASES = 32  # cases whose teacher-forced prompts are scored together (~800 sequences)
GENERATION_CASES = 8  # cases whose generation prompts are sampled together (80 CounterFact rows)
Timer = Callable[[str], contextlib.AbstractContextManager]


def no_timer(_name: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


@dataclass
class CaseScorer:
    """Scores records of ``ds_name`` on ``model`` as it is now, as its dataset kind scores them."""

    model: Any
    tok: Any
    ds_name: str
    generation_every: int = 0          # generation metrics on every N-th case (0: none)
    seed: int = 0
    options: MetricOptions = MetricOptions()
    extras: tuple[Any, Any] = (None, None)  # attribute snippets, TF-IDF vectorizer (Consistency)
    chunk: int = CHUNK_CASES
    generation_chunk: int = GENERATION_CASES
    generation_eval: bool = False           # --generation_eval: greedy answers scored beside teacher forcing

    def teacher_forced(self, records: Sequence[dict]) -> list[dict[str, Any]]:
        return kind_of(self.ds_name).teacher_forced(self.model, self.tok, records)

    def curve_metrics(self, records: Sequence[dict]) -> list[dict[str, Any]]:
        """What a curve point holds per case: the teacher-forced metrics, and with ``generation_eval``
        the generation-based ones (no Fluency: no sampling on curves)."""
        posts = self.teacher_forced(records)
        if self.generation_eval:
            for post, scores in zip(posts, self.answers(records)):
                post.update(scores)
        return posts

    def answers(self, records: Sequence[dict]) -> list[dict[str, Any]]:
        """Generation-based scores of ``records`` (experiments.metrics.generation_eval)."""
        items = kind_of(self.ds_name).generation_eval_items
        if items is None:
            raise ValueError(f"--generation_eval: dataset {self.ds_name!r} has no generation-based evaluation")
        return generation_eval_many(self.model, self.tok, [items(r) for r in records])

    def has_generation(self, index: int, record: dict) -> bool:
        """Whether the case at ``index`` (its position in the run's records) gets generation metrics."""
        return (kind_of(self.ds_name).generation is not None and self.generation_every > 0 and index % self.generation_every == 0
                and bool(record.get("generation_prompts")))

    def generation(self, records: Sequence[dict]) -> list[dict[str, Any]]:
        snips, vec = self.extras
        seeds = [self.seed + int(r["case_id"]) for r in records]
        score = kind_of(self.ds_name).generation  # has_generation: only a kind with generation tests gets here
        return score(self.model, self.tok, records, snips, vec, seeds, options=self.options)

    def score(self, indexed: Sequence[tuple[int, dict]], timer: Timer = no_timer,
              known: Callable[[dict], dict | None] | None = None) -> Iterator[tuple[int, dict, dict]]:
        """``(index, record, post)`` for every ``(index, record)``: teacher-forced ``chunk`` cases at a
        time, generation ``generation_chunk`` cases at a time (a case with generation comes once both
        are done; the order of the cases may change).

        ``known(record)``: teacher-forced metrics already computed on this same model (a curve
        point of the same weights), used instead of scoring again; None where there are none.
        """
        waiting: list[tuple[int, dict, dict]] = []  # teacher-forced done, generation to do
        for begin in range(0, len(indexed), self.chunk):
            part = indexed[begin : begin + self.chunk]
            posts = [dict(known(r) or {}) if known else {} for _, r in part]
            todo = [j for j, post in enumerate(posts) if not post]
            if todo:
                with timer("teacher_forced_seconds"):
                    for j, post in zip(todo, self.teacher_forced([part[j][1] for j in todo])):
                        posts[j] = post
            missing = [j for j, post in enumerate(posts) if self.generation_eval and GEN_EVAL_KEY not in post]
            if missing:  # a curve point of these weights may have them already
                with timer("generation_eval_seconds"):
                    for j, scores in zip(missing, self.answers([part[j][1] for j in missing])):
                        posts[j].update(scores)
            for (index, record), post in zip(part, posts):
                if self.has_generation(index, record):
                    waiting.append((index, record, post))
                else:
                    yield index, record, post
            while len(waiting) >= self.generation_chunk or (waiting and begin + self.chunk >= len(indexed)):
                batch, waiting = waiting[: self.generation_chunk], waiting[self.generation_chunk :]
                with timer("generation_seconds"):
                    generated = self.generation([record for _, record, _ in batch])
                for (index, record, post), extra in zip(batch, generated):
                    post.update(extra)
                    yield index, record, post
