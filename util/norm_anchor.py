"""Norm anchoring (NAS, "Norm Anchors Make Model Edits Last", arXiv 2602.02543): each solved value
vector is rescaled to a norm measured on the original model, so value norms cannot grow edit by edit.

The value vector is the MLP output at the fact token of the plain rewriting prompt: ``v* = v0 +
delta``, where ``v0`` is the MLP output there and ``delta = z - h0`` the optimised change of the
layer output ``h0``. NAS sets ``v* := v* m / |v*|``, or drops the edit (``v* := v0``, so ``z = h0``)
when ``|v*| > 2 m``; the target becomes ``z = (h0 - v0) + v*``. The anchor ``m`` is one number per
model and layer: the mean of ``|v0 + delta|`` over value optimisations of sampled CounterFact
requests on the unedited model, the largest 5 % left out.
"""
from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from util.architectures import get_module, model_device
from util.values import ValueSpec, build_batch, compute_values

SKIP_FACTOR = 2.0      # |v*| above this many anchors: the edit is dropped
TRIM_TOP = 0.05        # share of the largest sample norms left out of the anchor
SAMPLE_SEED = 0        # NAS samples its requests with random.Random(0)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NormAnchoring:
    """NAS norm anchoring as a setting of the value phase (``ValueSpec.anchoring``, set by the MEMIT
    family's hparams when ``norm_anchor`` is on): the anchor is measured once, on the unedited model,
    from the requests of a pool the experiment reads (``pool_file``) and gives the editor."""

    samples: int     # requests of the pool the anchor is measured on
    pool_file: str   # the CounterFact file the pool comes from (hparams norm_anchor_pool; named in logs)
    z_layer: str     # the layer output z targets: h0 is read there
    mlp: str         # the MLP whose output is the value vector: v0 is read there

    def measure(self, model: nn.Module, tok, pool: Sequence[dict], spec: ValueSpec) -> float:
        n = min(self.samples, len(pool))
        log.info("norm anchor: optimising the values of %d requests of %s on the unedited model", n, self.pool_file)
        anchor = anchor_norm(model, tok, pool, self.samples, spec, self.mlp)
        log.info("norm anchor of %s: %.3f (%d requests of %s)", self.mlp, anchor, n, self.pool_file)
        return anchor

    def apply(self, model: nn.Module, tok, requests: Sequence[dict], z: torch.Tensor, anchor: float,
              fact_token: str) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`anchor_outcome` of ``z`` against the model's own h0 and v0 at the plain prompts."""
        h0, v0 = plain_outputs(model, tok, requests, [self.z_layer, self.mlp], fact_token)
        anchored, dropped = anchor_outcome(z.float(), h0.to(z.device), v0.to(z.device), anchor)
        return anchored.to(z.dtype), dropped


def anchor_outcome(z: torch.Tensor, h0: torch.Tensor, v0: torch.Tensor,
                   anchor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """NAS's rule on ``z`` (n, d), given the layer output ``h0`` and MLP output ``v0`` it came from:
    the anchored targets, and which rows were dropped (bool, (n,)). A dropped row asks for no change
    at all, so the caller must count it: the run would otherwise report that edit as made."""
    v_star = v0 + (z - h0)
    norms = v_star.norm(dim=1, keepdim=True)
    rescaled = v_star * (anchor / norms.clamp_min(1e-10))
    dropped = norms > SKIP_FACTOR * anchor
    v_star = torch.where(dropped, v0, rescaled)
    return (h0 - v0) + v_star, dropped.squeeze(1)


def anchor_values(z: torch.Tensor, h0: torch.Tensor, v0: torch.Tensor, anchor: float) -> torch.Tensor:
    """NAS's rule on ``z``: :func:`anchor_outcome`'s targets alone."""
    return anchor_outcome(z, h0, v0, anchor)[0]


@torch.no_grad()
def plain_outputs(model: nn.Module, tok, requests: Sequence[dict], modules: Sequence[str],
                  fact_token: str) -> list[torch.Tensor]:
    """Each module's output (n, d) float32 at the fact token of every request's plain rewriting
    prompt (the prompt and the target but its last token), the row z's ``h0`` is read at."""
    b = build_batch(tok, requests, [["{}"]], fact_token)
    device = model_device(model)
    rows, pos = b.plain_rows, b.fact_pos[b.plain_rows]
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(_module, _inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            seen[name] = out[rows.to(out.device), pos.to(out.device)].float()
        return hook

    handles = [get_module(model, name).register_forward_hook(keep(name)) for name in modules]
    try:
        model(input_ids=b.ids.to(device), attention_mask=b.mask.to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return [seen[name] for name in modules]


def value_norms(model: nn.Module, tok, requests: Sequence[dict], spec: ValueSpec, mlp_module: str,
                batch_size: int = 16) -> list[float]:
    """``|v0 + delta|`` of each request optimised on the plain prompt alone (no context templates)."""
    result = compute_values(model, tok, requests, spec, [["{}"]], batch_size=batch_size)
    [v0] = plain_outputs(model, tok, requests, [mlp_module], spec.fact_token)
    delta = result.z.to(v0.device) - result.h0.to(v0.device)
    return (v0 + delta).norm(dim=1).tolist()


def anchor_norm(model: nn.Module, tok, pool: Sequence[dict], n: int, spec: ValueSpec, mlp_module: str) -> float:
    """The anchor: the trimmed mean of :func:`value_norms` over ``n`` requests of ``pool``."""
    chosen = random.Random(SAMPLE_SEED).sample(list(pool), min(n, len(pool)))
    return trimmed_mean(value_norms(model, tok, chosen, spec, mlp_module))


def trimmed_mean(values: Sequence[float]) -> float:
    """The mean after the largest floor(5 %) values are left out."""
    kept = sorted(values)[: len(values) - math.floor(TRIM_TOP * len(values))]
    return sum(kept) / len(kept)
