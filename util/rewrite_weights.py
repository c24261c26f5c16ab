"""The rewrite module's weight seen as ``d x f`` (value dim x key dim), whatever its storage.

``nn.Linear`` stores ``(out=d, in=f)``; GPT-2's ``Conv1D`` stores ``(in=f, out=d)``. The
orientation comes from the module's type, and the shape is checked against what it maps.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


def weight_d_by_f(module: nn.Module) -> torch.Tensor:
    """A view of the weight in ``(d, f)`` orientation; writing to it writes the module."""
    if isinstance(module, nn.Linear):
        return module.weight  # (d, f)
    if isinstance(module, Conv1D):
        return module.weight.T  # stored (f, d)
    raise TypeError(
        f"cannot edit a {type(module).__name__}: the rewrite module must be nn.Linear or Conv1D "
        "(check rewrite_module_tmp in the hparams)"
    )


@torch.no_grad()
def add_to_columns(module: nn.Module, columns: torch.Tensor, delta: torch.Tensor) -> None:
    """``W[:, columns] += delta`` in ``(d, f)`` orientation; delta is ``(d, |columns|)``."""
    w = weight_d_by_f(module)
    assert delta.shape == (w.shape[0], columns.numel()), (delta.shape, w.shape, columns.numel())
    cols = columns.to(w.device)
    w[:, cols] = w[:, cols] + delta.to(device=w.device, dtype=w.dtype)
