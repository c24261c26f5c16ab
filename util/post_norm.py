"""Residual-stream targets through a norm that sits between the MLP and the residual stream.

In Gemma 2/3 and OLMo 2 a block adds ``norm(v)`` to the residual stream, ``v`` being the MLP's output
projection's output, not ``v`` itself. The closed-form update of the MEMIT family writes a change
of ``v``; a change ``r`` wanted on the residual stream is therefore not a change ``r`` of ``v``.

These norms are RMS norms, ``norm(v) = g * v / sqrt(mean(v^2) + eps)`` with a per-channel gain
``g``: the output does not depend on the scale of ``v``, and every output is ``g * x`` for an ``x``
of RMS 1. So a residual target ``y = norm(v) + r`` can be reached only when ``y / g`` has RMS 1;
otherwise the nearest output the norm can give is taken: ``x`` minimising ``|g * x - y|`` under
``mean(x^2) = 1``, which is ``x = g y / (g^2 + mu)`` with the one ``mu > -min(g^2)`` that gives RMS 1
(found by bisection). A reachable target gives ``mu = 0``, ``x = y / g``: exact. The new ``v`` is
``x`` at ``v``'s own RMS (the scale is free, and keeping it changes ``v`` least in size), and the update
is asked for ``v' - v``. Real gains are far from uniform (Gemma 3 270M: 0 to 789 in one layer), so a
target off the norm's image must be projected this way: dividing it by ``g`` and rescaling would blow
up the channels whose gain is near 0.
"""
from __future__ import annotations

import torch
from torch import nn


def norm_eps(norm: nn.Module) -> float:
    """The epsilon an RMS norm adds under the square root (transformers names it either way)."""
    for name in ("eps", "variance_epsilon", "epsilon"):
        value = getattr(norm, name, None)
        if isinstance(value, float):
            return value
    return 1e-6


@torch.no_grad()
def rms_gain(norm: nn.Module, width: int, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The per-channel gain ``g`` of an RMS norm, read from its output (so Gemma's ``1 + w`` and
    OLMo's ``w`` parametrisations need no code of their own), after checking the module is one:
    scale-free, and ``g * x / rms(x)`` on a random input. (width,) float64."""
    weight_dtype = next((p.dtype for p in norm.parameters()), dtype)
    ones = torch.ones(1, width, device=device, dtype=weight_dtype)
    gain = norm(ones).double()[0] * (1.0 + norm_eps(norm)) ** 0.5
    x = torch.randn(3, width, device=device, generator=torch.Generator(device=device).manual_seed(0)).to(weight_dtype)
    expected = gain * _unit_rms(x.double(), norm_eps(norm))
    got = norm(x).double()
    scale_free = norm(7.0 * x).double()
    tolerance = 1e-4 if weight_dtype == torch.float32 else 3e-2
    if not (torch.allclose(got, expected, rtol=tolerance, atol=tolerance)
            and torch.allclose(scale_free, got, rtol=tolerance, atol=tolerance)):
        raise ValueError(f"{type(norm).__name__} after the MLP is not an RMS norm (g * x / rms(x)); editing "
                         "through it is not supported")
    return gain


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean(dim=0, keepdim=True).sqrt()


def _unit_rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps)`` along the last dimension (rows are vectors)."""
    return x / (x.pow(2).mean(dim=-1, keepdim=True) + eps).sqrt()


def through_post_norm(v: torch.Tensor, residual: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """The change of ``v`` (d, n) that moves ``norm(v)`` by ``residual`` (d, n), or, where that is
    not reachable, to the norm's nearest output to the target. Columns are requests."""
    g = gain.to(v.device, torch.float64)[:, None]
    v64 = v.to(torch.float64)
    target = g * v64 / _rms(v64) + residual.to(v64.device, torch.float64)
    return (nearest_unit_rms(target, g) * _rms(v64) - v64).to(residual.dtype)


def nearest_unit_rms(target: torch.Tensor, g: torch.Tensor, steps: int = 200) -> torch.Tensor:
    """Per column of ``target`` (d, n), the ``x`` of RMS 1 whose ``g * x`` (g: (d, 1)) is nearest to it."""
    gy, g2 = g * target, g * g
    lo = torch.full_like(target[0], float(-g2.min()))
    hi = torch.maximum(gy.pow(2).mean(0).sqrt(), lo) + 1e-12  # mean((gy / (g2 + mu))^2) <= 1 from here on
    for _ in range(steps):  # mean((gy / (g2 + mu))^2) falls as mu grows: bisect for where it is 1
        mid = (lo + hi) / 2
        above = (gy / (g2 + mid)).pow(2).mean(0) > 1
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    x = gy / (g2 + hi)
    # The hard case: the target has nothing on the channels of the smallest gain (a gain of 0 hides
    # them), so mu stops at -min(g^2) short of RMS 1; the missing part goes on those channels, which
    # change g * x least (not at all where the gain is 0).
    smallest = (g2 == g2.min()).squeeze(1)
    deficit = x.shape[0] - x.pow(2).sum(0)
    fill = (deficit.clamp_min(0) / smallest.sum()).sqrt()
    x[smallest] = torch.where(deficit > 1e-9 * x.shape[0], fill, x[smallest])
    return x / _rms(x).clamp_min(1e-300)  # exact RMS 1


def reachable_change(v: torch.Tensor, residual: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """What :func:`through_post_norm`'s change does to ``norm(v)`` (eps neglected): ``residual``
    itself when it is reachable."""
    g = gain.to(v.device, torch.float64)[:, None]
    v64 = v.to(torch.float64)
    new = v64 + through_post_norm(v64, residual.to(torch.float64), gain)
    return (g * new / _rms(new) - g * v64 / _rms(v64)).to(residual.dtype)
