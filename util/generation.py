"""Seeded top-k sampling with a KV cache, batched under left padding."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from util.architectures import model_device
from util.tokens import encode, pad, pad_token_id


@torch.no_grad()
def sample_continuations(
    model: nn.Module,
    tok,
    prompts: Sequence[str],
    max_new_tokens: int,
    top_k: int = 5,
    seed: int = 0,
) -> list[str]:
    """Prompt + sampled continuation for each prompt, deterministic for a given seed."""
    device = model_device(model)
    prompt_ids = [encode(tok, p) for p in prompts]
    ids, mask = pad(prompt_ids, pad_token_id(tok), side="left")
    ids, mask = ids.to(device), mask.to(device)
    # Left padding: positions must count real tokens only, or absolute-position models shift.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    generator = torch.Generator(device=device).manual_seed(seed)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    new_tokens = []
    for _ in range(max_new_tokens):
        top_logits, top_ids = out.logits[:, -1].float().topk(top_k, dim=-1)
        choice = torch.multinomial(top_logits.softmax(-1), 1, generator=generator)
        next_ids = top_ids.gather(1, choice)  # (B, 1)
        new_tokens.append(next_ids)
        mask = torch.cat([mask, torch.ones_like(next_ids)], dim=1)
        positions = positions[:, -1:] + 1
        out = model(
            input_ids=next_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=out.past_key_values,
            use_cache=True,
        )
    generated = torch.cat(new_tokens, dim=1).tolist() if new_tokens else [[] for _ in prompts]
    # Decode prompt and continuation together so SentencePiece keeps word boundaries.
    return [tok.decode(p + g, skip_special_tokens=True) for p, g in zip(prompt_ids, generated)]
