"""known_1000.json: facts a model is known to complete, used by causal-tracing style analyses."""
from __future__ import annotations

from pathlib import Path

from dsets.records import (
    DatasetFormatError,
    RecordList,
    check_size,
    locate,
    read_json_list,
    require_str,
)

KNOWNS_FILE = "known_1000.json"


class KnownsDataset(RecordList):
    """Records ``{known_id, subject, attribute, template, prediction, prompt, relation_id}``."""

    def __init__(self, data_dir: str | Path, size: int | None = None) -> None:
        check_size(size)
        path = locate(data_dir, KNOWNS_FILE)
        records = read_json_list(path, "known-fact")[:size]
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise DatasetFormatError(f"{path}: record #{index} is not an object; is it the right file?")
            where = f"{path.name}: known_id={record.get('known_id', index)}"
            subject, prompt = require_str(record, "subject", where), require_str(record, "prompt", where)
            if subject not in prompt:
                raise DatasetFormatError(f"{where}: subject {subject!r} does not occur in prompt {prompt!r}")
        super().__init__(records, path)
