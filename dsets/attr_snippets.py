"""Wikipedia snippets per (relation, object), the references of the Consistency metric.

attribute_snippets.json: ``[{relation_id, target_id, samples: [{name, text}]}]``, where ``name``
is the entity the snippet is about and ``target_id`` the object it mentions.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dsets.records import DatasetFormatError, locate, read_json_list

SNIPPETS_FILE = "attribute_snippets.json"


class AttributeSnippets:
    """``snips[relation_id][target_id]`` → list of ``{name, text}`` snippet dicts."""

    def __init__(self, data_dir: str | Path) -> None:
        path = locate(data_dir, SNIPPETS_FILE)
        self._build(read_json_list(path, "attribute-snippet"), path)

    @classmethod
    def from_records(cls, records: Iterable[dict[str, Any]], source: str = "<records>") -> "AttributeSnippets":
        """Build from records already in memory (tests, or a subset of the file)."""
        snips = cls.__new__(cls)
        snips._build(list(records), Path(source))
        return snips

    def _build(self, records: list[Any], source: Path) -> None:
        self.source = source
        self._by_relation: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self._by_name: dict[str, list[dict[str, Any]]] = {}
        for index, record in enumerate(records):
            if not isinstance(record, dict) or not isinstance(record.get("samples"), list):
                raise DatasetFormatError(
                    f"{source}: record #{index} must be {{relation_id, target_id, samples: [...]}}; "
                    "is it the right file?"
                )
            rel, target = str(record.get("relation_id")), str(record.get("target_id"))
            bucket = self._by_relation.setdefault(rel, {}).setdefault(target, [])
            for sample in record["samples"]:
                if not isinstance(sample, dict) or not isinstance(sample.get("text"), str):
                    raise DatasetFormatError(f"{source}: record #{index} ({rel}, {target}) has a sample without 'text'")
                bucket.append(sample)
                self._by_name.setdefault(str(sample.get("name")), []).append(sample)

    def __getitem__(self, relation_id: str) -> Mapping[str, list[dict[str, Any]]]:
        """All snippets of one relation by target id (empty if the relation is unknown)."""
        return self._by_relation.get(relation_id, {})

    def get(self, relation_id: str, target_id: str) -> list[dict[str, Any]]:
        """Snippets for ``(relation_id, target_id)``; empty when there are none."""
        return list(self._by_relation.get(relation_id, {}).get(target_id, []))

    def samples_about(self, name: str) -> list[dict[str, Any]]:
        """Snippets whose subject is ``name`` (for the essence / perplexity check)."""
        return list(self._by_name.get(name, []))

    def texts(self) -> list[str]:
        """Every snippet text once per occurrence: a corpus to refit TF-IDF statistics on."""
        return [s["text"] for targets in self._by_relation.values() for bucket in targets.values() for s in bucket]

    def __len__(self) -> int:
        return sum(len(bucket) for targets in self._by_relation.values() for bucket in targets.values())
