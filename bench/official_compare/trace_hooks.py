"""Per-step observation of a value optimisation (ROME's v*), shared by trace_ours.py and trace_official.py.

Observation only, installed from the driver (no edited file on either side):

- torch's global optimizer step hooks record, for every Adam step t, delta before the step, delta.grad
  and delta after the step (before the clamp; delta after the clamp is the next step's "before", and
  the final delta);
- torch.Tensor.backward is wrapped: at the first backward (t = 0, delta = 0) it reads the caller's
  local loss terms (frame locals, by name) and takes each term's gradient w.r.t. delta separately with
  torch.autograd.grad(retain_graph=True) before the real backward runs (which is unchanged);
- the loss terms of every evaluation are recorded by the side's own driver (see there).

Optionally ``perturb`` (a relative size) adds Gaussian noise of that relative norm to delta.grad at
step 0 only, to measure how much Adam amplifies a tiny gradient difference (used only on our side,
as a sensitivity probe; the plain traces run without it).

Optionally ``force`` (a list of delta vectors, one per step: another run's "delta_after_step") sets delta
to that value right after each Adam step, so every later gradient is taken at exactly the other run's
delta (the clamp never binds in case 13, so "after step" is also "after clamp"): a same-input check of
the gradient computation, free of trajectory drift.
"""
from __future__ import annotations

import inspect

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook


def _vec(t: torch.Tensor) -> list[float]:
    return t.detach().double().flatten().tolist()


class Tracer:
    def __init__(self, delta_name: str, term_names: dict[str, str], h0_name: str, perturb: float = 0.0,
                 seed: int = 0, force: list[list[float]] | None = None,
                 every_step: bool = False) -> None:
        self.delta_name, self.term_names, self.h0_name = delta_name, term_names, h0_name
        self.perturb, self.seed, self.force = perturb, seed, force
        self.every_step = every_step  # per-term gradients at every step, not only at step 0
        self._pending: dict | None = None
        self.steps: list[dict] = []
        self.evals: list[dict] = []
        self.step0_term_grads: dict[str, list[float]] | None = None
        self.h0: list[float] | None = None
        self.delta: torch.Tensor | None = None
        self.enabled = True

    def install(self) -> None:
        register_optimizer_step_pre_hook(self._pre)
        register_optimizer_step_post_hook(self._post)
        real_backward = torch.Tensor.backward
        tracer = self

        def backward(tensor, *args, **kwargs):
            if tracer.enabled and (tracer.step0_term_grads is None or tracer.every_step):
                tracer._term_grads(inspect.currentframe().f_back.f_locals)
            return real_backward(tensor, *args, **kwargs)

        torch.Tensor.backward = backward

    def _term_grads(self, loc: dict) -> None:
        delta = loc[self.delta_name]
        self.delta = delta
        self.h0 = _vec(loc[self.h0_name])
        grads = {}
        for term, var in self.term_names.items():
            t = loc[var]
            g = None
            if t.requires_grad:
                (g,) = torch.autograd.grad(t.sum(), delta, retain_graph=True, allow_unused=True)
            grads[term] = _vec(torch.zeros_like(delta) if g is None else g)
        if self.step0_term_grads is None:
            self.step0_term_grads = grads
        self._pending = grads

    def _pre(self, opt, args, kwargs) -> None:
        if not self.enabled:
            return
        p = opt.param_groups[0]["params"][0]
        if self.perturb and not self.steps:
            gen = torch.Generator().manual_seed(self.seed)
            noise = torch.randn(p.grad.shape, generator=gen, dtype=p.grad.dtype)
            p.grad.add_(noise * (self.perturb * p.grad.norm() / noise.norm()))
        self.steps.append({"t": len(self.steps), "delta_before": _vec(p), "grad": _vec(p.grad)})
        if self.every_step and self._pending is not None:
            self.steps[-1]["term_grads"], self._pending = self._pending, None

    def _post(self, opt, args, kwargs) -> None:
        if not self.enabled:
            return
        p = opt.param_groups[0]["params"][0]
        self.steps[-1]["delta_after_step"] = _vec(p)
        if self.force is not None and len(self.steps) <= len(self.force):
            with torch.no_grad():
                p.copy_(torch.tensor(self.force[len(self.steps) - 1], dtype=torch.float64).view_as(p).to(p.dtype))

    def result(self) -> dict:
        return {"steps": self.steps, "evals": self.evals, "step0_term_grads": self.step0_term_grads, "h0": self.h0,
                "delta_final": _vec(self.delta) if self.delta is not None else None, "perturb": self.perturb}
