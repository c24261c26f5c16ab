"""Teacher-forced scoring of target continuations, the core of the CounterFact and zsRE metrics.

Sequences are built from token ids (prompt ids, then target ids) rather than by tokenizing
``prompt + target`` as one string, so the target's tokens are exactly the ones the editor
optimised, whatever the tokenizer merges across the boundary. Prompts and targets are encoded
with the editor's own :func:`util.tokens.encode` / :func:`util.tokens.encode_target`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from util.architectures import model_device
from util.tokens import pad, pad_token_id

TokenIds = Sequence[int]


@dataclass(frozen=True)
class ContinuationScore:
    """How the model scores one target after one prompt under teacher forcing."""

    nll: float  # mean per-token negative log-likelihood of the target, in nats
    token_hits: tuple[bool, ...]  # per target token: is it the argmax given the true prefix?

    @property
    def all_correct(self) -> bool:
        """Greedy decoding would reproduce the whole target."""
        return all(self.token_hits)


@torch.no_grad()
def _score_batch(
    model: torch.nn.Module, pairs: Sequence[tuple[TokenIds, TokenIds]], pad_id: int
) -> list[ContinuationScore]:
    device = model_device(model)
    input_ids, attention_mask = pad([list(p) + list(t) for p, t in pairs], pad_id, side="right")  # (B, T)
    logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                   use_cache=False).logits  # (B, T, V)
    width = max(len(t) for _, t in pairs)
    # Logits at position j predict token j + 1: target token i is read at len(prompt) - 1 + i.
    positions = torch.zeros((len(pairs), width), dtype=torch.long)  # (B, C)
    wanted = torch.zeros((len(pairs), width), dtype=torch.long)     # (B, C)
    valid = torch.zeros((len(pairs), width), dtype=torch.bool)      # (B, C)
    for row, (prompt, target) in enumerate(pairs):
        positions[row, : len(target)] = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(target))
        wanted[row, : len(target)] = torch.tensor(list(target), dtype=torch.long)
        valid[row, : len(target)] = True
    rows = torch.arange(len(pairs))[:, None]  # (B, 1)
    # float32 log-softmax: half-precision logits lose the small differences between targets.
    logp = logits[rows.to(logits.device), positions.to(logits.device)].float().log_softmax(dim=-1)  # (B, C, V)
    wanted, valid = wanted.to(logp.device), valid.to(logp.device)
    target_logp = logp.gather(-1, wanted[..., None]).squeeze(-1)  # (B, C)
    # torch.where, not a product: a -inf at a padded slot would poison the sum as NaN.
    nll = -torch.where(valid, target_logp, torch.zeros_like(target_logp)).sum(dim=1) / valid.sum(dim=1)  # (B,)
    hits = (logp.argmax(dim=-1) == wanted).tolist()  # (B, C)
    return [ContinuationScore(nll=value, token_hits=tuple(bool(h) for h in row_hits[: len(target)]))
            for value, row_hits, (_, target) in zip(nll.tolist(), hits, pairs)]


def score_pairs(
    model: torch.nn.Module,
    pairs: Sequence[tuple[TokenIds, TokenIds]],
    pad_id: int,
    batch_size: int = 64,
    bar: Any = None,
) -> list[ContinuationScore]:
    """Score ``(prompt_ids, target_ids)`` pairs, ``batch_size`` right-padded sequences per pass.

    Pairs run shortest-first so each batch pads little; scores come back in input order. ``bar``
    (a tqdm bar, optional) is advanced by the number of pairs scored.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for prompt, target in pairs:
        if not prompt or not target:
            raise ValueError("every pair needs at least one prompt token (to predict from) and one target token")
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    scores: list[ContinuationScore | None] = [None] * len(pairs)
    for begin in range(0, len(order), batch_size):
        chunk = order[begin : begin + batch_size]
        for index, score in zip(chunk, _score_batch(model, [pairs[i] for i in chunk], pad_id)):
            scores[index] = score
        if bar is not None:
            bar.update(len(chunk))
    return scores  # type: ignore[return-value]  # every slot is filled


def score_continuations(
    model: torch.nn.Module,
    tok: Any,
    pairs: Sequence[tuple[TokenIds, TokenIds]],
    batch_size: int = 64,
) -> list[ContinuationScore]:
    """Score ``(prompt_ids, target_ids)`` pairs, padding with ``tok``'s pad id (see :func:`score_pairs`)."""
    return score_pairs(model, pairs, pad_token_id(tok), batch_size=batch_size)
