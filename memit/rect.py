"""MEMIT_rect (RECT): MEMIT keeping only the entries of each update with the largest relative change."""
from __future__ import annotations

import torch

from memit.editor import MEMITEditor
from memit.hparams import MEMITRectHyperParams


def rectify(delta: torch.Tensor, weight: torch.Tensor, top_percent: float, rule: str = "original") -> torch.Tensor:
    """``delta`` with the entries of small relative change zeroed.

    ``rule="original"``: relative change ``|delta / (W + 1e-8)|``; the threshold is its k-th smallest
    value, k = int(numel (100 - top_percent) / 100), and every entry at or above it is kept (so one
    entry more than the share, and ties). ``rule="exact_share"``: exactly round(top_percent / 100 numel)
    entries, by ``|delta| / (|W| + 1e-8)``.
    """
    if rule == "original":
        relative = (delta / (weight.to(delta) + 1e-8)).abs()
        k = int(delta.numel() * (100 - top_percent) / 100)
        if k < 1:
            return delta.clone()  # the whole update: no k-th smallest to cut at
        threshold = relative.flatten().kthvalue(k).values
        return delta * (relative >= threshold)
    relative = delta.abs() / (weight.abs().to(delta) + 1e-8)
    keep = min(max(1, round(top_percent / 100 * delta.numel())), delta.numel())
    mask = torch.zeros(delta.numel(), dtype=torch.bool, device=delta.device)
    mask[relative.flatten().topk(keep).indices] = True
    return delta * mask.view_as(delta)


class MEMITRectEditor(MEMITEditor):
    """MEMIT whose updates are rectified: by default after all layers are computed, as the original."""

    hparams_class = MEMITRectHyperParams

    def _update_layers(self, requests: list[dict], z: torch.Tensor) -> dict[int, int]:
        if self.hparams.rect_timing == "per_layer":
            return super()._update_layers(requests, z)
        # The original computes every layer as plain MEMIT (later layers see the unrectified updates
        # of earlier ones), then writes W_before + rectified(delta) per layer.
        self._computed: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        changed = super()._update_layers(requests, z)
        computed, self._computed = self._computed, []
        with torch.no_grad():
            for layer, columns, delta, before in reversed(computed):
                self.weights[layer][:, columns.to(self.weights[layer].device)] = before
            for layer, columns, delta, before in computed:
                MEMITEditor._apply(self, layer, columns, self._rectified(delta, before))
        return changed

    def _apply(self, layer: int, columns: torch.Tensor, delta: torch.Tensor) -> None:
        before = self.weights[layer][:, columns.to(self.weights[layer].device)].detach().clone()
        if self.hparams.rect_timing == "per_layer":
            super()._apply(layer, columns, self._rectified(delta, before))
            return
        self._computed.append((layer, columns, delta, before))
        super()._apply(layer, columns, delta)

    def _rectified(self, delta: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return rectify(delta, weight, self.hparams.rect_top_percent, self.hparams.rect_rule)
