"""util.greedy: batched greedy decoding whose rows leave the batch when done gives each row the ids
it would get alone, with fewer forward passes."""
from __future__ import annotations

import pytest
import torch
from helpers import tiny_model

from util.greedy import greedy_token_ids

PROMPTS = [[1, 17, 40, 9], [1, 300], [1, 5, 6, 7, 8, 9, 10], [1, 250, 251]]


def _alone(model, ids: list[int], steps: int, eos: int | None) -> list[int]:
    new: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            if token == eos:
                break
            new.append(token)
    return new


@pytest.mark.parametrize("kind", ["llama", "gpt2"])  # rotary and absolute positions under left padding
def test_rows_that_leave_early_keep_what_plain_greedy_gives(kind):
    model = tiny_model(kind)
    full = [_alone(model, p, 6, eos=None) for p in PROMPTS]
    assert greedy_token_ids(model, PROMPTS, 6, pad_id=0) == full
    wanted = {0: 1, 1: 3, 2: 6, 3: 2}  # row r is done after wanted[r] tokens
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        got = greedy_token_ids(model, PROMPTS, 6, pad_id=0, done=lambda new: len(new) >= wanted[_row(new, full)])
    finally:
        handle.remove()
    assert got == [full[r][: wanted[r]] for r in range(len(PROMPTS))]
    assert len(calls) == 6  # the longest row's tokens, no pass after the last


def test_eos_ends_a_row_before_it_and_no_row_runs_past_the_bound():
    model = tiny_model("llama")
    full = [_alone(model, p, 5, eos=None) for p in PROMPTS]
    eos = full[1][2]  # row 1's third token
    got = greedy_token_ids(model, PROMPTS, 5, pad_id=0, eos_id=eos)
    assert got == [_alone(model, p, 5, eos=eos) for p in PROMPTS]
    assert got[1] == full[1][:2] and all(len(row) <= 5 for row in got)


def _row(new: list[int], full: list[list[int]]) -> int:
    """Which prompt a partial row belongs to (its ids are a prefix of exactly one full row here)."""
    (row,) = [r for r, ids in enumerate(full) if ids[: len(new)] == new]
    return row
