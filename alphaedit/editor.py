"""AlphaEdit: MEMIT's engine whose update is projected onto the null space of the preserved keys."""
from __future__ import annotations

import torch

from alphaedit.hparams import AlphaEditHyperParams
from alphaedit.projection import cached_projector
from memit.editor import MEMITEditor
from util.closed_form import float64_device
from util.second_moment import stats_cache_paths


class AlphaEditEditor(MEMITEditor):
    """``Delta^T = (P (K K^T + Cp) + L2 I)^-1 P K R^T`` per layer; ``Cp`` accumulates every batch.

    ``P`` (one per layer) is built once from C0 and cached on disk next to it; it is kept on the
    weight's device in float32. ``projection_dtype`` says how P is computed and the solve's precision.
    """

    hparams_class = AlphaEditHyperParams
    accumulates_keys = True

    def __init__(self, model, tok, hparams, **options) -> None:
        super().__init__(model, tok, hparams, **options)
        self.projectors: dict[int, torch.Tensor] | None = None

    def _needs_second_moments(self) -> bool:
        return super()._needs_second_moments() or self.projectors is None

    def _use_second_moments(self, c0: dict[int, torch.Tensor]) -> None:
        """P from C0 per layer; the regulariser is Cp alone (C0 enters only through P)."""
        hp = self.hparams
        names = [hp.rewrite_module(l) for l in hp.layers]
        paths = stats_cache_paths(self.model, self.tok, names, hp.stats_spec(), self.stats_dir)
        self.projectors = {
            l: cached_projector(c0[l], hp.nullspace_threshold, paths[hp.rewrite_module(l)],
                                hp.projection_dtype).to(self.weights[l].device)
            for l in hp.layers
        }
        if self.regulariser is None:  # a resumed run brings its Cp
            self.regulariser = {l: torch.zeros_like(c0[l], device=self.weights[l].device) for l in hp.layers}

    def _solve(self, layer: int, keys: torch.Tensor, residual: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        cp = self._restricted(self.regulariser[layer], columns)
        return projected_update(residual, keys, cp, self.projectors[layer], self.hparams.L2,
                                getattr(torch, self.hparams.projection_dtype))


def projected_update(residual: torch.Tensor, keys: torch.Tensor, cp: torch.Tensor, projector: torch.Tensor,
                     l2: float, dtype: torch.dtype) -> torch.Tensor:
    """``Delta = ((P (K K^T + Cp) + L2 I)^-1 P K R^T)^T`` in ``dtype``.  residual (d, n), keys (f, n) -> (d, f)

    ``Delta^T`` lies in the range of P, so ``Delta k = 0`` for every key P annihilates. The original
    solves in float32 (on the weight's device); float64 is this harness's more precise option.
    """
    device = float64_device(residual.device) if dtype == torch.float64 else residual.device
    p = projector.to(device, dtype)  # (f, f)
    k = keys.to(device, dtype)
    r = residual.to(device, dtype)
    a = p @ (k @ k.T + cp.to(device, dtype)) + l2 * torch.eye(p.shape[0], dtype=dtype, device=device)
    return torch.linalg.solve(a, p @ k @ r.T).T
