"""NSE's neuron selection: the most active key dimensions, by cumulative activation magnitude."""
from __future__ import annotations

import torch


def select_neurons(keys: torch.Tensor, threshold: float) -> torch.Tensor:
    """Sorted indices of the smallest set of neurons whose summed |activation| reaches
    ``threshold`` of the total. ``keys``: ``(f, n)``, one column per request.

    Differs from the original code on purpose: it kept the largest prefix whose cumulative sum
    stays <= the threshold (one neuron too few) and crashed when the top neuron alone passed it.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"neuron threshold must be in (0, 1], got {threshold}")
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
