"""Shared pieces of the JSON loaders: locating the file, parsing it, a read-only record list."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, overload

from dsets.data_dir import ensure_file


class DatasetFormatError(ValueError):
    """A data file or record has the wrong shape; the message names the file/record and the fix."""


def locate(source: str | Path, filename: str) -> Path:
    """``source`` is either the data folder (``filename`` is fetched into it if missing) or a file.

    A path ending in ``.json`` is taken as an explicit file and never downloaded, so a typo in a
    path fails loudly instead of silently fetching the full canonical file.
    """
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.suffix == ".json":
        raise FileNotFoundError(f"dataset file {path} does not exist; check the path (or pass the data folder)")
    return ensure_file(path, filename)


def read_json(path: Path) -> Any:
    """Parse a JSON file; a broken file raises an error naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            "the file is damaged or truncated: repair it (a downloaded file: delete it and it is fetched again)"
        ) from exc
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(f"{path} is not UTF-8 text ({exc.reason}); is it the right file?") from exc


def read_json_list(path: Path, what: str) -> list[Any]:
    """Parse a JSON file that must hold a list of ``what`` records."""
    data = read_json(path)
    if not isinstance(data, list):
        raise DatasetFormatError(
            f"{path} must hold a JSON list of {what} records, found a JSON {type(data).__name__}; "
            "is it the right file?"
        )
    return data


# The key that tells each kind of edit dataset apart, and the --ds_name values that read it.
KINDS = {"CounterFact": ("requested_rewrite", "mcf or cf"), "zsRE": ("src", "zsre")}


def record_kind(record: Any) -> str | None:
    """Which kind of edit dataset a raw record belongs to (a KINDS key), or None."""
    if isinstance(record, dict):
        for kind, (key, _) in KINDS.items():
            if key in record:
                return kind
    return None


def check_kind(data: list[Any], path: Path, expected: str) -> None:
    """A file of another kind (zsRE given as CounterFact, a task file...) is refused by its first record."""
    if not data or record_kind(data[0]) == expected:
        return
    found = record_kind(data[0])
    if found:
        raise DatasetFormatError(f"{path} holds {found} records, not {expected}; read it with "
                                 f"--ds_name={KINDS[found][1]}, or pass a {expected} file")
    keys = ", ".join(map(str, data[0])) if isinstance(data[0], dict) else type(data[0]).__name__
    raise DatasetFormatError(f"{path} does not hold {expected} records (its first record: {keys[:120]}; a {expected} "
                             f"record has '{KINDS[expected][0]}'); is it the right file?")


def check_size(size: int | None) -> None:
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise ValueError(f"size must be None (all records) or a non-negative int, got {size!r}")


def require_str(record: dict[str, Any], key: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DatasetFormatError(f"{where}: '{key}' must be a non-empty string, got {value!r}; fix the record")
    return value


class RecordList(Sequence):
    """An immutable list of record dicts that remembers which file it came from."""

    def __init__(self, records: list[dict[str, Any]], source: Path | str) -> None:
        self._records = records
        self.source = Path(source)

    def __len__(self) -> int:
        return len(self._records)

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, index):
        return self._records[index]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} records from {self.source})"
