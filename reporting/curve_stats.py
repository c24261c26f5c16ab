"""What the figures draw beside a point's mean: its standard error, and the unedited model on the same cases.

:func:`standard_errors` gives, per metric, the standard error of the mean over a point's cases
(sample std / sqrt(n), on the scale of :func:`experiments.metrics.summarize_cases`). Score is the
harmonic mean of three means, so it has no per-case values; its standard error is the delta
method's: the spread over cases of each case's linearised contribution (the three rates of one
case are correlated, which a sum of the three errors would ignore).

:func:`read_baseline` reads the unedited model's per-case metrics from the JSON that
``bench/pre_edit_curve.py`` writes (``{"cases": {case_id: post}, ...}``); :func:`baseline_point`
summarizes them on exactly the cases of one point, or says why it cannot.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments.ds_kinds import kind_named
from experiments.metrics.summary import UNSCALED, harmonic_mean, post_problem, summarize_cases
from reporting.errors import SummaryError

Post = Mapping[str, Any]
BASELINE_SHAPE = "the JSON bench/pre_edit_curve.py writes ({\"cases\": {case_id: metrics}, ...})"


def _se(values: np.ndarray) -> float:
    """Standard error of the mean; NaN with fewer than two values (no spread to estimate)."""
    return float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else math.nan


def _score_se(rows: Sequence[Mapping[str, float | None]], keys: Sequence[str]) -> float:
    """The delta-method standard error of Score = 3 / sum(1 / mean_k), ×100, over the cases that
    have all three rates. At a zero mean Score is 0 by definition and has no derivative: NaN."""
    x = np.array([[r[k] for k in keys] for r in rows if all(r.get(k) is not None for k in keys)], dtype=np.float64)
    if len(x) < 2:
        return math.nan
    means = x.mean(axis=0) * 100.0
    if np.any(means <= 0):
        return math.nan
    score = harmonic_mean(list(means))
    gradient = score ** 2 / (len(keys) * means ** 2)  # dScore / dmean_k
    influence = (x * 100.0 - means) @ gradient  # each case's linearised contribution
    return _se(influence)


def standard_errors(posts: Sequence[Post], ds_kind: str) -> dict[str, float]:
    """``{metric: standard error of its mean over the cases}``, for the metrics summarize_cases gives."""
    kind = kind_named(ds_kind)
    rows = [kind.per_case(post) for post in posts]
    keys = dict.fromkeys(k for row in rows for k in row)
    out = {}
    for key in keys:
        values = np.array([row[key] for row in rows if row.get(key) is not None], dtype=np.float64)
        if values.size:
            out[key] = _se(values) * (1.0 if key in UNSCALED else 100.0)
    if kind.score_of and all(k in out for k in kind.score_of):
        out["score"] = _score_se(rows, kind.score_of)
    return out


@dataclass(frozen=True)
class Baseline:
    """The unedited model's per-case metrics by case id, and where they come from (for the CSV)."""

    source: str
    cases: Mapping[str, Post]


def read_baseline(path: str | Path) -> Baseline:
    """The unedited model's per-case metrics of ``path``; a file that is not such a JSON is refused."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as err:
        raise SummaryError(f"--baseline {path} cannot be read ({err}); pass {BASELINE_SHAPE}") from None
    except json.JSONDecodeError as err:
        raise SummaryError(f"--baseline {path} is not valid JSON ({err.msg} at line {err.lineno})") from None
    cases = data.get("cases") if isinstance(data, dict) else None
    if not isinstance(cases, dict) or not cases or not all(isinstance(v, dict) for v in cases.values()):
        raise SummaryError(f"--baseline {path} holds no per-case metrics; pass {BASELINE_SHAPE}")
    return Baseline(str(path), {str(k): v for k, v in cases.items()})


def baseline_point(cases: Mapping[str, Post], case_ids: Iterable[str],
                   ds_kind: str) -> tuple[dict[str, tuple[float, float]], dict[str, float]] | str:
    """``(summary, standard errors)`` of the unedited model on exactly ``case_ids``; otherwise why not
    (some cases missing or of the wrong shape): a line on other cases would not be the same comparison."""
    ids = list(case_ids)
    missing = [i for i in ids if i not in cases]
    if missing:
        return f"the unedited model's scores lack {len(missing)} of its {len(ids)} cases (e.g. case {missing[0]})"
    posts = [cases[i] for i in ids]
    bad = next(((i, p) for i, p in zip(ids, posts) if post_problem(p, ds_kind)), None)
    if bad:
        return f"the unedited model's scores of case {bad[0]} have the wrong shape: {post_problem(bad[1], ds_kind)}"
    return summarize_cases(posts, ds_kind), standard_errors(posts, ds_kind)
