"""AlphaEdit's null-space projector ``P = U U^T`` over the eigenvectors of C0 with small eigenvalues."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from util.atomic_files import save_torch_atomic

log = logging.getLogger(__name__)


def null_space_projector(cov: torch.Tensor, threshold: float, dtype: str) -> torch.Tensor:
    """``(f, f)`` float32 projector onto the span of C0's singular vectors with singular value < threshold.

    ``dtype="float32"``: the original's computation, an SVD of float32 C0 on the CPU.
    ``"float64"``: C0 is symmetric positive semi-definite, so its eigen-decomposition in float64
    gives the same subspace with eigenvalues near the threshold resolved more reliably.
    """
    if dtype == "float32":
        vectors, values, _ = torch.linalg.svd(cov.detach().to(torch.float32).cpu(), full_matrices=False)
    elif dtype == "float64":
        values, vectors = torch.linalg.eigh(cov.detach().to(torch.float64).cpu())
    else:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    small = vectors[:, values < threshold]  # (f, r)
    return (small @ small.T).to(torch.float32)


def cached_projector(cov: torch.Tensor, threshold: float, c0_path: Path | None, dtype: str) -> torch.Tensor:
    """The projector from the file next to C0's cache file when present; computed and saved otherwise.
    Returned on C0's device."""
    # float64 projectors keep the name they had before the float32 (original) computation existed.
    suffix = "" if dtype == "float64" else f"_{dtype}svd"
    path = c0_path.with_name(f"{c0_path.stem}_nullspace{threshold:g}{suffix}.pt") if c0_path is not None else None
    if path is not None and path.is_file():
        try:
            saved = torch.load(path, weights_only=True, map_location="cpu")
            if saved.shape == cov.shape:
                return saved.to(cov.device)
            log.warning("projector file %s is %s, C0 is %s; recomputing it", path, tuple(saved.shape), tuple(cov.shape))
        except Exception as err:  # truncated or foreign file: recompute and overwrite, never fail forever
            log.warning("projector file %s is unreadable (%s: %s); recomputing it", path, type(err).__name__, err)
    projector = null_space_projector(cov, threshold, dtype)
    if path is not None:
        save_torch_atomic(projector, path)
    return projector.to(cov.device)
