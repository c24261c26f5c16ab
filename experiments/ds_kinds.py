"""Dataset kinds as data: what the harness knows about each kind of edit dataset, in one entry.

A kind says how its records load (per ``--ds_name``), how a case is scored teacher-forced and by
its generation tests (if it has them), how a case's scores reduce to per-case numbers, which of
those form the paper's table and the curve panels, and how the table reads. Nothing else branches on dataset
names: a new kind (multi-hop, long-form...) is a loader in ``dsets/``, its metrics in
``experiments/metrics/`` (with its :class:`~experiments.metrics.case_kinds.CaseKind` in that
package's ``CASE_KINDS``, so summaries find it by name below this module) and one :class:`DsKind`
in :data:`KINDS`.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsets.counterfact import CounterFactDataset
from dsets.records import RecordList
from dsets.zsre import ZsreDataset
from experiments.metrics.case_kinds import COUNTERFACT_CASES, ZSRE_CASES, CaseKind
from experiments.metrics.counterfact import generation_metrics_many, probability_metrics_many
from experiments.metrics.per_case import PostList, Row
from experiments.metrics.zsre import compute_rewrite_quality_zsre_many
from util.requests import fill_prompt

GENERATION_EVAL_COLUMNS = {"rewrite_gen_em": "Efficacy EM", "paraphrase_gen_em": "Generalization EM",
                           "neighborhood_gen_em": "Specificity EM", "rewrite_gen_f1": "Efficacy F1",
                           "paraphrase_gen_f1": "Generalization F1", "neighborhood_gen_f1": "Specificity F1"}
Loader = Callable[[str | Path, Any, int | None], RecordList]  # (data dir or file, tokenizer, size)
Scorer = Callable[[Any, Any, Sequence[dict]], list[dict[str, Any]]]  # (model, tok, records) -> posts
# (model, tok, records, attribute snippets, TF-IDF vectorizer, seeds, options=MetricOptions) -> each case's
# generation scores (Fluency, Consistency), its texts sampled from its own seed
GenerationScorer = Callable[..., list[dict[str, Any]]]


@dataclass(frozen=True)
class DsKind:
    cases: CaseKind                        # its name, post lists, per-case rows and Score (the metrics' part)
    title: str                             # tables and figures
    loaders: Mapping[str, Loader]          # --ds_name -> its records
    teacher_forced: Scorer                 # a case's metrics on the model as it is
    columns: Mapping[str, str]             # the paper's table: per-case metric key -> column name
    curve_metrics: tuple[tuple[str, str], ...]  # curve panels (teacher-forced metrics only)
    scale: str                             # how the table's numbers read
    generation: GenerationScorer | None = None  # generation tests on some cases (None: the kind has none)
    one_edit_per_batch: Mapping[str, str] | None = None  # --ds_name -> why batches are refused
    # --generation_eval: a record's (prompt, expected answer) pairs per group, and their table columns
    generation_eval_items: Callable[[dict[str, Any]], dict[str, list[tuple[str, str]]]] | None = None
    generation_eval_columns: Mapping[str, str] = dataclasses.field(default_factory=lambda: GENERATION_EVAL_COLUMNS)

    # The metrics' part read as the kind's own (a DsKind serves wherever a CaseKind is asked for).
    @property
    def name(self) -> str:  # written in curve files and summaries
        return self.cases.name

    @property
    def post_lists(self) -> tuple[PostList, ...]:
        return self.cases.post_lists

    @property
    def per_case(self) -> Callable[[dict[str, Any]], Row]:
        return self.cases.per_case

    @property
    def score_of(self) -> tuple[str, ...]:
        return self.cases.score_of

    def rule_for_batches(self, ds_name: str, num_edits: int) -> str | None:
        """Why ``num_edits`` edits per batch cannot be read from ``ds_name``; None when they can."""
        why = (self.one_edit_per_batch or {}).get(ds_name)
        return why if why and num_edits > 1 else None


def _counterfact(data_dir: str | Path, tok: Any, size: int | None) -> RecordList:
    return CounterFactDataset(data_dir, multi=False, size=size)


def _multi_counterfact(data_dir: str | Path, tok: Any, size: int | None) -> RecordList:
    return CounterFactDataset(data_dir, multi=True, size=size)


def _zsre(data_dir: str | Path, tok: Any, size: int | None) -> RecordList:
    if tok is None:
        raise ValueError("the zsre dataset needs the model's tokenizer (its neighborhood prompts are per token)")
    return ZsreDataset(data_dir, tok, size=size)


def _counterfact_answers(record: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    """Rewrite and paraphrase prompts expect the new object; neighbourhood prompts the true one."""
    rewrite = record["requested_rewrite"]
    new, true = rewrite["target_new"]["str"], rewrite["target_true"]["str"]
    return {"rewrite": [(fill_prompt(rewrite["prompt"], rewrite["subject"]), new)],
            "paraphrase": [(p, new) for p in record["paraphrase_prompts"]],
            "neighborhood": [(p, true) for p in record["neighborhood_prompts"]]}


def _zsre_answers(record: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    """The question and its rephrase expect the new answer; the NQ question its own answer (the
    loader stored it a token per prompt: the last prompt and token complete it)."""
    rewrite, nq = record["requested_rewrite"], record["neighborhood_prompts"]
    new = rewrite["target_new"]["str"]
    question = nq[0]["prompt"]
    answer = nq[-1]["prompt"][len(question):] + nq[-1]["target"]
    return {"rewrite": [(fill_prompt(rewrite["prompt"], rewrite["subject"]), new)],
            "paraphrase": [(p, new) for p in record["paraphrase_prompts"]],
            "neighborhood": [(question, answer)]}


COUNTERFACT = DsKind(
    cases=COUNTERFACT_CASES, title="CounterFact",
    loaders={"cf": _counterfact, "mcf": _multi_counterfact},
    teacher_forced=probability_metrics_many,
    columns={"rewrite_success": "Efficacy", "paraphrase_success": "Generalization",
             "neighborhood_success": "Specificity", "ngram_entropy": "Fluency", "reference_score": "Consistency",
             "score": "Score"},
    curve_metrics=(("rewrite_success", "Efficacy"), ("paraphrase_success", "Generalization"),
                   ("neighborhood_success", "Specificity"), ("score", "Score")),
    scale="×100; Score = harmonic mean of Efficacy, Generalization, Specificity",
    generation=generation_metrics_many,
    one_edit_per_batch={"cf": "CounterFact repeats subjects across records; use --ds_name=mcf "
                              "(MultiCounterFact, no subject twice) for batches of edits"},
    generation_eval_items=_counterfact_answers,
)
ZSRE = DsKind(
    cases=ZSRE_CASES, title="zsRE", loaders={"zsre": _zsre},
    teacher_forced=compute_rewrite_quality_zsre_many,
    columns={"rewrite_acc": "Efficacy", "paraphrase_acc": "Generalization", "neighborhood_acc": "Specificity"},
    curve_metrics=(("rewrite_acc", "Efficacy"), ("paraphrase_acc", "Generalization"),
                   ("neighborhood_acc", "Specificity")),
    scale="×100, token-level top-1 accuracy",
    generation_eval_items=_zsre_answers,
)
KINDS: tuple[DsKind, ...] = (COUNTERFACT, ZSRE)


# Callers ask these functions rather than holding KINDS, so a kind added to it is seen everywhere.
def all_kinds() -> tuple[DsKind, ...]:
    return KINDS


def ds_names() -> tuple[str, ...]:
    """Every --ds_name value, in the order of KINDS."""
    return tuple(name for kind in KINDS for name in kind.loaders)


def kind_named(name: str) -> DsKind:
    """The kind called ``name`` (as curve files and summaries write it)."""
    for kind in KINDS:
        if kind.name == name:
            return kind
    raise ValueError(f"unknown dataset kind {name!r}; known: {', '.join(k.name for k in KINDS)}")


def kind_of(ds_name: str) -> DsKind:
    """The kind ``--ds_name`` reads."""
    for kind in KINDS:
        if ds_name in kind.loaders:
            return kind
    raise ValueError(f"unknown dataset {ds_name!r}; choose one of {', '.join(ds_names())}")


def kind_of_post(post: Any) -> DsKind | None:
    """The kind whose required per-prompt list ``post`` holds (run folders without a usable config)."""
    for kind in KINDS:
        if isinstance(post, dict) and f"rewrite{kind.post_lists[0].suffix}" in post:
            return kind
    return None


def load_edit_dataset(ds_name: str, data_dir: str | Path, tok: Any = None, size: int | None = None) -> RecordList:
    """Records of ``ds_name`` in the common schema (zsRE needs the tokenizer)."""
    return kind_of(ds_name).loaders[ds_name](data_dir, tok, size)
