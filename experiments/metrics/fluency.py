"""Fluency: sampled generations and their n-gram entropy (low entropy = repetitive, collapsed text)."""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from util.generation import sample_continuations

# Offline stand-in for NLTK's word_tokenize (its punkt data cannot be downloaded here): runs of
# letters/digits, kept together across inner apostrophes, hyphens and dots ("don't", "well-known",
# "3.5"); every other non-space character is a token of its own.
_WORD_RE = re.compile(r"[^\W_]+(?:['’\-.][^\W_]+)*|\S")

NGRAM_ORDERS = (2, 3)
NGRAM_WEIGHTS = (2 / 3, 4 / 3)


def word_tokenize(text: str) -> list[str]:
    """Split ``text`` into word and punctuation tokens (case kept, as the original metric does)."""
    return _WORD_RE.findall(text)


def ngram_distribution_entropy(tokens: Sequence[str], n: int) -> float:
    """Entropy in bits of the frequency distribution of ``tokens``' n-grams (0 if there are none)."""
    counts = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0


def text_ngram_entropy(text: str) -> float:
    """Weighted mean of the bigram and trigram entropies of one text (weights 2/3 and 4/3)."""
    tokens = word_tokenize(text)
    weighted = [w * ngram_distribution_entropy(tokens, n) for n, w in zip(NGRAM_ORDERS, NGRAM_WEIGHTS)]
    return sum(weighted) / len(weighted)


def ngram_entropy(texts: Sequence[str]) -> float:
    """Mean over ``texts`` of :func:`text_ngram_entropy` (the paper's Fluency, before ×100)."""
    if isinstance(texts, str):
        raise TypeError("ngram_entropy takes a list of texts; wrap a single text in a list")
    if not texts:
        raise ValueError("ngram_entropy needs at least one text")
    return sum(text_ngram_entropy(t) for t in texts) / len(texts)


def generate_texts(
    model: torch.nn.Module,
    tok: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 100,
    top_k: int = 5,
    seed: int = 0,
) -> list[str]:
    """The texts Fluency and Consistency are measured on: prompt + up to ``max_new_tokens`` sampled
    tokens (top-k), all prompts in one batch, each stopping at EOS; seeded.

    The editor's own sampler (:func:`util.generation.sample_continuations`) with the metric's defaults.
    """
    if isinstance(prompts, str):
        raise TypeError("generate_texts takes a list of prompts; wrap a single prompt in a list")
    return sample_continuations(model, tok, prompts, max_new_tokens, top_k=top_k, seed=seed, stop_at_eos=True)
