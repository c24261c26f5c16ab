"""Turn per-case ``post`` dicts into the paper's table numbers (mean ± std over cases).

Every per-case quantity is first reduced to one number per case by the dataset kind
(:mod:`experiments.metrics.per_case`, :mod:`experiments.metrics.case_kinds`), then averaged over cases. Rates and
similarities are ×100; ``essence_score`` is a perplexity and is not scaled. ``score`` is the
harmonic mean of the three averaged rates, so it has no per-case spread (its std is NaN).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from experiments.metrics.case_kinds import CaseKind, case_kind_named
from experiments.metrics.per_case import Post, Row, json_type, post_problem_of

__all__ = ["METRIC_DESCRIPTIONS", "UNSCALED", "harmonic_mean", "json_type", "post_problem", "summarize_cases"]

METRIC_DESCRIPTIONS: dict[str, str] = {
    "rewrite_success": "Efficacy (ES): % of rewrite prompts where P(target_new) > P(target_true).",
    "paraphrase_success": "Generalization (PS): % of paraphrase prompts where P(target_new) > P(target_true).",
    "neighborhood_success": "Specificity (NS): % of neighborhood prompts where P(target_true) > P(target_new).",
    "rewrite_diff": "Efficacy magnitude (EM): mean P(target_new) - P(target_true) on rewrite prompts, ×100.",
    "paraphrase_diff": "Generalization magnitude (PM): mean P(target_new) - P(target_true) on paraphrases, ×100.",
    "neighborhood_diff": "Specificity magnitude (NM): mean P(target_true) - P(target_new) on neighborhood "
                         "prompts, ×100.",
    "rewrite_acc": "Rewrite accuracy: % of rewrite prompts whose greedy continuation is exactly target_new "
                   "(zsRE: % of target tokens that are the top-1 prediction under teacher forcing = Efficacy).",
    "paraphrase_acc": "Paraphrase accuracy: as rewrite_acc on paraphrase prompts (zsRE: Generalization).",
    "neighborhood_acc": "Neighborhood accuracy: % of neighborhood prompts whose greedy continuation is exactly "
                        "target_true (zsRE: % of the unrelated answer's tokens still top-1 = Specificity).",
    "score": "Score: harmonic mean of Efficacy, Generalization and Specificity (rewrite/paraphrase/"
             "neighborhood_success); std is NaN (computed from the means, not per case).",
    "ngram_entropy": "Fluency (GE): weighted bigram/trigram entropy of the generated texts, ×100 "
                     "(≈600 healthy, <500 collapsed); over the cases with generation metrics.",
    "reference_score": "Consistency (RS): TF-IDF cosine between the generations and the reference snippets "
                       "of target_new, ×100; over the cases with generation metrics.",
    **{f"{group}_gen_{k}": f"{name} by generation (--generation_eval): {what} of the greedy answer to the {group} "
                          f"prompts (up to a period or newline) against the {'true' if group == 'neighborhood' else 'new'}"
                          " target after SQuAD normalisation, ×100"
       for group, name in (("rewrite", "Efficacy"), ("paraphrase", "Generalization"), ("neighborhood", "Specificity"))
       for k, what in (("em", "exact-match rate"), ("f1", "mean token F1"))},
    "essence_score": "Essence: perplexity of the model on snippets about the subject (not scaled; lower = "
                     "the subject's other knowledge is better preserved).",
}

UNSCALED = frozenset({"essence_score"})


def _kind(ds_kind: str | CaseKind) -> CaseKind:
    """A kind given by name, or the kind itself (a DsKind reads as its CaseKind: same fields)."""
    return case_kind_named(ds_kind) if isinstance(ds_kind, str) else ds_kind


def post_problem(post: Any, ds_kind: str | CaseKind) -> str | None:
    """What keeps ``post`` (one case's metrics) from :func:`summarize_cases` as a ``ds_kind`` case,
    in words ("it lacks ...", "its 'x' is ..."); None when nothing does. Checked per case, so one
    damaged case file can be left out instead of stopping the summary of all the others."""
    kind = _kind(ds_kind)
    return post_problem_of(post, kind.post_lists, kind.name)


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean; 0 if any value is 0 (one failed criterion sinks the Score)."""
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def _per_case_rows(posts: Sequence[Post], kind: CaseKind) -> list[Row]:
    if not posts:
        raise ValueError("summarize_cases needs at least one case")
    required = f"rewrite{kind.post_lists[0].suffix}"
    for index, post in enumerate(posts):
        if required not in post:
            raise ValueError(f"case #{index} has no {required!r}; is it a {kind.name} case (keys: {sorted(post)[:6]}...)?")
    return [kind.per_case(post) for post in posts]


def summarize_cases(posts: Sequence[Post], ds_kind: str | CaseKind) -> dict[str, tuple[float, float]]:
    """``{metric: (mean, std)}`` over cases, ×100 except ``essence_score``; see METRIC_DESCRIPTIONS.

    A metric appears only if at least one case has it (generation metrics run on some cases).
    """
    kind = _kind(ds_kind)
    rows = _per_case_rows(posts, kind)
    summary: dict[str, tuple[float, float]] = {}
    for key in rows[0]:
        values = np.array([row[key] for row in rows if row[key] is not None], dtype=np.float64)
        if values.size:
            scale = 1.0 if key in UNSCALED else 100.0
            summary[key] = (float(values.mean() * scale), float(values.std() * scale))
    if kind.score_of and all(k in summary for k in kind.score_of):
        summary["score"] = (harmonic_mean([summary[k][0] for k in kind.score_of]), float("nan"))
    return summary
