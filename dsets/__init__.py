"""Datasets of the knowledge-editing benchmarks and the files the metrics need.

``cf``/``mcf`` (CounterFact), ``zsre`` (MEND zsRE split, converted to the same schema), attribute
snippets and TF-IDF statistics (Consistency), known facts. Files are read from the data folder
(``DATA_DIR`` in globals.yml) and fetched from the canonical root when missing.
"""
from dsets.attr_snippets import AttributeSnippets
from dsets.counterfact import (
    CounterFactDataset,
    MultiCounterFactDataset,
    validate_counterfact_record,
)
from dsets.data_dir import (
    DataFileMissing,
    dataset_url,
    download_file,
    ensure_file,
    load_globals,
    resolve_data_dir,
    resolve_global_dir,
)
from dsets.knowns import KnownsDataset
from dsets.records import DatasetFormatError, RecordList
from dsets.tfidf_stats import (
    fit_tfidf,
    load_tfidf_stats,
    load_tfidf_vectorizer,
    vectorizer_from_stats,
)
from dsets.zsre import ZsreDataset, zsre_record_to_case

__all__ = [
    "AttributeSnippets",
    "CounterFactDataset",
    "DataFileMissing",
    "DatasetFormatError",
    "KnownsDataset",
    "MultiCounterFactDataset",
    "RecordList",
    "ZsreDataset",
    "dataset_url",
    "download_file",
    "ensure_file",
    "fit_tfidf",
    "load_globals",
    "load_tfidf_stats",
    "load_tfidf_vectorizer",
    "resolve_data_dir",
    "resolve_global_dir",
    "validate_counterfact_record",
    "vectorizer_from_stats",
    "zsre_record_to_case",
]
