"""Context templates: ``"{}"`` plus short prefixes the unedited model writes itself."""
from __future__ import annotations

from torch import nn

from util.generation import sample_continuations
from util.tokens import encode

TEMPLATE_STARTS = ("The", "Therefore", "Because", "I", "You")


TEMPLATE_LENGTHS = ("total", "new_tokens")


def generate_context_templates(
    model: nn.Module, tok, seed: int = 0, length: int = 10, top_k: int = 5, counted: str = "total"
) -> list[list[str]]:
    """``[["{}"], [<5 generated prefixes> + ". {}"]]``; save the result with the run.

    ``counted="total"`` (the original's generate_fast, max_out_len=10): each prefix is ``length``
    tokens in all, its start word and any BOS included. ``"new_tokens"``: ``length`` tokens after
    the start word (this harness's templates before).
    """
    # Stopping at EOS keeps a template to one document (10 tokens rarely reach an EOS).
    if counted == "new_tokens":
        texts = sample_continuations(model, tok, TEMPLATE_STARTS, length, top_k=top_k, seed=seed, stop_at_eos=True)
    elif counted == "total":
        texts = _sampled_to_total_length(model, tok, length, top_k, seed)
    else:
        raise ValueError(f"counted must be one of {TEMPLATE_LENGTHS}, got {counted!r}")
    # Braces in generated text would break str.format of the template.
    generated = [t.replace("{", " ").replace("}", " ") + ". {}" for t in texts]
    return [["{}"], generated]


def _sampled_to_total_length(model: nn.Module, tok, length: int, top_k: int, seed: int) -> list[str]:
    """One continuation per start word, ``length`` tokens with the start word's own (one batch per
    number of new tokens, so start words of one token length share a batch)."""
    by_count: dict[int, list[str]] = {}
    for start in TEMPLATE_STARTS:
        by_count.setdefault(max(1, length - len(encode(tok, start))), []).append(start)
    text_of: dict[str, str] = {}
    for group, (new_tokens, starts) in enumerate(sorted(by_count.items())):
        texts = sample_continuations(model, tok, starts, new_tokens, top_k=top_k, seed=seed + group, stop_at_eos=True)
        text_of.update(zip(starts, texts))
    return [text_of[start] for start in TEMPLATE_STARTS]


def generate_length_templates(
    model: nn.Module, tok, length_params: list[list[int]], seed: int = 0, top_k: int = 5
) -> list[list[str]]:
    """ROME's templates: ``[["{}"], [...]]`` where each ``[length, n]`` of ``length_params`` adds
    ``n // 5`` samples per start word, each ``length`` tokens long in total (start word included)."""
    generated = []
    for g, (length, n_gen) in enumerate(length_params):
        for s, start in enumerate(TEMPLATE_STARTS):
            new_tokens = max(1, length - len(encode(tok, start)))
            texts = sample_continuations(model, tok, [start] * (n_gen // len(TEMPLATE_STARTS)), new_tokens,
                                         top_k=top_k, seed=seed + 1000 * g + s, stop_at_eos=True)
            generated += [t.replace("{", " ").replace("}", " ") + ". {}" for t in texts]
    return [["{}"], generated]


def flat_templates(templates: list[list[str]]) -> list[str]:
    return [t for group in templates for t in group]


def apply_template(template: str, prompt: str) -> str:
    """Put a request prompt (which keeps its own ``{}`` for the subject) into a context template."""
    return template.replace("{}", prompt, 1)
