"""Seconds per named phase of an edit batch (values, key reads, solves, ...)."""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


def model_devices(model: nn.Module) -> list[torch.device]:
    """Every device holding a parameter (several when the model is split with a device map)."""
    return sorted({p.device for p in model.parameters()}, key=str)


class PhaseTimer:
    """Adds the wall time of each ``with timer("phase"):`` block to ``seconds["phase"]``.

    Accelerators run asynchronously, so the model's accelerator devices are synchronised at
    each boundary: GPU work is counted in the phase that launched it, not in the next one.
    A phase entered twice accumulates; phases do not nest.
    """

    def __init__(self, devices: list[torch.device] | None = None) -> None:
        self._accelerators = [d for d in devices or [] if d.type != "cpu"]
        self.seconds: dict[str, float] = defaultdict(float)
        self._inside: str | None = None

    @classmethod
    def for_model(cls, model: nn.Module) -> "PhaseTimer":
        return cls(model_devices(model))

    def _sync(self) -> None:
        for device in self._accelerators:
            torch.accelerator.synchronize(device)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        if self._inside is not None:
            raise RuntimeError(f"phase {phase!r} started inside phase {self._inside!r}; phases do not nest")
        self._inside = phase
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[phase] += time.perf_counter() - start
            self._inside = None

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.seconds.items()}
