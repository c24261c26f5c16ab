"""``run.log``: every log line of the project's packages during a run, in the run's folder."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from experiments.algorithms import ALGORITHMS
from experiments.run_folder import RunFolder


def project_packages() -> tuple[str, ...]:
    """The harness's own top-level packages and every method's (read off the registry, not typed)."""
    methods = {alg.editor_class.__module__.split(".")[0] for alg in ALGORITHMS.values()}
    core = ("experiments", "util", "dsets")
    return core + tuple(sorted(methods - set(core)))


@contextmanager
def run_log(run_dir: Path) -> Iterator[None]:
    """Every package's log lines also go to run_dir/run.log for the duration of the run (and no
    longer): the handler sits on the root logger, and the project's own packages log at INFO."""
    handler = logging.FileHandler(RunFolder(run_dir).file(RunFolder.LOG))
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    ours = [logging.getLogger(name) for name in project_packages()]
    levels = [lg.level for lg in ours]
    root.addHandler(handler)
    for lg in ours:
        if lg.getEffectiveLevel() > logging.INFO:
            lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for lg, level in zip(ours, levels):
            lg.setLevel(level)
        root.removeHandler(handler)
        handler.close()
