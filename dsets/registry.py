"""``--ds_name`` → loader, so callers do not branch on dataset names."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dsets.counterfact import CounterFactDataset
from dsets.records import RecordList
from dsets.zsre import ZsreDataset

DS_NAMES = ("cf", "mcf", "zsre")


def load_edit_dataset(ds_name: str, data_dir: str | Path, tok: Any = None, size: int | None = None) -> RecordList:
    """Records of ``cf`` / ``mcf`` / ``zsre`` in the common schema (zsRE needs the tokenizer)."""
    if ds_name in ("cf", "mcf"):
        return CounterFactDataset(data_dir, multi=ds_name == "mcf", size=size)
    if ds_name == "zsre":
        if tok is None:
            raise ValueError("the zsre dataset needs the model's tokenizer (its neighborhood prompts are per token)")
        return ZsreDataset(data_dir, tok, size=size)
    raise ValueError(f"unknown dataset {ds_name!r}; choose one of {', '.join(DS_NAMES)}")
