"""TF-IDF statistics for the Consistency metric.

The canonical statistics are ``idf.npy`` (idf weights) and ``tfidf_vocab.json`` (word → column)
fitted by the original project on Wikipedia text. When they cannot be had, a vectorizer refit on
other text (the attribute snippets, or a corpus) is a documented fallback: its numbers are
comparable between runs that use the same refit, not with published tables.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from dsets.data_dir import DataFileMissing, ensure_file
from dsets.records import DatasetFormatError, read_json

IDF_FILE = "idf.npy"
VOCAB_FILE = "tfidf_vocab.json"


def vectorizer_from_stats(idf: np.ndarray, vocab: dict[str, int]) -> TfidfVectorizer:
    """A ready-to-use TfidfVectorizer with a fixed vocabulary and idf weights."""
    idf = np.asarray(idf, dtype=np.float64)
    if idf.ndim != 1 or len(idf) != len(vocab):
        raise DatasetFormatError(
            f"idf has shape {idf.shape} but the vocabulary has {len(vocab)} words; "
            f"{IDF_FILE} and {VOCAB_FILE} must come from the same fit"
        )
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise DatasetFormatError(f"{VOCAB_FILE} must map words to the columns 0..{len(vocab) - 1} exactly once")
    vec = TfidfVectorizer(vocabulary=vocab)
    vec.idf_ = idf  # sklearn's setter installs the weights; nothing else needs fitting
    return vec


def fit_tfidf(texts: Iterable[str]) -> TfidfVectorizer:
    """Refit TF-IDF statistics on ``texts`` (the fallback when the canonical files are missing)."""
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise ValueError("cannot fit TF-IDF statistics on an empty corpus; pass snippet or corpus texts")
    return TfidfVectorizer().fit(texts)


def load_tfidf_stats(data_dir: str | Path) -> TfidfVectorizer:
    """The canonical statistics from ``data_dir`` (downloaded if missing)."""
    idf_path = ensure_file(data_dir, IDF_FILE)
    vocab_path = ensure_file(data_dir, VOCAB_FILE)
    vocab = read_json(vocab_path)
    if not isinstance(vocab, dict):
        raise DatasetFormatError(f"{vocab_path} must be a JSON object mapping words to columns")
    return vectorizer_from_stats(np.load(idf_path, allow_pickle=False), vocab)


def load_tfidf_vectorizer(data_dir: str | Path, fit_texts: Iterable[str] | None = None) -> TfidfVectorizer:
    """Canonical statistics if present or downloadable; else refit on ``fit_texts`` (with a warning)."""
    try:
        return load_tfidf_stats(data_dir)
    except DataFileMissing as exc:
        if fit_texts is None:
            raise
        warnings.warn(
            f"{exc.filename} is missing ({exc.url} unreachable), so TF-IDF statistics are refit on the "
            f"given texts; Consistency is then not comparable with published numbers. Put {IDF_FILE} and "
            f"{VOCAB_FILE} in {exc.folder} to use the canonical statistics.",
            stacklevel=2,
        )
        return fit_tfidf(fit_texts)
