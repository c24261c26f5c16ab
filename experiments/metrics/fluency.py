"""Fluency: sampled generations and their n-gram entropy (low entropy = repetitive, collapsed text)."""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from experiments.metrics.scoring import encode_prompt, model_device, pad_token_id

# Offline stand-in for NLTK's word_tokenize (its punkt data cannot be downloaded here): runs of
# letters/digits, kept together across inner apostrophes, hyphens and dots ("don't", "well-known",
# "3.5"); every other non-space character is a token of its own.
_WORD_RE = re.compile(r"[^\W_]+(?:['’\-.][^\W_]+)*|\S")

NGRAM_ORDERS = (2, 3)
NGRAM_WEIGHTS = (2 / 3, 4 / 3)


def word_tokenize(text: str) -> list[str]:
    """Split ``text`` into word and punctuation tokens (case kept, as the original metric does)."""
    return _WORD_RE.findall(text)


def ngram_distribution_entropy(tokens: Sequence[str], n: int) -> float:
    """Entropy in bits of the frequency distribution of ``tokens``' n-grams (0 if there are none)."""
    counts = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0


def text_ngram_entropy(text: str) -> float:
    """Weighted mean of the bigram and trigram entropies of one text (weights 2/3 and 4/3)."""
    tokens = word_tokenize(text)
    weighted = [w * ngram_distribution_entropy(tokens, n) for n, w in zip(NGRAM_ORDERS, NGRAM_WEIGHTS)]
    return sum(weighted) / len(weighted)


def ngram_entropy(texts: Sequence[str]) -> float:
    """Mean over ``texts`` of :func:`text_ngram_entropy` (the paper's Fluency, before ×100)."""
    if isinstance(texts, str):
        raise TypeError("ngram_entropy takes a list of texts; wrap a single text in a list")
    if not texts:
        raise ValueError("ngram_entropy needs at least one text")
    return sum(text_ngram_entropy(t) for t in texts) / len(texts)


def _left_padded(prompt_ids: list[list[int]], pad_id: int, device: torch.device):
    """Left padding keeps every prompt's last token in the last column, where sampling reads."""
    width = max(len(ids) for ids in prompt_ids)
    input_ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(prompt_ids):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def _sample_top_k(logits: torch.Tensor, top_k: int, generator: torch.Generator) -> torch.Tensor:
    """One token per row from the renormalised ``top_k`` most likely tokens.  (B, V) -> (B,)"""
    values, indices = logits.float().topk(min(top_k, logits.shape[-1]), dim=-1)
    choice = torch.multinomial(values.softmax(dim=-1), 1, generator=generator)  # (B, 1)
    return indices.gather(-1, choice).squeeze(-1)


@torch.no_grad()
def _sample_new_tokens(model: torch.nn.Module, tok: Any, prompt_ids: list[list[int]], max_new_tokens: int,
                       top_k: int, seed: int) -> list[list[int]]:
    device = model_device(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    pad_id, eos_id = pad_token_id(tok), tok.eos_token_id
    input_ids, attention_mask = _left_padded(prompt_ids, pad_id, device)
    # Positions count real tokens only, so a padded prompt is seen exactly as an unpadded one.
    position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
    finished = torch.zeros(len(prompt_ids), dtype=torch.bool, device=device)
    past, steps = None, []
    for _ in range(max_new_tokens):
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    past_key_values=past, use_cache=True)
        past = out.past_key_values
        next_ids = _sample_top_k(out.logits[:, -1, :], top_k, generator)
        next_ids = torch.where(finished, torch.full_like(next_ids, pad_id), next_ids)
        steps.append(next_ids)
        if eos_id is not None:
            finished |= next_ids == eos_id
        if bool(finished.all()):
            break
        input_ids = next_ids[:, None]
        attention_mask = torch.cat([attention_mask, torch.ones_like(input_ids)], dim=-1)
        position_ids = position_ids[:, -1:] + 1
    if not steps:
        return [[] for _ in prompt_ids]
    new = torch.stack(steps, dim=1).tolist()  # (B, steps)
    return [row[: row.index(eos_id)] if eos_id in row else row for row in new]


def generate_texts(
    model: torch.nn.Module,
    tok: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 100,
    top_k: int = 5,
    seed: int = 0,
) -> list[str]:
    """Sample up to ``max_new_tokens`` tokens per prompt (top-k), all prompts in one batch.

    Returns prompt + continuation as text (what Fluency and Consistency are measured on). A
    sequence stops at EOS. The same seed, prompts and model give the same texts.
    """
    if isinstance(prompts, str):
        raise TypeError("generate_texts takes a list of prompts; wrap a single prompt in a list")
    if not prompts:
        return []
    if max_new_tokens < 0 or top_k < 1:
        raise ValueError(f"need max_new_tokens >= 0 and top_k >= 1, got {max_new_tokens} and {top_k}")
    prompt_ids = [encode_prompt(tok, p) for p in prompts]
    if any(not ids for ids in prompt_ids):
        raise ValueError("every generation prompt must tokenize to at least one token")
    new_ids = _sample_new_tokens(model, tok, prompt_ids, max_new_tokens, top_k, seed)
    return [tok.decode(p + n, skip_special_tokens=True) for p, n in zip(prompt_ids, new_ids)]
