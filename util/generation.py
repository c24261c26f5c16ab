"""Seeded top-k sampling with a KV cache, batched under left padding.

One sampler serves the context templates of the editor and the Fluency/Consistency generations
of the evaluation. Every row draws from the same generator at every step (a finished row's draw
is thrown away), so a row's text depends only on the seed, the prompts and the model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from util.architectures import model_device
from util.tokens import encode, left_padded_prompts, pad_token_id


def _sample_top_k(logits: torch.Tensor, top_k: int, generator: torch.Generator) -> torch.Tensor:
    """One token per row from the renormalised ``top_k`` most likely tokens.  (B, V) -> (B,)"""
    values, indices = logits.float().topk(min(top_k, logits.shape[-1]), dim=-1)  # (B, k)
    choice = torch.multinomial(values.softmax(dim=-1), 1, generator=generator)  # (B, 1)
    return indices.gather(-1, choice).squeeze(-1)


@dataclass(frozen=True)
class SampleGroup:
    """Rows ``start .. stop - 1`` of a batch, drawn from their own generator for ``steps`` tokens."""

    start: int
    stop: int
    seed: int
    steps: int


@torch.no_grad()
def sample_token_ids(
    model: nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    top_k: int,
    seed: int,
    pad_id: int,
    eos_id: int | None = None,
) -> list[list[int]]:
    """New token ids per prompt (prompt ids not included); a row ends before ``eos_id`` if given.

    No forward pass runs after the last token is drawn, and none once every row has ended.
    """
    group = SampleGroup(0, len(prompt_ids), seed, max_new_tokens)
    return sample_token_ids_grouped(model, prompt_ids, [group], top_k, pad_id, eos_id)


@torch.no_grad()
def sample_token_ids_grouped(
    model: nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    groups: Sequence[SampleGroup],
    top_k: int,
    pad_id: int,
    eos_id: int | None = None,
) -> list[list[int]]:
    """:func:`sample_token_ids` for several groups of rows in one batch (e.g. the prompts of several
    cases): each group draws from its own seeded generator exactly the draws it would alone, and
    stops where it would alone, so its tokens are those of its own call up to float round-off in
    the logits (the batch is wider)."""
    device = model_device(model)
    generators = [torch.Generator(device=device).manual_seed(g.seed) for g in groups]
    input_ids, attention_mask, position_ids = left_padded_prompts(prompt_ids, pad_id, device)
    finished = torch.zeros(len(prompt_ids), dtype=torch.bool, device=device)
    drawing = [g.steps > 0 for g in groups]
    new: list[list[int]] = [[] for _ in prompt_ids]
    past = None
    while any(drawing):
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    past_key_values=past, use_cache=True)
        past = out.past_key_values
        logits = out.logits[:, -1, :]  # (B, V)
        next_ids = torch.full((len(prompt_ids),), pad_id, dtype=torch.long, device=device)
        for i, (g, generator) in enumerate(zip(groups, generators)):
            if not drawing[i]:
                continue
            rows = slice(g.start, g.stop)
            drawn = _sample_top_k(logits[rows], top_k, generator)  # every row draws, a finished one in vain
            next_ids[rows] = torch.where(finished[rows], torch.full_like(drawn, pad_id), drawn)
            if eos_id is not None:
                finished[rows] |= drawn == eos_id
            for r, token in zip(range(g.start, g.stop), next_ids[rows].tolist()):
                new[r].append(token)
            drawing[i] = len(new[g.start]) < g.steps and not bool(finished[rows].all())
        input_ids = next_ids[:, None]  # (B, 1)
        attention_mask = torch.cat([attention_mask, torch.ones_like(input_ids)], dim=-1)
        position_ids = position_ids[:, -1:] + 1
    if eos_id is None:
        return new
    return [row[: row.index(eos_id)] if eos_id in row else row for row in new]


def sample_continuations(
    model: nn.Module,
    tok,
    prompts: Sequence[str],
    max_new_tokens: int,
    top_k: int = 5,
    seed: int = 0,
    stop_at_eos: bool = True,
) -> list[str]:
    """Prompt + sampled continuation (up to ``max_new_tokens`` tokens, top-k) for each prompt.

    All prompts run in one batch. With ``stop_at_eos`` a row ends at the tokenizer's EOS (what
    follows an EOS belongs to another document). Deterministic for a given seed, prompts and model.
    """
    if isinstance(prompts, str):
        raise TypeError("sample_continuations takes a list of prompts; wrap a single prompt in a list")
    if max_new_tokens < 0 or top_k < 1:
        raise ValueError(f"need max_new_tokens >= 0 and top_k >= 1, got {max_new_tokens} and {top_k}")
    if not prompts:
        return []
    prompt_ids = [encode(tok, p) for p in prompts]
    if any(not ids for ids in prompt_ids):
        raise ValueError("every generation prompt must tokenize to at least one token")
    eos_id = tok.eos_token_id if stop_at_eos else None
    new_ids = sample_token_ids(model, prompt_ids, max_new_tokens, top_k, seed, pad_token_id(tok), eos_id)
    # Decode prompt and continuation together so SentencePiece keeps word boundaries.
    return [tok.decode(p + n, skip_special_tokens=True) for p, n in zip(prompt_ids, new_ids)]
