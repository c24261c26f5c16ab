"""The closed-form update equals a direct least-squares solution on small matrices."""
import pytest
import torch

from util.closed_form import solve_update


def _problem(d=6, s=5, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    residual = torch.randn(d, n, generator=g, dtype=torch.float64)
    keys = torch.randn(s, n, generator=g, dtype=torch.float64)
    a = torch.randn(s, s, generator=g, dtype=torch.float64)
    reg = a @ a.T + 0.1 * torch.eye(s, dtype=torch.float64)  # symmetric positive definite
    return residual, keys, reg


def test_matches_stacked_least_squares():
    residual, keys, reg = _problem()
    # min ||D K - R||^2 + tr(D C D^T) = min ||D [K, L] - [R, 0]||^2 with C = L L^T.
    chol = torch.linalg.cholesky(reg)
    design = torch.cat([keys, chol], dim=1).T  # (n + s, s)
    rhs = torch.cat([residual, torch.zeros(residual.shape[0], keys.shape[0], dtype=torch.float64)], dim=1).T
    direct = torch.linalg.lstsq(design, rhs).solution.T  # (d, s)
    assert torch.allclose(solve_update(residual, keys, reg), direct, atol=1e-10)


def test_gradient_of_objective_vanishes():
    residual, keys, reg = _problem(seed=1)
    delta = solve_update(residual, keys, reg).requires_grad_(True)
    objective = ((delta @ keys - residual) ** 2).sum() + torch.trace(delta @ reg @ delta.T)
    objective.backward()
    assert delta.grad.abs().max() < 1e-9


def test_inputs_in_low_precision_are_solved_in_float64():
    residual, keys, reg = _problem(seed=2)
    out = solve_update(residual.float(), keys.to(torch.bfloat16), reg.float())
    assert out.dtype == torch.float64
    assert torch.allclose(out, solve_update(residual, keys.to(torch.bfloat16).double(), reg), atol=1e-4)


def test_shape_mismatch_is_reported():
    residual, keys, reg = _problem()
    with pytest.raises(ValueError, match=r"keys \(5, 2\) do not match residual"):
        solve_update(residual, keys[:, :2], reg)
    with pytest.raises(ValueError, match="regulariser"):
        solve_update(residual, keys, reg[:4, :4])
