"""Per-case zsRE metrics: token-level top-1 accuracy under teacher forcing.

For each target token: given the prompt and the true preceding target tokens, is that token the
model's argmax? Efficacy uses the rewrite prompt, Generalization the paraphrase, Specificity the
per-token neighborhood prompts of the unrelated NQ question (each checks its one token).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from experiments.metrics.scoring import score_continuations
from util.requests import check_prompt_template, fill_prompt, with_leading_space
from util.tokens import encode, encode_target


def _neighborhood_target(tok: Any, entry: dict[str, Any]) -> list[int]:
    # The loader stores the token id: decoding a single token can drop it (SentencePiece "▁" → "").
    if "target_id" in entry:
        return [int(entry["target_id"])]
    return encode_target(tok, entry["target"])


def compute_rewrite_quality_zsre(model: torch.nn.Module, tok: Any, record: dict[str, Any], *,
                                 batch_size: int = 64) -> dict[str, list[bool]]:
    """``rewrite/paraphrase/neighborhood_prompts_correct``: per-token hits, flattened per group."""
    return compute_rewrite_quality_zsre_many(model, tok, [record], batch_size=batch_size)[0]


def compute_rewrite_quality_zsre_many(model: torch.nn.Module, tok: Any, records: Sequence[dict[str, Any]], *,
                                      batch_size: int = 64) -> list[dict[str, list[bool]]]:
    """:func:`compute_rewrite_quality_zsre` of every record, their prompts scored together."""
    grouped = [_pairs(tok, record) for record in records]
    flat = [pair for groups in grouped for pairs in groups.values() for pair in pairs]
    scores = iter(score_continuations(model, tok, flat, batch_size=batch_size))
    return [{f"{name}_prompts_correct": [hit for _ in pairs for hit in next(scores).token_hits]
             for name, pairs in groups.items()} for groups in grouped]


def _pairs(tok: Any, record: dict[str, Any]) -> dict[str, list]:
    rewrite = record["requested_rewrite"]
    check_prompt_template(rewrite["prompt"], where=f"case_id={record.get('case_id', '?')}: requested_rewrite.prompt")
    target = encode_target(tok, with_leading_space(rewrite["target_new"]["str"]))
    return {
        "rewrite": [(encode(tok, fill_prompt(rewrite["prompt"], rewrite["subject"])), target)],
        "paraphrase": [(encode(tok, p), target) for p in record["paraphrase_prompts"]],
        "neighborhood": [(encode(tok, e["prompt"]), _neighborhood_target(tok, e))
                         for e in record["neighborhood_prompts"]],
    }
