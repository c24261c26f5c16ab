"""Evaluation metrics of the editing benchmarks (per case, and their summary over cases)."""
from experiments.metrics.consistency import tfidf_similarity
from experiments.metrics.counterfact import (
    compute_rewrite_quality_counterfact,
    perplexity,
)
from experiments.metrics.fluency import (
    DEPARTURES,
    MetricOptions,
    generate_texts,
    generation_ids,
    metric_settings,
    ngram_entropy,
    text_ngram_entropy,
    word_tokenize,
)
from experiments.metrics.scoring import (
    ContinuationScore,
    score_continuations,
    score_pairs,
)
from experiments.metrics.summary import (
    METRIC_DESCRIPTIONS,
    harmonic_mean,
    summarize_cases,
)
from experiments.metrics.zsre import compute_rewrite_quality_zsre

__all__ = [
    "DEPARTURES",
    "METRIC_DESCRIPTIONS",
    "ContinuationScore",
    "MetricOptions",
    "compute_rewrite_quality_counterfact",
    "compute_rewrite_quality_zsre",
    "generate_texts",
    "generation_ids",
    "harmonic_mean",
    "metric_settings",
    "ngram_entropy",
    "perplexity",
    "score_continuations",
    "score_pairs",
    "summarize_cases",
    "text_ngram_entropy",
    "tfidf_similarity",
    "word_tokenize",
]
