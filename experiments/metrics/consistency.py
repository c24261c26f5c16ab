"""Consistency: how close generated text is to reference text about the new object (TF-IDF)."""
from __future__ import annotations

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer


def tfidf_similarity(text_a: str, text_b: str, vec: TfidfVectorizer) -> float:
    """Cosine similarity of the TF-IDF vectors of two texts (0 when either has no known word)."""
    rows = vec.transform([text_a, text_b])  # sparse (2, vocab): the vocabulary can be millions wide
    norms = np.sqrt(np.asarray(rows.multiply(rows).sum(axis=1)).ravel())
    if norms[0] == 0.0 or norms[1] == 0.0:
        return 0.0
    return float(rows[0].multiply(rows[1]).sum() / (norms[0] * norms[1]))
