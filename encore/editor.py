"""ENCORE on the MEMIT engine: Delta = R K^T (lambda_c C0 + lambda I + S_prev + K K^T)^-1 per layer,
S_prev the keys of every earlier batch as each layer's solve read them; values stopped by MPES."""
from __future__ import annotations

from typing import ClassVar

import torch

from encore.hparams import ENCOREHyperParams
from memit.editor import MEMITEditor


class ENCOREEditor(MEMITEditor):
    hparams_class: ClassVar[type] = ENCOREHyperParams

    @property
    def accumulates_keys(self) -> bool:  # type: ignore[override]
        return self.hparams.add_prev_edits

    def _use_second_moments(self, c0: dict[int, torch.Tensor]) -> None:
        super()._use_second_moments(c0)  # lambda_c * C0
        for reg in self.regulariser.values():
            reg.diagonal().add_(self.hparams.update_norm_lambda)  # + lambda I: the ridge on Delta
        self._solved_keys: dict[int, torch.Tensor] = {}

    def _solve(self, layer: int, keys: torch.Tensor, residual: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        # The original holds the keys each layer's solve read (before later layers changed), not
        # keys read again after the batch.
        self._solved_keys = getattr(self, "_solved_keys", {})
        self._solved_keys[layer] = keys
        return super()._solve(layer, keys, residual, columns)

    def _accumulate_keys(self, requests: list[dict]) -> None:
        self._final_keys = None
        for layer, k in self._solved_keys.items():  # (f, n)
            reg = self.regulariser[layer]
            k = k.to(reg.device, reg.dtype)
            reg.addmm_(k, k.T)
        self._solved_keys = {}
