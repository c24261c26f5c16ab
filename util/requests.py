"""Edit requests: validation and the one target normalisation used everywhere.

A request is ``{case_id, prompt: "... {} ...", subject, target_new: {str}, target_true: {str}}``.
Value optimisation and evaluation must tokenize targets identically, so both call
:func:`normalize_request` / :func:`with_leading_space`.
"""
from __future__ import annotations

import copy
from typing import Any


class RequestError(ValueError):
    """A malformed edit request; the message names the case and the fix."""


def with_leading_space(text: str) -> str:
    """Targets are continuations of the prompt: BPE tokenizers need the separating space."""
    return text if text.startswith(" ") else " " + text


def check_prompt_template(prompt: str, where: str = "prompt") -> None:
    """A prompt holds exactly one ``{}`` where the subject goes, and no other braces."""
    if not isinstance(prompt, str):
        raise RequestError(f"{where} must be a string with one '{{}}' for the subject, got {prompt!r}")
    if prompt.count("{}") != 1 or prompt.count("{") != 1 or prompt.count("}") != 1:
        raise RequestError(
            f"{where} {prompt!r} must contain exactly one '{{}}' where the subject goes "
            "(and no other braces); fix the record or its loader"
        )


def normalize_request(request: dict[str, Any]) -> dict[str, Any]:
    """Return a validated copy of ``request`` whose targets start with a space."""
    case = request.get("case_id", "?")
    for key in ("prompt", "subject", "target_new"):
        if key not in request:
            raise RequestError(f"request case_id={case} lacks '{key}'; expected keys prompt, subject, target_new")
    check_prompt_template(request["prompt"], where=f"request case_id={case}: prompt")
    if not isinstance(request["subject"], str) or not request["subject"].strip():
        raise RequestError(f"request case_id={case}: subject must be a non-empty string")
    out = copy.deepcopy(request)
    for key in ("target_new", "target_true"):
        if key not in out:
            continue
        target = out[key]
        if not isinstance(target, dict) or not isinstance(target.get("str"), str) or not target["str"].strip():
            raise RequestError(f"request case_id={case}: {key} must be {{'str': <non-empty text>}}, got {target!r}")
        target["str"] = with_leading_space(target["str"])
    return out


def fill_prompt(prompt: str, subject: str) -> str:
    """Put the subject into the prompt's ``{}`` (the prompt may contain other text only)."""
    return prompt.replace("{}", subject)
