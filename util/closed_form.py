"""The covariance-regularised least-squares update on a subset of key dimensions."""
from __future__ import annotations

import torch


def solve_update(residual: torch.Tensor, keys: torch.Tensor, regulariser: torch.Tensor) -> torch.Tensor:
    """``Delta = R K^T (C + K K^T)^-1`` in float64, by a solve (no explicit inverse).

    residual: ``(d, n)`` target minus current values; keys: ``(s, n)`` selected key rows;
    regulariser ``C``: ``(s, s)`` (lambda * C0 + Cp restricted to the selection).
    Returns ``(d, s)``: the minimiser of ``||Delta K - R||^2 + tr(Delta C Delta^T)``.
    """
    d, n = residual.shape
    s = keys.shape[0]
    if keys.shape != (s, n):
        raise ValueError(f"keys {tuple(keys.shape)} do not match residual {tuple(residual.shape)}: need ({s}, {n})")
    if regulariser.shape != (s, s):
        raise ValueError(f"regulariser {tuple(regulariser.shape)} does not match {s} selected key dimensions")
    device = float64_device(residual.device)
    r = residual.to(device, torch.float64)
    k = keys.to(device, torch.float64)
    a = regulariser.to(device, torch.float64) + k @ k.T  # (s, s), symmetric
    # Delta^T = A^-1 K R^T since A is symmetric.
    return torch.linalg.solve(a, k @ r.T).T


def float64_device(device: torch.device) -> torch.device:
    """Apple's MPS has no float64: solve there on the CPU."""
    return torch.device("cpu") if device.type == "mps" else device
