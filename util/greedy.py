"""Greedy decoding with a KV cache, batched under left padding, where a row leaves the batch as
soon as its caller has what it needs (its answer is complete, or EOS).

Generation-based evaluation reads a continuation only up to its first period or newline; the
tokens after that cost as much as the ones before and change nothing. A row that is done is
dropped from the batch and its cache, so a batch costs about its rows' answer lengths, not
``max_new_tokens`` for every row.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from util.architectures import model_device
from util.tokens import left_padded_prompts


@torch.no_grad()
def greedy_token_ids(
    model: nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    pad_id: int,
    eos_id: int | None = None,
    done: Callable[[list[int]], bool] | None = None,
) -> list[list[int]]:
    """The most likely next token, step by step, per prompt (prompt ids not included).

    A row ends before ``eos_id``, after ``max_new_tokens``, or once ``done(its new ids)`` is true;
    what it holds then is what plain greedy decoding holds at that point. No forward pass runs
    after the last token any row needs.
    """
    device = model_device(model)
    input_ids, mask, positions = left_padded_prompts(prompt_ids, pad_id, device)
    new: list[list[int]] = [[] for _ in prompt_ids]
    rows = list(range(len(prompt_ids)))  # the prompt of each row of the batch
    past = None
    for _ in range(max_new_tokens):
        if not rows:
            break
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=past,
                    use_cache=True)
        past = out.past_key_values
        next_ids = out.logits[:, -1, :].argmax(dim=-1)  # (B,)
        keep = []
        for b, (row, token) in enumerate(zip(rows, next_ids.tolist())):
            if token == eos_id:
                continue
            new[row].append(token)
            if len(new[row]) < max_new_tokens and not (done is not None and done(new[row])):
                keep.append(b)
        if len(keep) < len(rows) and keep:
            index = torch.tensor(keep, device=device)
            past.batch_select_indices(index)
            next_ids, mask, positions = next_ids[index], mask[index], positions[index]
        rows = [rows[b] for b in keep]
        input_ids = next_ids[:, None]
        mask = torch.cat([mask, torch.ones_like(input_ids)], dim=-1)
        positions = positions[:, -1:] + 1
    return new
