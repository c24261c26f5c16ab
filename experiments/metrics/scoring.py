"""Teacher-forced scoring of target continuations, the core of the CounterFact and zsRE metrics.

Sequences are built from token ids (prompt ids, then target ids) rather than by tokenizing
``prompt + target`` as one string, so the target's tokens are exactly the ones the editor
optimised, whatever the tokenizer merges across the boundary.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

TokenIds = Sequence[int]


def model_device(model: torch.nn.Module) -> torch.device:
    """Device of the model's first parameter (input ids must live there)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def pad_token_id(tok: Any) -> int:
    """An id for padding slots; any id works because padded positions are masked and never read."""
    for candidate in (tok.pad_token_id, tok.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def encode_prompt(tok: Any, text: str) -> list[int]:
    """Prompt ids with the tokenizer's own leading special tokens (e.g. BOS), never trailing ones.

    Some tokenizers' post-processors also append EOS; a prompt must stay open for its continuation.
    """
    plain = list(tok(text, add_special_tokens=False)["input_ids"])
    full = list(tok(text)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start] + plain
    return plain  # the post-processor rewrote the text itself; fall back to the bare tokens


def encode_target(tok: Any, text: str) -> list[int]:
    """Target ids: no special tokens (no BOS in the middle of a sequence)."""
    ids = list(tok(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise ValueError(f"target {text!r} tokenizes to no tokens; a target must be non-empty text")
    return ids


@dataclass(frozen=True)
class ContinuationScore:
    """How the model scores one target after one prompt under teacher forcing."""

    nll: float  # mean per-token negative log-likelihood of the target, in nats
    token_hits: tuple[bool, ...]  # per target token: is it the argmax given the true prefix?

    @property
    def all_correct(self) -> bool:
        """Greedy decoding would reproduce the whole target."""
        return all(self.token_hits)


def _right_padded(pairs: Sequence[tuple[TokenIds, TokenIds]], pad_id: int, device: torch.device):
    lengths = [len(p) + len(t) for p, t in pairs]
    input_ids = torch.full((len(pairs), max(lengths)), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, (prompt, target) in enumerate(pairs):
        input_ids[row, : lengths[row]] = torch.tensor(list(prompt) + list(target), dtype=torch.long)
        attention_mask[row, : lengths[row]] = 1
    return input_ids.to(device), attention_mask.to(device)


@torch.no_grad()
def _score_batch(
    model: torch.nn.Module, pairs: Sequence[tuple[TokenIds, TokenIds]], pad_id: int
) -> list[ContinuationScore]:
    input_ids, attention_mask = _right_padded(pairs, pad_id, model_device(model))
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, T, V)
    scores = []
    for row, (prompt, target) in enumerate(pairs):
        start = len(prompt) - 1  # logits at position j predict token j + 1
        rows = logits[row, start : start + len(target)].float().log_softmax(dim=-1)  # (len(target), V)
        wanted = torch.tensor(list(target), device=rows.device)
        nll = -rows.gather(1, wanted[:, None]).mean().item()
        hits = tuple(bool(h) for h in (rows.argmax(dim=-1) == wanted).tolist())
        scores.append(ContinuationScore(nll=nll, token_hits=hits))
    return scores


def score_continuations(
    model: torch.nn.Module,
    tok: Any,
    pairs: Sequence[tuple[TokenIds, TokenIds]],
    batch_size: int = 64,
) -> list[ContinuationScore]:
    """Score ``(prompt_ids, target_ids)`` pairs, ``batch_size`` sequences per forward pass."""
    for prompt, target in pairs:
        if not prompt or not target:
            raise ValueError("every pair needs at least one prompt token and one target token")
    pad_id = pad_token_id(tok)
    scores: list[ContinuationScore] = []
    for begin in range(0, len(pairs), batch_size):
        scores.extend(_score_batch(model, pairs[begin : begin + batch_size], pad_id))
    return scores
