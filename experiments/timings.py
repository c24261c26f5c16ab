"""``timings.json``: where a run's wall time went, batch by batch, written as the run goes.

Per batch: the editor's phases (values, key reads, solves, ...), saving the state, the
general-capability pass and the curve point that followed it, the process's resident and peak
memory, the editor state's size on disk and the machine's load average. Around the batches: what
ran before the first (preparing C0, the unedited model's tasks) and the final scoring (teacher
forced and generation apart). A resumed run appends a segment and keeps the batches done; a
re-done batch replaces its entry. ``bench/stream.py`` turns the file into the stream table.
"""
from __future__ import annotations

import os
import platform
import resource
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from util.atomic_files import write_json_atomic


def _rss_mib() -> float | None:
    """Resident memory now (Linux /proc); None where that is not available."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    """The process's peak resident memory so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if platform.system() == "Darwin" else peak / 2**10


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine() -> dict[str, Any]:
    return {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
            "host": platform.node()}


class RunTimings:
    """Collects and writes one run's ``timings.json`` (``path``: RunFolder.timings_file); every write is atomic."""

    def __init__(self, path: Path, existing: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.data = existing or {"machine": machine(), "segments": [], "before_edits": {}, "batches": [],
                                 "final": {}}
        self._segment = {"started": time.ctime(), "machine": machine(), "wall_seconds": 0.0,
                         "load_average_start": _load_average()}
        self.data["segments"].append(self._segment)
        self._start = time.perf_counter()
        self._batch: dict[str, Any] | None = None

    @contextmanager
    def phase(self, name: str, where: str | None = None) -> Iterator[None]:
        """Adds the block's wall seconds to ``name`` of the open batch, or of ``where``
        ("before_edits" or "final") when given."""
        start = time.perf_counter()
        try:
            yield
        finally:
            target = self.data[where] if where else self._batch
            if target is not None:
                target[name] = round(target.get(name, 0.0) + time.perf_counter() - start, 3)

    def start_batch(self, batch_index: int) -> None:
        self._batch = {"batch_index": batch_index}

    def end_batch(self, report: Any, state_file: Path) -> None:
        """Closes the open batch with the editor's report; writes the file."""
        entry = self._batch or {}
        rss = _rss_mib()
        entry.update(total_edits=report.total_edits, n_requests=report.n_requests,
                     edit_seconds=round(report.seconds, 3), phases=dict(report.phase_seconds),
                     rss_mib=None if rss is None else round(rss, 1),
                     peak_rss_mib=round(max(_peak_rss_mib(), rss or 0.0), 1),
                     state_mib=round(state_file.stat().st_size / 2**20, 3) if state_file.is_file() else None,
                     load_average=_load_average(), finished=time.ctime())
        batches = [b for b in self.data["batches"] if b["batch_index"] != entry["batch_index"]]
        self.data["batches"] = sorted(batches + [entry], key=lambda b: b["batch_index"])
        self._batch = None
        self.write()

    def note(self, where: str, **values: Any) -> None:
        self.data[where].update(values)

    def write(self) -> None:
        self._segment["wall_seconds"] = round(time.perf_counter() - self._start, 3)
        self._segment["peak_rss_mib"] = round(_peak_rss_mib(), 1)
        self._segment["load_average_end"] = _load_average()
        write_json_atomic(self.path, self.data)
