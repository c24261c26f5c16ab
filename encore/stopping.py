"""MPES, ENCORE's most-probable early stopping of the value optimisation, as data of the value spec.

Each step's forward pass is checked before its update: the request's target tokens read in its
context-prefixed prompts (the plain "{}" prompt is left out, as the original leaves prompt 0 out)
are compared with the most probable token at their positions. A step where the rule holds adds one
to the request's count, never reset; at ``count`` the request stops (the original's
``prob_cutoff = -count``). The original's loss threshold still stops a request too.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from util.values import DEFAULT_STOP, StepState

MPES_RULES = ("all_context_tokens", "five_hits")


@dataclass(frozen=True)
class MostProbableStop:
    count: int = 2
    # "all_context_tokens": every target token of every context prompt is the most probable (the
    # paper's rule). "five_hits": exactly 5 such hits, the original code's test (the same for one-token
    # targets with its 5 context prompts; a longer target then fires only at exactly 5 hits).
    rule: str = "all_context_tokens"

    def start(self, n: int):
        """The rule for one optimisation of ``n`` requests, with its own counts."""
        counts = torch.zeros(n, dtype=torch.long)

        def stop(state: StepState) -> torch.Tensor:
            held = self.held(state).cpu()
            counts.add_(held.long())
            return (counts >= self.count).to(state.loss.device) | DEFAULT_STOP(state)
        return stop

    def held(self, state: StepState) -> torch.Tensor:
        """(n,) whether this step's forward pass meets the rule, per request."""
        n = state.loss.shape[0]
        ctx = state.target_in_context
        req = state.target_request[ctx]
        hits = torch.zeros(n, dtype=torch.long, device=req.device).index_add(0, req, state.target_is_argmax[ctx].long())
        if self.rule == "five_hits":
            return hits == 5
        total = torch.zeros(n, dtype=torch.long, device=req.device).index_add(0, req, torch.ones_like(req))
        return (hits == total) & (total > 0)

    def __call__(self, state: StepState) -> torch.Tensor:  # one step alone: no count across steps
        return self.start(state.loss.shape[0])(state)
