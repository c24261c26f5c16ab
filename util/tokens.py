"""Token-level helpers: encoding, padding and the fact-token lookup.

Positions are computed on the unpadded sequence and shifted by the padding actually present,
so the lookup is right under left or right padding and with or without a BOS token.
"""
from __future__ import annotations

from typing import Sequence

import torch

from util.requests import fill_prompt

FACT_TOKEN_STRATEGIES = ("subject_last", "subject_first", "last")


def encode(tok, text: str) -> list[int]:
    """Prompt ids as the model sees them: the tokenizer's leading special tokens (e.g. BOS), never
    trailing ones.

    Some tokenizers' post-processors also append EOS; a prompt must stay open for its continuation
    (the edited target, a scored target, sampled text), and the fact token must not be an EOS.
    Editing, evaluation and generation all encode prompts here, so they see the same ids.
    """
    plain = list(tok(text, add_special_tokens=False)["input_ids"])
    full = list(tok(text, add_special_tokens=True)["input_ids"])
    if not plain:  # "" (e.g. the text before a leading subject): only special tokens, no anchor
        return _drop_trailing_eos(tok, full)
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start] + plain
    return plain  # the post-processor rewrote the text itself; fall back to the bare tokens


def _drop_trailing_eos(tok, ids: list[int]) -> list[int]:
    eos, bos = getattr(tok, "eos_token_id", None), getattr(tok, "bos_token_id", None)
    keep = len(ids)
    while keep and ids[keep - 1] == eos and not (keep == 1 and ids[0] == bos):  # BOS may equal EOS
        keep -= 1
    return ids[:keep]


def encode_target(tok, text: str) -> list[int]:
    """Target continuation ids: no special tokens (no BOS in the middle of a sequence)."""
    ids = list(tok(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise ValueError(f"target {text!r} tokenizes to nothing; targets must be non-empty text")
    return ids


def fact_token_index(tok, prompt: str, subject: str, strategy: str = "subject_last") -> int:
    """Index, in ``encode(tok, prompt.format(subject))``, of the token an edit reads/writes at.

    ``prompt`` holds one ``{}``. Counts tokens of the text before the subject and through the
    subject, so the index includes a BOS token if the tokenizer adds one.
    """
    if strategy not in FACT_TOKEN_STRATEGIES:
        raise ValueError(f"fact_token={strategy!r} is not one of {FACT_TOKEN_STRATEGIES}")
    filled = fill_prompt(prompt, subject)
    n_full = len(encode(tok, filled))
    if strategy == "last":
        return n_full - 1
    prefix = prompt[: prompt.index("{}")]
    if strategy == "subject_first":
        index = len(encode(tok, prefix))  # "" encodes to just the special prefix, e.g. [BOS]
    else:
        index = len(encode(tok, prefix + subject)) - 1
    if not 0 <= index < n_full:
        raise ValueError(f"subject {subject!r} not found as tokens in {filled!r}")
    return index


def pad(sequences: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both ``(B, T)`` long tensors."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        start = width - len(seq) if side == "left" else 0
        ids[row, start : start + len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, start : start + len(seq)] = 1
    return ids, mask


def left_padded_prompts(prompt_ids: Sequence[Sequence[int]], pad_id: int,
                        device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, position_ids) of prompts to continue, all ``(B, T)`` on ``device``.

    Left padding puts every last token in the last column. Positions count real tokens only, so a
    padded prompt is seen exactly as an unpadded one (absolute-position models such as GPT-2 would
    otherwise see it shifted).
    """
    input_ids, mask = pad(prompt_ids, pad_id, side="left")
    input_ids, mask = input_ids.to(device), mask.to(device)
    return input_ids, mask, (mask.cumsum(dim=-1) - 1).clamp(min=0)


def padded_positions(unpadded: Sequence[int], attention_mask: torch.Tensor) -> torch.Tensor:
    """Shift unpadded indices by each row's leading padding (zero under right padding)."""
    first_real = attention_mask.long().argmax(dim=1).cpu()
    return first_real + torch.as_tensor(list(unpadded), dtype=torch.long)


def pad_token_id(tok) -> int:
    """The id used for padding; tokenizers without a pad token (Llama) use EOS, which is masked."""
    for candidate in (tok.pad_token_id, tok.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    raise AssertionError("unreachable")
