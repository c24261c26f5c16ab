"""Read module inputs/outputs at the fact token of many (prompt, subject) pairs, in batches."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from util.architectures import model_device
from util.hooks import capture, forward_until
from util.requests import fill_prompt
from util.tokens import encode, fact_token_index, pad, pad_token_id, padded_positions


@torch.no_grad()
def read_at_fact_tokens(
    model: nn.Module,
    tok,
    prompts: Sequence[str],
    subjects: Sequence[str],
    fact_token: str,
    input_of: Sequence[str] = (),
    output_of: Sequence[str] = (),
    stop_after: str | None = None,
    batch_size: int = 64,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(inputs, outputs): per module name a ``(len(prompts), dim)`` tensor at each fact token."""
    ins: dict[str, list[torch.Tensor]] = {n: [] for n in input_of}
    outs: dict[str, list[torch.Tensor]] = {n: [] for n in output_of}
    device = model_device(model)
    for start in range(0, len(prompts), batch_size):
        chunk = range(start, min(start + batch_size, len(prompts)))
        seqs = [encode(tok, fill_prompt(prompts[i], subjects[i])) for i in chunk]
        index = [fact_token_index(tok, prompts[i], subjects[i], fact_token) for i in chunk]
        ids, mask = pad(seqs, pad_token_id(tok))
        rows, cols = torch.arange(len(seqs)), padded_positions(index, mask)
        with capture(model, input_of=input_of, output_of=output_of) as seen:
            forward_until(model, stop_after, input_ids=ids.to(device), attention_mask=mask.to(device))
        for name in input_of:  # each module's tensors stay on its device (models split by a device map)
            ins[name].append(_at(seen.inputs[name], rows, cols))
        for name in output_of:
            outs[name].append(_at(seen.outputs[name], rows, cols))
    return {n: torch.cat(v) for n, v in ins.items()}, {n: torch.cat(v) for n, v in outs.items()}


def _at(hidden: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``hidden[rows, cols]`` on the hidden state's own device."""
    return hidden[rows.to(hidden.device), cols.to(hidden.device)]
