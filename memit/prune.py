"""MEMIT_prune (PRUNE): MEMIT whose accumulated change keeps its singular values in check."""
from __future__ import annotations

import math

import torch

from memit.editor import MEMITEditor
from memit.hparams import MEMITPruneHyperParams


def restrain_singular_values(update: torch.Tensor, sigma_max: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``U diag(F(s)) V^T`` with ``F(s) = log s - log sigma_max + sigma_max`` for ``s > sigma_max``
    (other singular values kept): large directions of the update grow only logarithmically."""
    u, s, vh = torch.linalg.svd(update.to(dtype), full_matrices=False)
    big = s > sigma_max
    restrained = torch.where(big, torch.log(s) - math.log(sigma_max) + sigma_max, s)
    return (u * restrained) @ vh


class MEMITPruneEditor(MEMITEditor):
    """Restrains ``W - theta0`` once after the last batch (in finish(), as the original) or after every
    batch (``prune_timing``). ``W = theta0 + restrained(W - theta0)``; the original adds the restrained
    change to the already edited W, counting it twice (``prune_restrained_onto="edited_weight"``).
    """

    hparams_class = MEMITPruneHyperParams

    def __init__(self, model, tok, hparams, **options) -> None:
        super().__init__(model, tok, hparams, **options)
        self._sigma_max: dict[int, float] = {}  # largest singular value of each original weight

    def _after_batch(self, requests: list[dict]) -> None:
        super()._after_batch(requests)
        if self.hparams.prune_timing == "every_batch":
            with self.timer("post-steps"):
                self.restrain()

    def finish(self) -> None:
        if self.hparams.prune_timing == "final" and not self.finished:
            self.restrain()
        super().finish()

    @torch.no_grad()
    def restrain(self) -> None:
        dtype = getattr(torch, self.hparams.prune_svd_dtype)
        for layer, w in self.weights.items():
            theta0 = self.original[layer].to(device=w.device, dtype=dtype)
            if layer not in self._sigma_max:
                self._sigma_max[layer] = float(torch.linalg.matrix_norm(theta0, ord=2))
            change = restrain_singular_values(w.to(dtype) - theta0, self._sigma_max[layer], dtype)
            base = theta0 if self.hparams.prune_restrained_onto == "theta0" else w.to(dtype)
            w.copy_((base + change).to(w.dtype))
