"""Context templates: ``"{}"`` plus short prefixes the unedited model writes itself."""
from __future__ import annotations

from torch import nn

from util.generation import sample_continuations
from util.tokens import encode

TEMPLATE_STARTS = ("The", "Therefore", "Because", "I", "You")


def generate_context_templates(
    model: nn.Module, tok, seed: int = 0, n_new_tokens: int = 10, top_k: int = 5
) -> list[list[str]]:
    """``[["{}"], [<5 generated prefixes> + ". {}"]]``; save the result with the run."""
    # Stopping at EOS keeps a template to one document; on stories260K it changed no template in
    # 200 seeds (10 tokens rarely reach an EOS), so earlier runs' templates are reproduced.
    texts = sample_continuations(model, tok, TEMPLATE_STARTS, n_new_tokens, top_k=top_k, seed=seed, stop_at_eos=True)
    # Braces in generated text would break str.format of the template.
    generated = [t.replace("{", " ").replace("}", " ") + ". {}" for t in texts]
    return [["{}"], generated]


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
