"""Residual-stream targets through a norm that sits between the MLP and the residual stream.

In Gemma 2/3 and OLMo 2 a block adds ``norm(v)`` to the residual stream, ``v`` being the MLP's output
projection's output, not ``v`` itself. The closed-form update of the MEMIT family writes a change
of ``v``; a change ``r`` wanted on the residual stream is therefore not a change ``r`` of ``v``.

These norms are RMS norms, ``norm(v) = g * v / sqrt(mean(v^2) + eps)`` with a per-channel gain
``g``: the output does not depend on the scale of ``v``, and every output has the same RMS after
dividing by ``g``. So a residual target ``y = norm(v) + r`` can be reached only when ``y / g`` has
RMS 1; otherwise the nearest output along its direction is taken. The new ``v`` is ``u = y / g``
rescaled to ``v``'s own RMS (the scale is free, and keeping it changes ``v`` least in size):
``v' = u * rms(v) / rms(u)``, and the update is asked for ``v' - v``. For a reachable target this
is exact (up to ``eps``); :func:`reachable_change` says what an unreachable one becomes.
"""
from __future__ import annotations

import torch
from torch import nn

GAIN_FLOOR = 1e-6  # |g| below this would divide by (almost) zero: such a channel is treated as g = floor


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
    not reachable, toward the nearest output along the target's direction. Columns are requests."""
    g = _safe(gain).to(v.device, torch.float64)[:, None]
    v64 = v.to(torch.float64)
    current = g * v64 / _rms(v64)
    u = (current + residual.to(torch.float64)) / g
    target = u * (_rms(v64) / _rms(u).clamp_min(1e-30))
    return (target - v64).to(residual.dtype)


def reachable_change(v: torch.Tensor, residual: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """What :func:`through_post_norm`'s change does to ``norm(v)`` (eps neglected): ``residual``
    itself when it is reachable."""
    g = _safe(gain).to(v.device, torch.float64)[:, None]
    v64 = v.to(torch.float64)
    new = v64 + through_post_norm(v64, residual.to(torch.float64), gain)
    return (g * new / _rms(new) - g * v64 / _rms(v64)).to(residual.dtype)


def _safe(gain: torch.Tensor) -> torch.Tensor:
    sign = torch.where(gain < 0, -1.0, 1.0).to(gain.dtype)
    return sign * gain.abs().clamp_min(GAIN_FLOOR)
