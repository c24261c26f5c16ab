"""What the covariance statistics C0 are computed from, beside the model and tokenizer, as one value.

Built once from a method's ``mom2_*`` hyperparameters (:meth:`util.value_hparams.ValueHyperParams.stats_spec`)
and handed to every caller of :mod:`util.second_moment` and to the cache key
(:mod:`util.stats_cache`), so no call site spells the settings out one by one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# Sums of k k^T over millions of tokens overflow or lose precision in 16-bit floats.
MOM2_DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class StatsSpec:
    corpus: str              # a local text file or folder, or a hub dataset name (util.corpus)
    n_samples: int           # texts read from it
    # Texts are cut at this many tokens; None: where the original's layer_stats cuts them
    # (util.stats_cache.effective_max_length).
    max_length: int | None
    dtype: str = "float32"   # the sums' dtype, one of MOM2_DTYPES (the cache key spells it so)

    def __post_init__(self) -> None:
        if self.dtype not in MOM2_DTYPES:
            raise ValueError(f"the statistics dtype must be one of {MOM2_DTYPES}, got {self.dtype!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)
