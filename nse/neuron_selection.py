"""NSE's neuron selection: the most active key dimensions, by cumulative activation magnitude."""
from __future__ import annotations

import torch


def select_neurons(keys: torch.Tensor, threshold: float, rule: str = "reaching") -> torch.Tensor:
    """Sorted indices of the neurons to update. ``keys``: ``(f, n)``, one column per request.

    ``rule="reaching"`` (default): the smallest set whose summed |activation| reaches ``threshold``
    of the total. ``rule="original"``: the official code's set, the largest prefix whose
    cumulative sum stays <= that (one neuron fewer), computed as it does, in float32; where the
    top neuron alone passes the threshold (the official code crashes) it keeps that one neuron.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"neuron threshold must be in (0, 1], got {threshold}")
    if rule == "original":
        return _original_rule(keys, threshold)
    if rule != "reaching":
        raise ValueError(f"unknown neuron selection rule {rule!r}; use 'reaching' or 'original'")
    f = keys.shape[0]
    if threshold >= 1.0:
        # Every neuron, exactly: a cumulative sum can fall short of the total by round-off.
        return torch.arange(f, device=keys.device)
    scores = keys.detach().to(torch.float64).abs().sum(dim=1)  # (f,)
    order = torch.argsort(scores, descending=True)
    cumulative = torch.cumsum(scores[order], dim=0)
    total = cumulative[-1]
    if total <= 0:
        return torch.arange(f, device=keys.device)  # no activation at all: nothing to prefer
    needed = threshold * total
    count = int(torch.searchsorted(cumulative, needed.unsqueeze(0)).item()) + 1
    return torch.sort(order[: min(count, f)]).values


def _original_rule(keys: torch.Tensor, threshold: float) -> torch.Tensor:
    k = keys.detach().float()
    scores = torch.zeros_like(k[:, 0])
    for j in range(k.shape[1]):  # summed column by column, as the official code does (same round-off)
        scores += k[:, j].abs()
    sorted_scores, order = torch.sort(scores, descending=True)
    within = torch.cumsum(sorted_scores, dim=0) <= threshold * scores.sum()
    count = max(int(within.sum()), 1)
    return torch.sort(order[:count]).values
