"""The folders one run reads and writes, resolved once from its settings and ``globals.yml``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from experiments.downstream import SHIPPED_GLUE_DIR
from util.globals import resolve_global_dir


@dataclass(frozen=True)
class RunPaths:
    data: Path      # dataset files (DATA_DIR or --data_dir)
    results: Path   # <results>/<ALG>/run_NNN (RESULTS_DIR or --results_dir)
    stats: Path     # covariance and value caches (STATS_DIR or --stats_dir)
    hparams: Path   # hparams/<ALG>/*.json (HPARAMS_DIR)
    glue: Path      # general-capability task files (--glue_dir or the shipped ones)

    @classmethod
    def of(cls, cfg) -> RunPaths:
        """The folders of ``cfg`` (a RunConfig): its flags where given, else globals.yml."""
        return cls(data=resolve_global_dir("DATA_DIR", cfg.data_dir),
                   results=resolve_global_dir("RESULTS_DIR", cfg.results_dir),
                   stats=resolve_global_dir("STATS_DIR", cfg.stats_dir),
                   hparams=resolve_global_dir("HPARAMS_DIR"),
                   glue=Path(cfg.glue_dir).expanduser() if cfg.glue_dir else SHIPPED_GLUE_DIR)
