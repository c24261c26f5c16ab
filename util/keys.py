"""Keys: inputs of the rewrite modules at the fact token, averaged over context templates."""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

from util.context_templates import apply_template
from util.fact_reads import FactReader


class KeyReader:
    """Keys ``(n_requests, f)`` per module, and optionally the output of one module at the fact
    token of each plain prompt ``(n_requests, d)``, of fixed requests under changing weights.

    Keys are a two-stage mean: over the templates of each group, then over the group means,
    so the single plain template weighs as much as all generated ones together (the MEMIT
    family). ``two_stage=False``: one mean over all templates (ROME's k*). ``layers_path`` and
    ``resumable`` let a read start at the first layer changed since the previous one
    (:class:`util.fact_reads.FactReader`).
    """

    def __init__(self, model: nn.Module, tok, requests: Sequence[dict], templates: list[list[str]], fact_token: str,
                 batch_size: int = 64, two_stage: bool = True, layers_path: str | None = None,
                 resumable: Iterable[int] = ()) -> None:
        if templates[0] != ["{}"]:
            raise ValueError(f"the first template group must be ['{{}}'] (the plain prompt), got {templates[0]!r}")
        self.n, self.templates, self.two_stage = len(requests), templates, two_stage
        prompts, subjects = [], []
        for group in templates:
            for template in group:
                for r in requests:
                    prompts.append(apply_template(template, r["prompt"]))
                    subjects.append(r["subject"])
        self.reader = FactReader(model, tok, prompts, subjects, fact_token, batch_size, layers_path, resumable)

    def read(self, key_modules: Sequence[str], output_module: str | None = None, stop_after: str | None = None,
             start_at: int | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        outputs = [output_module] if output_module else []
        ins, outs = self.reader.read(key_modules, outputs, stop_after, start_at)
        keys = {name: self._mean(ins[name]) for name in key_modules}
        plain_out = outs[output_module][: self.n].float() if output_module else None  # group 0 = "{}"
        return keys, plain_out

    def _mean(self, inputs: torch.Tensor) -> torch.Tensor:
        per_template = inputs.view(-1, self.n, inputs.shape[-1])  # (n_templates, n, f)
        if not self.two_stage:
            return per_template.float().mean(0)
        group_means, start = [], 0
        for group in self.templates:
            group_means.append(per_template[start : start + len(group)].float().mean(0))
            start += len(group)
        return torch.stack(group_means).mean(0)  # (n, f), float32


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
    """One read of :class:`KeyReader`."""
    reader = KeyReader(model, tok, requests, templates, fact_token, batch_size, two_stage)
    return reader.read(key_modules, output_module, stop_after)
