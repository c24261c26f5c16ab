"""ROME's rank-one update: write ``v*`` at key ``k*`` while disturbing other keys least (under C0)."""
from __future__ import annotations

import torch

from util.closed_form import float64_device


def key_direction(k_star: torch.Tensor, cov: torch.Tensor | None) -> torch.Tensor:
    """``u = C0^-1 k*`` (a solve, float64), or ``k*`` itself without statistics.  (f,)"""
    if cov is None:
        return k_star.to(torch.float64)
    device = float64_device(cov.device)
    return torch.linalg.solve(cov.to(device, torch.float64), k_star.to(device, torch.float64))


def rank_one_update(current_out: torch.Tensor, v_star: torch.Tensor, k_star: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``Delta = (v* - W k*) u^T / (u^T k*)``, so that ``(W + Delta) k* = v*``.  (d, f) float64

    current_out: the module's output at ``k*`` (``W k*``, plus its bias if any), (d,).
    """
    device = u.device
    k = k_star.to(device, torch.float64)
    denominator = u @ k
    if denominator.abs() < 1e-12:
        raise ValueError("u^T k* is ~0: C0 makes the key direction orthogonal to k*; check the statistics")
    residual = v_star.to(device, torch.float64) - current_out.to(device, torch.float64)
    return torch.outer(residual, u) / denominator
