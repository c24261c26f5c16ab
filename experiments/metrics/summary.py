"""Turn per-case ``post`` dicts into the paper's table numbers (mean ± std over cases).

Every per-case quantity is first reduced to one number per case (e.g. the fraction of that
case's paraphrase prompts where the new object wins), then averaged over cases. Rates and
similarities are ×100; ``essence_score`` is a perplexity and is not scaled. ``score`` is the
harmonic mean of the three averaged rates, so it has no per-case spread (its std is NaN).
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

DsKind = Literal["counterfact", "zsre"]
Post = dict[str, Any]

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
    "essence_score": "Essence: perplexity of the model on snippets about the subject (not scaled; lower = "
                     "the subject's other knowledge is better preserved).",
}

# Paper column names, in table order, per dataset kind.
PAPER_COLUMNS: dict[str, dict[str, str]] = {
    "counterfact": {
        "rewrite_success": "Efficacy",
        "paraphrase_success": "Generalization",
        "neighborhood_success": "Specificity",
        "ngram_entropy": "Fluency",
        "reference_score": "Consistency",
        "score": "Score",
    },
    "zsre": {"rewrite_acc": "Efficacy", "paraphrase_acc": "Generalization", "neighborhood_acc": "Specificity"},
}

UNSCALED = frozenset({"essence_score"})


def _mean_or_none(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None  # a case with no such prompts says nothing


def _success(probs: Sequence[dict[str, float]], new_wins: bool) -> float | None:
    # Entries are NLLs: P(new) > P(true) exactly when NLL(new) < NLL(true). Ties count for neither.
    if new_wins:
        return _mean_or_none([float(p["target_new"] < p["target_true"]) for p in probs])
    return _mean_or_none([float(p["target_true"] < p["target_new"]) for p in probs])


def _diff(probs: Sequence[dict[str, float]], new_wins: bool) -> float | None:
    sign = 1.0 if new_wins else -1.0
    return _mean_or_none([sign * (math.exp(-p["target_new"]) - math.exp(-p["target_true"])) for p in probs])


def _per_case_counterfact(post: Post) -> dict[str, float | None]:
    row: dict[str, float | None] = {}
    for group, new_wins in (("rewrite", True), ("paraphrase", True), ("neighborhood", False)):
        probs = post[f"{group}_prompts_probs"]
        row[f"{group}_success"] = _success(probs, new_wins)
        row[f"{group}_diff"] = _diff(probs, new_wins)
        row[f"{group}_acc"] = _mean_or_none([float(c) for c in post.get(f"{group}_prompts_correct", [])])
    for key in ("ngram_entropy", "reference_score", "essence_score"):
        row[key] = float(post[key]) if key in post else None
    return row


def _per_case_zsre(post: Post) -> dict[str, float | None]:
    return {
        f"{group}_acc": _mean_or_none([float(c) for c in post[f"{group}_prompts_correct"]])
        for group in ("rewrite", "paraphrase", "neighborhood")
    }


PER_CASE: dict[str, Callable[[Post], dict[str, float | None]]] = {
    "counterfact": _per_case_counterfact,
    "zsre": _per_case_zsre,
}
REQUIRED_KEY = {"counterfact": "rewrite_prompts_probs", "zsre": "rewrite_prompts_correct"}
GROUPS = ("rewrite", "paraphrase", "neighborhood")
GENERATION_KEYS = ("ngram_entropy", "reference_score", "essence_score")


def json_type(value: Any) -> str:
    """The JSON name of ``value``'s type, for messages about files of the wrong shape."""
    names = {dict: "object", list: "list", str: "string", bool: "true/false", type(None): "null"}
    return names.get(type(value), "number" if isinstance(value, (int, float)) else type(value).__name__)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float))  # bools too: the correctness lists hold them


def _is_nll_pair(x: Any) -> bool:
    return isinstance(x, dict) and all(_is_number(x.get(k)) for k in ("target_new", "target_true"))


# The per-case lists summarize_cases reads: key suffix, test of one element, the element in words.
NLL_PAIRS = ("_prompts_probs", _is_nll_pair, "a {target_new, target_true} pair of NLLs")
CORRECT = ("_prompts_correct", _is_number, "true/false")
READ_LISTS = {"counterfact": (NLL_PAIRS, CORRECT), "zsre": (CORRECT,)}  # the first of each is required


def _list_problem(value: Any, key: str, is_item: Callable[[Any], bool], item: str) -> str | None:
    if not isinstance(value, list):
        return f"its {key!r} is a JSON {json_type(value)}, not a list"
    bad = next((i for i, x in enumerate(value) if not is_item(x)), None)
    return None if bad is None else f"its {key!r}[{bad}] is {json.dumps(value[bad])[:40]}, not {item}"


def post_problem(post: Any, ds_kind: str) -> str | None:
    """What keeps ``post`` (one case's metrics) from :func:`summarize_cases` as a ``ds_kind`` case,
    in words ("it lacks ...", "its 'x' is ..."); None when nothing does. Checked per case, so one
    damaged case file can be left out instead of stopping the summary of all the others."""
    if not isinstance(post, dict):
        return f"it is a JSON {json_type(post)}, not an object of metrics"
    required = [f"{g}{READ_LISTS[ds_kind][0][0]}" for g in GROUPS]
    missing = [k for k in required if k not in post]
    if missing:
        return f"it lacks {', '.join(map(repr, missing))} (is it a {ds_kind} case?)"
    for group in GROUPS:
        for suffix, is_item, item in READ_LISTS[ds_kind]:
            key = group + suffix
            problem = _list_problem(post[key], key, is_item, item) if key in post else None
            if problem:
                return problem
    bad = [k for k in GENERATION_KEYS if k in post and not _is_number(post[k])]
    return f"its {bad[0]!r} is a JSON {json_type(post[bad[0]])}, not a number" if bad else None


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean; 0 if any value is 0 (one failed criterion sinks the Score)."""
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def _per_case_rows(posts: Sequence[Post], ds_kind: str) -> list[dict[str, float | None]]:
    if ds_kind not in PER_CASE:
        raise ValueError(f"ds_kind must be one of {sorted(PER_CASE)}, got {ds_kind!r}")
    if not posts:
        raise ValueError("summarize_cases needs at least one case")
    for index, post in enumerate(posts):
        if REQUIRED_KEY[ds_kind] not in post:
            raise ValueError(
                f"case #{index} has no {REQUIRED_KEY[ds_kind]!r}; is it a {ds_kind} case (keys: {sorted(post)[:6]}...)?"
            )
    return [PER_CASE[ds_kind](post) for post in posts]


def summarize_cases(posts: Sequence[Post], ds_kind: DsKind) -> dict[str, tuple[float, float]]:
    """``{metric: (mean, std)}`` over cases, ×100 except ``essence_score``; see METRIC_DESCRIPTIONS.

    A metric appears only if at least one case has it (generation metrics run on some cases).
    """
    rows = _per_case_rows(posts, ds_kind)
    summary: dict[str, tuple[float, float]] = {}
    for key in rows[0]:
        values = np.array([row[key] for row in rows if row[key] is not None], dtype=np.float64)
        if values.size:
            scale = 1.0 if key in UNSCALED else 100.0
            summary[key] = (float(values.mean() * scale), float(values.std() * scale))
    rates = ("rewrite_success", "paraphrase_success", "neighborhood_success")
    if ds_kind == "counterfact" and all(k in summary for k in rates):
        summary["score"] = (harmonic_mean([summary[k][0] for k in rates]), float("nan"))
    return summary
