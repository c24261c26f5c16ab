"""What both sides of the comparison compute the same way: a hash of the loaded weights and plain
greedy decoding. Only torch and hashlib, so it imports in our venv and in the official one."""
from __future__ import annotations

import hashlib

import torch

GREEDY_TOKENS = 10


def state_sha256(model) -> str:
    """One hash over every tensor of the state dict (names sorted), to show both sides load the same weights."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def greedy(model, tok, prompt: str, n: int = GREEDY_TOKENS) -> list[int]:
    """Plain greedy decoding: the whole sequence through the model each step, argmax of the last logits."""
    ids = list(tok(prompt)["input_ids"])
    out = []
    for _ in range(n):
        logits = model(input_ids=torch.tensor([ids + out])).logits[0, -1]
        out.append(int(logits.argmax()))
    return out
