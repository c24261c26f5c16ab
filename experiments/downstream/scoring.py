"""Likelihood scoring of label words: which continuation does the model find most probable?

A candidate's score is the *mean* log-probability of its tokens after the prompt. Mean, not sum:
label words tokenize to different lengths (" positive" is 6 pieces and " negative" 5 in a
512-token vocabulary, "▁True"/"▁False" can split differently per tokenizer), and a sum would
penalise every extra piece regardless of meaning. For single-token candidates (" A".." D") the
two are the same. This is also what the NSE/AlphaEdit glue_eval likelihood numbers use.
"""
from __future__ import annotations

from typing import Optional, Sequence

from torch import nn

from experiments.metrics.scoring import score_pairs
from util.tokens import encode, encode_target

from .tasks import ANSWER_CUE

Pair = tuple[list[int], list[int]]  # (prompt ids incl. special tokens, continuation ids)


def continuation_ids(tok, word: str, cue: str = ANSWER_CUE) -> list[int]:
    """Ids of ``word`` as the tokenizer splits it right after ``cue`` (no special tokens).

    Encoding " Yes" on its own gives SentencePiece tokenizers a spurious lone "▁" piece; encoding
    cue + word and removing the cue's ids gives the pieces the model actually sees after the prompt.
    Falls back to the bare encoding if the cue's ids are not a prefix of the joint encoding.
    """
    base = list(tok(cue, add_special_tokens=False)["input_ids"])
    joint = list(tok(cue + word, add_special_tokens=False)["input_ids"])
    ids = joint[len(base):] if joint[: len(base)] == base else []
    return ids or encode_target(tok, word)  # raises if the word tokenizes to nothing


def context_limit(model: nn.Module, tok) -> int:
    """Longest sequence the model accepts: its position table, else the tokenizer's claim."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if not limit:
        claimed = getattr(tok, "model_max_length", None)
        # Tokenizers without a limit report a huge sentinel (int(1e30)); that is no limit at all.
        limit = claimed if claimed and claimed < 1_000_000 else None
    if not limit:
        raise ValueError("cannot tell the model's context length (config.max_position_embeddings)")
    return int(limit)


def fit_prompt(prompt_ids: list[int], budget: int, bos_id: Optional[int]) -> list[int]:
    """Drop tokens from the left so the prompt has at most ``budget`` ids.

    The start of a long MMLU question or dialogue matters least; the cue and options at the end
    matter most. A leading BOS is kept because models are trained to always see it first.
    """
    if budget < 1:
        raise ValueError(f"context too short for the label words (prompt budget {budget})")
    if len(prompt_ids) <= budget:
        return prompt_ids
    keep_bos = bos_id is not None and prompt_ids[0] == bos_id and budget > 1
    if keep_bos:
        return [prompt_ids[0]] + prompt_ids[len(prompt_ids) - (budget - 1):]
    return prompt_ids[len(prompt_ids) - budget:]


def build_pairs(tok, prompts: Sequence[str], candidates: Sequence[list[int]], limit: int) -> list[Pair]:
    """Every (prompt, candidate) pair, prompt-major, each fitting in ``limit`` tokens."""
    budget = limit - max(len(c) for c in candidates)
    bos_id = getattr(tok, "bos_token_id", None)
    pairs = []
    for prompt in prompts:
        prompt_ids = fit_prompt(encode(tok, prompt), budget, bos_id)
        pairs.extend((prompt_ids, list(c)) for c in candidates)
    return pairs


def mean_logprobs(model: nn.Module, pairs: Sequence[Pair], batch_size: int, pad_id: int, bar=None) -> list[float]:
    """Mean log-probability of each continuation after its prompt (batched, right-padded,
    shortest-first; scores in input order). The CounterFact/zsRE scorer, read as log-probabilities."""
    return [-score.nll for score in score_pairs(model, pairs, pad_id, batch_size=batch_size, bar=bar)]
