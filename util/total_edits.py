"""The running count of edits applied so far (``total_edits``), as files and states hold it.

``num_edits`` means edits per batch (``--num_edits``, config.json, the case files); the running count
is ``total_edits`` in everything written since the rename: editor states, ``downstream/`` and
``curves/`` points, ``run_complete.json``, ``editing.json`` and config.json's ``continued_from``.
Run folders and saved states written before the rename hold the running count as ``num_edits``:
the readers below still accept it, so old runs summarize, resume and continue as before.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TOTAL_EDITS = "total_edits"
OLD_TOTAL_EDITS = "num_edits"  # the running count's key in run folders written before the rename


def total_edits_key(mapping: Mapping[str, Any]) -> str | None:
    """The key that holds the running count in ``mapping`` (the new one first); None when neither."""
    return next((key for key in (TOTAL_EDITS, OLD_TOTAL_EDITS) if key in mapping), None)


def total_edits_of(mapping: Mapping[str, Any]) -> Any:
    """The running count as written (callers check its type); None when the mapping holds none."""
    key = total_edits_key(mapping)
    return None if key is None else mapping[key]


def with_total_edits(point: dict[str, Any]) -> dict[str, Any]:
    """``point`` with its running count under ``total_edits`` (an old file's ``num_edits`` moved there,
    in the same place among the keys), so everything downstream of a reader sees one name."""
    if TOTAL_EDITS in point or OLD_TOTAL_EDITS not in point:
        return point
    return {(TOTAL_EDITS if key == OLD_TOTAL_EDITS else key): value for key, value in point.items()}
