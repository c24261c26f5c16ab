"""The records a run edits: read, cut to the run's range, and checked before any edit."""
from __future__ import annotations

import logging

from experiments.ds_kinds import load_edit_dataset
from experiments.run_paths import RunPaths
from experiments.settings import RunConfig, RunError
from util.requests import normalize_request
from util.tokens import fact_token_index

log = logging.getLogger("experiments")


def load_records(cfg: RunConfig, paths: RunPaths, tok) -> list[dict]:
    """This run's records: after --dataset_offset, at most --dataset_size_limit; none is an error."""
    size = None if cfg.dataset_size_limit is None else cfg.dataset_offset + cfg.dataset_size_limit
    records = load_edit_dataset(cfg.ds_name, cfg.ds_file or paths.data, tok=tok, size=size)
    kept = records[cfg.dataset_offset:]
    if not kept:
        skipped = f" and --dataset_offset={cfg.dataset_offset} skips them all" if cfg.dataset_offset else ""
        raise RunError(f"no records to edit: {records.source} holds {len(records)} record(s){skipped}")
    if cfg.num_edits > len(kept):  # case files are named after --num_edits: they would claim edits never made
        raise RunError(f"--num_edits={cfg.num_edits} is more than the {len(kept)} record(s) to edit "
                       f"({records.source}); pass --num_edits={len(kept)} or less")
    if len(kept) % cfg.num_edits:  # case files say "<num_edits>_edits": the last batch is smaller
        log.warning("the last batch holds %d edit(s), not --num_edits=%d (%d records); its case files are named "
                    "%d_edits like the others, their grouped_case_ids list the batch", len(kept) % cfg.num_edits,
                    cfg.num_edits, len(kept), cfg.num_edits)
    if cfg.dataset_size_limit is not None and len(kept) < cfg.dataset_size_limit:
        log.warning("--dataset_size_limit=%d: %s holds only %d record(s) to edit; editing those",
                    cfg.dataset_size_limit, records.source, len(kept))
    return list(kept)


def request_of(record: dict, tok) -> dict:
    """The edit request of ``record``; a subject that does not survive tokenisation fails now, not hours
    into the run."""
    request = normalize_request({"case_id": record["case_id"], **record["requested_rewrite"]})
    try:
        fact_token_index(tok, request["prompt"], request["subject"])
    except ValueError as err:
        raise RunError(f"case_id={record['case_id']}: {err}") from None
    return request
