"""Keys: inputs of the rewrite modules at the fact token, averaged over context templates."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from util.context_templates import apply_template
from util.fact_reads import read_at_fact_tokens


def compute_keys_and_outputs(
    model: nn.Module,
    tok,
    requests: Sequence[dict],
    templates: list[list[str]],
    key_modules: Sequence[str],
    fact_token: str,
    output_module: str | None = None,
    stop_after: str | None = None,
    batch_size: int = 64,
    two_stage: bool = True,
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Keys ``(n_requests, f)`` per module, and optionally the output of ``output_module`` at
    the fact token of each plain prompt ``(n_requests, d)``, from the same forward passes.

    Keys are a two-stage mean: over the templates of each group, then over the group means,
    so the single plain template weighs as much as all generated ones together (the MEMIT
    family). ``two_stage=False``: one mean over all templates (ROME's k*).
    """
    if templates[0] != ["{}"]:
        raise ValueError(f"the first template group must be ['{{}}'] (the plain prompt), got {templates[0]!r}")
    n = len(requests)
    prompts, subjects = [], []
    for group in templates:
        for template in group:
            for r in requests:
                prompts.append(apply_template(template, r["prompt"]))
                subjects.append(r["subject"])
    outputs = [output_module] if output_module else []
    ins, outs = read_at_fact_tokens(
        model, tok, prompts, subjects, fact_token, key_modules, outputs, stop_after, batch_size
    )
    keys = {}
    for name in key_modules:
        per_template = ins[name].view(-1, n, ins[name].shape[-1])  # (n_templates, n, f)
        if not two_stage:
            keys[name] = per_template.float().mean(0)
            continue
        group_means, start = [], 0
        for group in templates:
            group_means.append(per_template[start : start + len(group)].float().mean(0))
            start += len(group)
        keys[name] = torch.stack(group_means).mean(0)  # (n, f), float32
    plain_out = outs[output_module][:n].float() if output_module else None  # group 0 = "{}"
    return keys, plain_out
