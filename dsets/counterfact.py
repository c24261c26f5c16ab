"""CounterFact (``cf``) and MultiCounterFact (``mcf``) records in the ROME layout.

Each record: ``{case_id, requested_rewrite: {prompt, subject, relation_id, target_new: {str, id},
target_true: {str, id}}, paraphrase_prompts, neighborhood_prompts, attribute_prompts,
generation_prompts}``. Records are returned unchanged (targets keep no leading space; the editor
and the metrics normalise them with ``util.requests``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

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

log = logging.getLogger(__name__)
CF_FILE = "counterfact.json"
MCF_FILE = "multi_counterfact.json"
PROMPT_LISTS = ("paraphrase_prompts", "neighborhood_prompts")  # the metrics need these
OPTIONAL_PROMPT_LISTS = ("attribute_prompts", "generation_prompts")


def _check_target(rewrite: dict[str, Any], key: str, where: str) -> None:
    target = rewrite.get(key)
    if not isinstance(target, dict) or not isinstance(target.get("str"), str) or not target["str"].strip():
        raise DatasetFormatError(f"{where}: requested_rewrite.{key} must be {{'str': ..., 'id': ...}}, got {target!r}")


def _check_prompt_list(record: dict[str, Any], key: str, where: str, required: bool) -> None:
    if key not in record and not required:
        return
    prompts = record.get(key)
    if not isinstance(prompts, list):
        raise DatasetFormatError(f"{where}: '{key}' must be a list of prompt strings, got {type(prompts).__name__}")
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise DatasetFormatError(f"{where}: '{key}' must be a list of prompt strings, but element {index} is "
                                     f"{prompt!r} ({type(prompt).__name__})")


def validate_counterfact_record(record: Any, source: Path, index: int) -> None:
    """Raise :class:`DatasetFormatError` naming the case and the fix if ``record`` is malformed."""
    if not isinstance(record, dict) or "case_id" not in record:
        raise DatasetFormatError(f"{source}: record #{index} is not an object with a 'case_id'; is it the right file?")
    case_id = record["case_id"]
    # Case files are named by the id and each case's sampling seed is seed + id: an id must be a whole
    # number (37 and "37" would write the same file, and a word cannot seed anything).
    if not isinstance(case_id, int) or isinstance(case_id, bool) or case_id < 0:
        raise DatasetFormatError(f"{source}: record #{index} has case_id={case_id!r} ({type(case_id).__name__}); "
                                 "case ids must be whole numbers >= 0 (write 37, not \"37\"), each used once")
    where = f"{source.name}: case_id={record['case_id']}"
    rewrite = record.get("requested_rewrite")
    if not isinstance(rewrite, dict):
        raise DatasetFormatError(f"{where}: 'requested_rewrite' must be an object, got {type(rewrite).__name__}")
    subject = require_str(rewrite, "subject", f"{where}: requested_rewrite")
    if subject != subject.strip():
        raise DatasetFormatError(f"{where}: the subject {subject!r} has surrounding spaces; remove them (the prompt "
                                 "around '{}' carries the spacing, and the fact token is found by the subject's tokens)")
    if not any(c.isalnum() for c in subject):
        raise DatasetFormatError(f"{where}: the subject {subject!r} has no letter or digit; is the record right?")
    try:
        check_prompt_template(rewrite.get("prompt"), where=f"{where}: requested_rewrite.prompt")
    except RequestError as exc:
        raise DatasetFormatError(str(exc)) from exc
    for key in ("target_new", "target_true"):
        _check_target(rewrite, key, where)
    if rewrite["target_new"]["str"].strip() == rewrite["target_true"]["str"].strip():
        raise DatasetFormatError(f"{where}: target_new equals target_true ({rewrite['target_new']['str']!r}): the edit "
                                 "would change nothing and its metrics would mean nothing; fix or drop the record")
    for key in PROMPT_LISTS:
        _check_prompt_list(record, key, where, required=True)
    for key in OPTIONAL_PROMPT_LISTS:
        _check_prompt_list(record, key, where, required=False)


class CounterFactDataset(RecordList):
    """CounterFact records from ``data_dir`` (fetched if missing) or from an explicit ``.json`` file.

    ``multi=True`` reads multi_counterfact.json instead of counterfact.json. ``size`` keeps the
    first ``size`` records. Only kept records are validated, so a small run is not blocked by a
    damaged record it never uses.
    """

    def __init__(self, data_dir: str | Path, multi: bool = False, size: int | None = None) -> None:
        check_size(size)
        path = locate(data_dir, MCF_FILE if multi else CF_FILE)
        records = read_json_list(path, "CounterFact")[:size]
        check_kind(records, path, "CounterFact")
        seen: set[Any] = set()
        for index, record in enumerate(records):
            validate_counterfact_record(record, path, index)
            if record["case_id"] in seen:
                raise DatasetFormatError(f"{path}: case_id={record['case_id']} occurs twice; case ids must be unique")
            seen.add(record["case_id"])
        for key in PROMPT_LISTS:
            empty = [r["case_id"] for r in records if not r[key]]
            if empty:
                log.warning("%s: %d case(s) have no %s (case_ids %s): they count in no mean of that column, so its "
                            "number of cases is smaller than the run's", path, len(empty), key,
                            ", ".join(map(str, empty[:10])) + (" ..." if len(empty) > 10 else ""))
        super().__init__(records, path)


class MultiCounterFactDataset(CounterFactDataset):
    """MultiCounterFact (``mcf``): CounterFact without subject clashes, for batched edits."""

    def __init__(self, data_dir: str | Path, size: int | None = None) -> None:
        super().__init__(data_dir, multi=True, size=size)
