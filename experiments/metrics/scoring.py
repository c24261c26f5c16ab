"""Teacher-forced scoring of target continuations, the core of the CounterFact and zsRE metrics.

Sequences are built from token ids (prompt ids, then target ids) rather than by tokenizing
``prompt + target`` as one string, so the target's tokens are exactly the ones the editor
optimised, whatever the tokenizer merges across the boundary. Prompts and targets are encoded
with the editor's own :func:`util.tokens.encode` / :func:`util.tokens.encode_target`.

Scoring a target reads the logits at the prompt's last position and at every target token but
the last, so a pair's input is ``prompt + target[:-1]``. Attention is causal, so pairs whose
inputs are prefixes of one another (the two one-token targets of a CounterFact prompt, every label
word of a one-token classification task) are read from one row, and only the positions read go
through the LM head (:func:`plan_rows`). The scores are those of one forward per pair, up to
float round-off from the batch's shape (tests/test_metrics.py).
"""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

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


@dataclass
class Row:
    """One input sequence and the pairs read from it: ``(pair index, position predicting its first token)``."""

    ids: list[int]
    reads: list[tuple[int, int]] = field(default_factory=list)


def plan_rows(pairs: Sequence[tuple[TokenIds, TokenIds]]) -> list[Row]:
    """The fewest rows that serve every pair: a pair whose input (``prompt + target[:-1]``) is a
    prefix of another pair's input with the same prompt is read from that pair's row."""
    rows: list[Row] = []
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for index in sorted(range(len(pairs)), key=lambda i: -len(pairs[i][1])):  # longer inputs first
        prompt, target = pairs[index]
        seq = list(prompt) + list(target[:-1])
        same_prompt = by_prompt.setdefault(tuple(prompt), [])
        row = next((r for r in same_prompt if rows[r].ids[: len(seq)] == seq), None)
        if row is None:
            row = len(rows)
            same_prompt.append(row)
            rows.append(Row(seq))
        rows[row].reads.append((index, len(prompt) - 1))
    return rows


@contextmanager
def _head_reads_only(model: nn.Module, rows: torch.Tensor, positions: torch.Tensor) -> Iterator[bool]:
    """While inside, the LM head sees only ``hidden[rows, positions]`` (N, C, d), so the model's
    logits are (N, C, V): the full-vocabulary product runs for the positions read, not every one.
    Yields False (and changes nothing) for a model without an output-embedding module."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if not isinstance(head, nn.Module):
        yield False
        return

    def gather(_module: nn.Module, args: tuple) -> tuple:
        hidden = args[0]  # (B, T, d)
        return (hidden[rows.to(hidden.device), positions.to(hidden.device)], *args[1:])

    handle = head.register_forward_pre_hook(gather)
    try:
        yield True
    finally:
        handle.remove()


@torch.no_grad()
def _score_rows(model: nn.Module, rows: Sequence[Row], pairs: Sequence[tuple[TokenIds, TokenIds]],
                pad_id: int) -> dict[int, ContinuationScore]:
    """One forward over ``rows``; the score of every pair they read."""
    device = model_device(model)
    input_ids, attention_mask = pad([r.ids for r in rows], pad_id, side="right")  # (B, T)
    reads = [(b, start, index) for b, row in enumerate(rows) for index, start in row.reads]
    width = max(len(pairs[index][1]) for _, _, index in reads)
    # Logits at position j predict token j + 1: target token i is read at start + i.
    row_of = torch.tensor([b for b, _, _ in reads], dtype=torch.long)[:, None]  # (N, 1)
    positions = torch.zeros((len(reads), width), dtype=torch.long)  # (N, C)
    wanted = torch.zeros((len(reads), width), dtype=torch.long)     # (N, C)
    valid = torch.zeros((len(reads), width), dtype=torch.bool)      # (N, C)
    for n, (_, start, index) in enumerate(reads):
        target = pairs[index][1]
        positions[n, : len(target)] = torch.arange(start, start + len(target))
        wanted[n, : len(target)] = torch.tensor(list(target), dtype=torch.long)
        valid[n, : len(target)] = True
    with _head_reads_only(model, row_of, positions) as gathered:
        logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                       use_cache=False).logits
    if not gathered:  # (B, T, V): read the positions here
        logits = logits[row_of.to(logits.device), positions.to(logits.device)]
    # float32 log-softmax: half-precision logits lose the small differences between targets.
    logp = logits.float().log_softmax(dim=-1)  # (N, C, V)
    wanted, valid = wanted.to(logp.device), valid.to(logp.device)
    target_logp = logp.gather(-1, wanted[..., None]).squeeze(-1)  # (N, C)
    # torch.where, not a product: a -inf at a padded slot would poison the sum as NaN.
    nll = -torch.where(valid, target_logp, torch.zeros_like(target_logp)).sum(dim=1) / valid.sum(dim=1)  # (N,)
    hits = (logp.argmax(dim=-1) == wanted).tolist()  # (N, C)
    return {index: ContinuationScore(nll=value, token_hits=tuple(bool(h) for h in row_hits[: len(pairs[index][1])]))
            for value, row_hits, (_, _, index) in zip(nll.tolist(), hits, reads)}


def score_pairs(
    model: torch.nn.Module,
    pairs: Sequence[tuple[TokenIds, TokenIds]],
    pad_id: int,
    batch_size: int = 64,
    bar: Any = None,
) -> list[ContinuationScore]:
    """Score ``(prompt_ids, target_ids)`` pairs, ``batch_size`` right-padded rows per pass.

    Rows (:func:`plan_rows`) run shortest-first so each batch pads little; scores come back in
    input order. ``bar`` (a tqdm bar, optional) is advanced by the number of pairs scored.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for prompt, target in pairs:
        if not prompt or not target:
            raise ValueError("every pair needs at least one prompt token (to predict from) and one target token")
    rows = sorted(plan_rows(pairs), key=lambda r: len(r.ids))
    scores: dict[int, ContinuationScore] = {}
    for begin in range(0, len(rows), batch_size):
        chunk = rows[begin : begin + batch_size]
        scores.update(_score_rows(model, chunk, pairs, pad_id))
        if bar is not None:
            bar.update(sum(len(r.reads) for r in chunk))
    return [scores[i] for i in range(len(pairs))]


def score_continuations(
    model: torch.nn.Module,
    tok: Any,
    pairs: Sequence[tuple[TokenIds, TokenIds]],
    batch_size: int = 64,
) -> list[ContinuationScore]:
    """Score ``(prompt_ids, target_ids)`` pairs, padding with ``tok``'s pad id (see :func:`score_pairs`)."""
    return score_pairs(model, pairs, pad_token_id(tok), batch_size=batch_size)
