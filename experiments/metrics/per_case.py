"""One case's ``post`` (its per-prompt scores) reduced to one number per metric, per dataset kind.

Every per-case quantity is the mean over that case's prompts (e.g. the fraction of its paraphrase
prompts where the new object wins); :mod:`experiments.metrics.summary` then averages over cases. A
case with no prompts of a group gets None for that group's metrics: it says nothing about them.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

Post = dict[str, Any]
Row = dict[str, float | None]
GROUPS = ("rewrite", "paraphrase", "neighborhood")
GENERATION_KEYS = ("ngram_entropy", "reference_score", "essence_score")


def json_type(value: Any) -> str:
    """The JSON name of ``value``'s type, for messages about files of the wrong shape."""
    names = {dict: "object", list: "list", str: "string", bool: "true/false", type(None): "null"}
    return names.get(type(value), "number" if isinstance(value, (int, float)) else type(value).__name__)


def _mean_or_none(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _success(probs: Sequence[dict[str, float]], new_wins: bool) -> float | None:
    # Entries are NLLs: P(new) > P(true) exactly when NLL(new) < NLL(true). Ties count for neither.
    if new_wins:
        return _mean_or_none([float(p["target_new"] < p["target_true"]) for p in probs])
    return _mean_or_none([float(p["target_true"] < p["target_new"]) for p in probs])


def _diff(probs: Sequence[dict[str, float]], new_wins: bool) -> float | None:
    sign = 1.0 if new_wins else -1.0
    return _mean_or_none([sign * (math.exp(-p["target_new"]) - math.exp(-p["target_true"])) for p in probs])


def counterfact_row(post: Post) -> Row:
    """Success rates and magnitudes from the NLL pairs; accuracies and generation metrics if present."""
    row: Row = {}
    for group, new_wins in (("rewrite", True), ("paraphrase", True), ("neighborhood", False)):
        probs = post[f"{group}_prompts_probs"]
        row[f"{group}_success"] = _success(probs, new_wins)
        row[f"{group}_diff"] = _diff(probs, new_wins)
        row[f"{group}_acc"] = _mean_or_none([float(c) for c in post.get(f"{group}_prompts_correct", [])])
    for key in GENERATION_KEYS:
        row[key] = float(post[key]) if key in post else None
    return {**row, **generation_eval_row(post)}


def zsre_row(post: Post) -> Row:
    """Token-level top-1 accuracies."""
    row: Row = {f"{group}_acc": _mean_or_none([float(c) for c in post[f"{group}_prompts_correct"]]) for group in GROUPS}
    return {**row, **generation_eval_row(post)}


def generation_eval_row(post: Post) -> Row:
    """Means of the generation-based scores (``--generation_eval``), where the case has them."""
    return {f"{group}_gen_{k}": _mean_or_none([float(x) for x in post[f"{group}_gen_{k}"]])
            for group in GROUPS for k in ("em", "f1") if f"{group}_gen_{k}" in post}


class PostList(NamedTuple):
    """A per-prompt list a kind's ``post`` holds for each group: key suffix, test of one element, the
    element in words (for messages about damaged case files)."""

    suffix: str
    is_item: Callable[[Any], bool]
    item: str


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float))  # bools too: the correctness lists hold them


def _is_nll_pair(x: Any) -> bool:
    return isinstance(x, dict) and all(_is_number(x.get(k)) for k in ("target_new", "target_true"))


NLL_PAIRS = PostList("_prompts_probs", _is_nll_pair, "a {target_new, target_true} pair of NLLs")
CORRECT = PostList("_prompts_correct", _is_number, "true/false")


def _list_problem(value: Any, key: str, shape: PostList) -> str | None:
    if not isinstance(value, list):
        return f"its {key!r} is a JSON {json_type(value)}, not a list"
    bad = next((i for i, x in enumerate(value) if not shape.is_item(x)), None)
    return None if bad is None else f"its {key!r}[{bad}] is {json.dumps(value[bad])[:40]}, not {shape.item}"


def post_problem_of(post: Any, lists: Sequence[PostList], kind_name: str) -> str | None:
    """What keeps ``post`` from being read with ``lists`` (the first required for every group), in
    words; None when nothing does."""
    if not isinstance(post, dict):
        return f"it is a JSON {json_type(post)}, not an object of metrics"
    missing = [k for k in (f"{g}{lists[0].suffix}" for g in GROUPS) if k not in post]
    if missing:
        return f"it lacks {', '.join(map(repr, missing))} (is it a {kind_name} case?)"
    for group in GROUPS:
        for shape in lists:
            key = group + shape.suffix
            problem = _list_problem(post[key], key, shape) if key in post else None
            if problem:
                return problem
    bad = [k for k in GENERATION_KEYS if k in post and not _is_number(post[k])]
    return f"its {bad[0]!r} is a JSON {json_type(post[bad[0]])}, not a number" if bad else None
