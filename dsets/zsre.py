"""zsRE (MEND evaluation split) turned into the CounterFact-like schema the harness uses.

Conversion (docs/DATA_AND_METRICS.md): prompt = ``src`` with the subject replaced by ``{}``;
target_new = ``answers[0]``; target_true = ``"<|endoftext|>"``; paraphrase = ``[rephrase]``;
neighborhood = one entry per token of ``" " + loc_ans``: ``loc + "?" + decode(tokens[:i])`` with
target ``decode(tokens[i])``. Each neighborhood entry also keeps that token's id as
``target_id``: decoding one token can lose information (a SentencePiece word-start piece ``▁``
decodes to ``""``), and the metric needs the token itself.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from dsets.records import (
    DatasetFormatError,
    RecordList,
    check_kind,
    check_size,
    locate,
    read_json_list,
    require_str,
)
from util.requests import RequestError, check_prompt_template

ZSRE_FILE = "zsre_mend_eval.json"
NQ_PREFIX = "nq question: "
TARGET_TRUE = "<|endoftext|>"  # zsRE has no "true" answer; the original tooling uses this string


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer the conversion uses."""

    def __call__(self, text: str, add_special_tokens: bool = ...) -> Any: ...

    def decode(self, token_ids: list[int]) -> str: ...


def _neighborhood(loc: str, loc_ans: str, tok: Tokenizer, where: str) -> list[dict[str, Any]]:
    token_ids = list(tok(" " + loc_ans, add_special_tokens=False)["input_ids"])
    if not token_ids:
        raise DatasetFormatError(f"{where}: loc_ans {loc_ans!r} tokenizes to nothing; fix the record")
    return [
        {"prompt": loc + "?" + tok.decode(token_ids[:i]), "target": tok.decode(token_ids[i : i + 1]),
         "target_id": int(token_ids[i])}
        for i in range(len(token_ids))
    ]


def zsre_record_to_case(record: Any, case_id: int, tok: Tokenizer) -> dict[str, Any]:
    """Convert one raw zsRE record (its index is the case id) to the common schema."""
    where = f"zsRE record {case_id}"
    if not isinstance(record, dict):
        raise DatasetFormatError(f"{where} is a {type(record).__name__}, not an object; is it the right file?")
    subject, src = require_str(record, "subject", where), require_str(record, "src", where)
    rephrase, loc = require_str(record, "rephrase", where), require_str(record, "loc", where)
    loc_ans = require_str(record, "loc_ans", where)
    answers = record.get("answers")
    if not isinstance(answers, list) or not answers or not isinstance(answers[0], str) or not answers[0].strip():
        raise DatasetFormatError(f"{where}: 'answers' must be a non-empty list of strings, got {answers!r}")
    if subject not in src:
        raise DatasetFormatError(
            f"{where}: subject {subject!r} does not occur in src {src!r}; the prompt is src with the "
            "subject replaced by '{}', so fix the subject or drop the record"
        )
    if not loc.startswith(NQ_PREFIX):
        raise DatasetFormatError(
            f"{where}: loc {loc!r} must start with {NQ_PREFIX!r} (a Natural Questions locality prompt); "
            "is this the MEND zsRE evaluation file?"
        )
    prompt = src.replace(subject, "{}")
    try:
        check_prompt_template(prompt, where=f"{where}: prompt built from src")
    except RequestError as exc:  # subject occurring twice, or braces already in src
        raise DatasetFormatError(str(exc)) from exc
    return {
        "case_id": case_id,
        "requested_rewrite": {
            "prompt": prompt,
            "subject": subject,
            "target_new": {"str": answers[0]},
            "target_true": {"str": TARGET_TRUE},
        },
        "paraphrase_prompts": [rephrase],
        "neighborhood_prompts": _neighborhood(loc, loc_ans, tok, where),
        "attribute_prompts": [],
        "generation_prompts": [],
    }


class ZsreDataset(RecordList):
    """zsRE evaluation records, converted; from ``data_dir`` or an explicit ``.json`` file."""

    def __init__(self, data_dir: str | Path, tok: Tokenizer, size: int | None = None) -> None:
        check_size(size)
        path = locate(data_dir, ZSRE_FILE)
        raw = read_json_list(path, "zsRE")[:size]
        check_kind(raw, path, "zsRE")
        super().__init__([zsre_record_to_case(r, i, tok) for i, r in enumerate(raw)], path)
