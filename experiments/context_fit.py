"""The context-length rule: every record must fit the model's context, checked before any edit.

A record is refused when any sequence the run would feed the model for it is longer than the model's
context (``max_position_embeddings``): the rewrite prompt inside each context template followed by
the longer target (the edit, Efficacy), each paraphrase, neighbourhood and attribute prompt followed
by its target (the metrics), and, when the case gets generation tests, its generation prompts grown
to ``MAX_LENGTH`` tokens. Past the context a model with absolute positions fails (an IndexError in
the final scoring) and one with rotary positions silently scores garbage; refusing up front,
with the case named, is the one rule. Truncating instead would change what the case measures.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from experiments.downstream.scoring import context_limit
from experiments.metrics.fluency import MAX_LENGTH
from util.context_templates import apply_template, flat_templates
from util.requests import fill_prompt, normalize_request
from util.tokens import encode, encode_target

log = logging.getLogger(__name__)


class ContextLengthError(ValueError):
    """Records longer than the model's context; the message names them and the fix."""


def _scored_lengths(tok: Any, record: dict[str, Any], target: int) -> list[tuple[int, str]]:
    lengths = []
    for key in ("paraphrase_prompts", "neighborhood_prompts", "attribute_prompts"):
        for i, prompt in enumerate(record.get(key) or []):
            if isinstance(prompt, dict):  # zsRE neighbourhood: its own one-token target
                lengths.append((len(encode(tok, prompt["prompt"])) + 1, f"{key}[{i}] with its target"))
            else:
                lengths.append((len(encode(tok, prompt)) + target, f"{key}[{i}] with the target ({target} tokens)"))
    return lengths


def longest_sequence(tok: Any, record: dict[str, Any], templates: Sequence[str], generation: bool) -> tuple[int, str]:
    """(tokens, which sequence) of the longest sequence the run feeds the model for ``record``."""
    rewrite = normalize_request({"case_id": record.get("case_id"), **record["requested_rewrite"]})
    target = max(len(encode_target(tok, rewrite[k]["str"])) for k in ("target_new", "target_true") if k in rewrite)
    lengths = [(len(encode(tok, fill_prompt(apply_template(t, rewrite["prompt"]), rewrite["subject"]))) + target,
                ("the rewrite prompt in a context template" if t != "{}" else "the rewrite prompt")
                + f" with the target ({target} tokens)")
               for t in templates]
    lengths += _scored_lengths(tok, record, target)
    prompts = [len(encode(tok, p)) for p in record.get("generation_prompts") or []] if generation else []
    if prompts:  # every text of the batch grows to MAX_LENGTH tokens, the widest prompt by as much as the shortest
        lengths.append((max(prompts) + max(0, MAX_LENGTH - min(prompts)), "generation_prompts grown to their length"))
    return max(lengths)


def check_records_fit(model: Any, tok: Any, records: Sequence[dict[str, Any]], templates: list[list[str]] | None,
                      generation_every: int) -> None:
    """Raise :class:`ContextLengthError` naming the records that do not fit (see the module doc).

    ``generation_every``: records at indices divisible by it get generation tests (0: none)."""
    try:
        limit = context_limit(model, tok)
    except ValueError:
        log.warning("the model states no context length (max_position_embeddings): records are not checked")
        return
    flat = flat_templates(templates) if templates else ["{}"]
    too_long = []
    for i, record in enumerate(records):
        generation = generation_every > 0 and i % generation_every == 0
        length, what = longest_sequence(tok, record, flat, generation)
        if length > limit:
            too_long.append((record["case_id"], length, what))
    if too_long:
        case_id, length, what = too_long[0]
        ids = ", ".join(str(c) for c, _, _ in too_long[:10]) + (" ..." if len(too_long) > 10 else "")
        raise ContextLengthError(
            f"{len(too_long)} record(s) do not fit the model's context of {limit} tokens (case_ids {ids}); "
            f"case_id={case_id}: {what} is {length} tokens. Shorten or drop these records "
            "(or skip the generation tests with --skip_generation_tests when only they are too long)")
