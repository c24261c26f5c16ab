"""MEMIT_rect (RECT): MEMIT keeping only the entries of each update with the largest relative change."""
from __future__ import annotations

import torch

from memit.editor import MEMITEditor
from memit.hparams import MEMITRectHyperParams


def rectify(delta: torch.Tensor, weight: torch.Tensor, top_percent: float) -> torch.Tensor:
    """``delta`` with all but the ``top_percent`` % entries of largest ``|delta| / (|W| + 1e-8)`` zeroed.

    Exactly ``round(top_percent / 100 * numel)`` entries are kept (the original's
    ``delta >= kthvalue`` keeps one more).
    """
    relative = delta.abs() / (weight.abs().to(delta) + 1e-8)
    keep = max(1, round(top_percent / 100 * delta.numel())) if top_percent > 0 else 0
    keep = min(keep, delta.numel())
    mask = torch.zeros(delta.numel(), dtype=torch.bool, device=delta.device)
    mask[relative.flatten().topk(keep).indices] = True
    return delta * mask.view_as(delta)


class MEMITRectEditor(MEMITEditor):
    """Each layer applies only its rectified update; later layers see what was actually applied
    (the original computes all layers unrectified, then rectifies each)."""

    hparams_class = MEMITRectHyperParams

    def _apply(self, layer: int, columns: torch.Tensor, delta: torch.Tensor) -> None:
        current = self.weights[layer][:, columns.to(self.weights[layer].device)]
        super()._apply(layer, columns, rectify(delta, current, self.hparams.rect_top_percent))

