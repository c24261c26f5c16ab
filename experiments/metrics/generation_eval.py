"""Generation-based evaluation beside teacher forcing, on the same edited model (opt-in,
``--generation_eval``): what the model says, not what it scores.

Each rewrite, paraphrase and neighbourhood prompt is continued greedily for at most ``MAX_NEW``
tokens; the answer is the continuation up to the first period or newline (or EOS), as the Mirage /
WILD and LocFT-BF evaluations stop. It is scored against the new target (neighbourhood prompts:
the true target) by exact match after SQuAD normalisation (lowercase, ASCII punctuation and the
articles a/an/the removed, whitespace collapsed), as both do, and by token F1 over the normalised
words (SQuAD's F1, this harness's addition: neither evaluation reports it).
"""
from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

from torch import nn

from util.greedy import greedy_token_ids
from util.tokens import encode, pad_token_id

MAX_NEW = 32                 # LocFT-BF's bound (Mirage: 50)
STOP = re.compile(r"[.\n]")  # the answer ends before the first period or newline
GROUPS = ("rewrite", "paraphrase", "neighborhood")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """SQuAD's answer normalisation."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def exact_match(answer: str, target: str) -> bool:
    return normalize(answer) == normalize(target)


def token_f1(answer: str, target: str) -> float:
    """SQuAD's F1 over the normalised words of answer and target (1.0 when both are empty)."""
    a, t = normalize(answer).split(), normalize(target).split()
    if not a or not t:
        return float(a == t)
    common = sum((Counter(a) & Counter(t)).values())
    if not common:
        return 0.0
    precision, recall = common / len(a), common / len(t)
    return 2 * precision * recall / (precision + recall)


def answer_of(continuation: str) -> str:
    """The continuation up to its first period or newline, stripped."""
    return STOP.split(continuation, maxsplit=1)[0].strip()


def greedy_answers(model: nn.Module, tok: Any, prompts: Sequence[str], batch_size: int = 32) -> list[str]:
    """Each prompt's greedy answer, EOS ending a row; a row stops once its answer is complete (a period
    or newline generated), since what follows is never read."""
    def answered(new_ids: list[int]) -> bool:
        return STOP.search(tok.decode(new_ids, skip_special_tokens=True)) is not None

    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        ids = [encode(tok, p) for p in prompts[start : start + batch_size]]
        new = greedy_token_ids(model, ids, MAX_NEW, pad_token_id(tok), tok.eos_token_id, done=answered)
        # Decode prompt and answer together so SentencePiece keeps the word boundary, then cut the prompt.
        for p, n in zip(ids, new):
            full, prompt = tok.decode(p + n, skip_special_tokens=True), tok.decode(p, skip_special_tokens=True)
            answers.append(answer_of(full[len(prompt):] if full.startswith(prompt) else tok.decode(n)))
    return answers


def generation_eval_many(model: nn.Module, tok: Any, items: Sequence[dict[str, list[tuple[str, str]]]],
                         batch_size: int = 32) -> list[dict[str, list]]:
    """Per case (``{group: [(prompt, target), ...]}``) the lists ``<group>_gen_answer``,
    ``<group>_gen_em`` (true/false) and ``<group>_gen_f1``; every prompt of every case in one run."""
    flat = [(i, g, p, t) for i, case in enumerate(items) for g in GROUPS for p, t in case.get(g, [])]
    answers = greedy_answers(model, tok, [p for _, _, p, _ in flat], batch_size)
    out: list[dict[str, list]] = [{f"{g}_gen_{k}": [] for g in GROUPS for k in ("answer", "em", "f1")} for _ in items]
    for (i, g, _, target), answer in zip(flat, answers):
        out[i][f"{g}_gen_answer"].append(answer)
        out[i][f"{g}_gen_em"].append(exact_match(answer, target))
        out[i][f"{g}_gen_f1"].append(token_f1(answer, target))
    return out
