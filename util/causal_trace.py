"""Causal tracing as in ROME (Meng et al. 2022, arXiv 2202.05262, section 2.1).

For a fact the model knows, the input embeddings of the subject's tokens are corrupted by Gaussian
noise; the probability the corrupted model gives its own clean prediction (the answer token) drops.
Restoring one internal state at one token to its clean value brings some of it back. The indirect
effect of that state is P(answer | corrupted, state restored) - P(answer | corrupted).

The states are those of ROME's code: a layer's output (the residual stream, one layer), and the
outputs of the MLP or attention modules of ``window`` consecutive layers around a layer (one MLP's
or attention's output changes too little alone). Noise: ``samples`` draws per fact, the same draws
for every restoration of that fact, so that differences between restorations are not differences of
noise; the probability is the mean over the draws.

Every restoration runs as ``samples`` rows of a batch; many restorations share a forward pass.
"""
from __future__ import annotations

import inspect
from collections.abc import Collection, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from util.architectures import layout_for, model_device, num_layers
from util.hooks import capture, edit_output
from util.tokens import encode, fact_token_index

KINDS = ("residual", "mlp", "attn")
# ROME's average figures (notebooks/average_causal_effects.ipynb): positions by their place relative
# to the subject. Tokens before the subject belong to no class.
TOKEN_CLASSES = ("first subject token", "middle subject tokens", "last subject token",
                 "first subsequent token", "further tokens", "last token")
State = tuple[str, int]  # (module name, token position)


def site_names(model: nn.Module, kind: str) -> list[str]:
    """The module whose output is restored, per layer: the decoder block (residual), its MLP or its attention."""
    layout = layout_for(model.config)
    templates = {"residual": layout.layer_module_tmp, "mlp": layout.mlp_module_tmp, "attn": layout.attn_module_tmp}
    if kind not in templates:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    return [templates[kind].format(layer) for layer in range(num_layers(model))]


def restored_layers(layer: int, n_layers: int, window: int) -> range:
    """ROME's window around ``layer``: from layer - window//2 up to layer + ceil(window/2) - 1, cut at the
    model's first and last layer (window 10 at layer 7: layers 2..11)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    return range(max(0, layer - window // 2), min(n_layers, layer + (window + 1) // 2))


def restoration(kind: str, names: Sequence[str], layer: int, token: int, window: int) -> frozenset[State]:
    """The states restored for ``kind`` at (layer, token): one layer's output for the residual stream,
    the window's module outputs for MLP and attention."""
    layers = [layer] if kind == "residual" else restored_layers(layer, len(names), window)
    return frozenset((names[j], token) for j in layers)


def embedding_module_name(model: nn.Module) -> str:
    """The name of the input embedding module: its output is what the noise is added to."""
    embedding = model.get_input_embeddings()
    for name, module in model.named_modules():
        if module is embedding:
            return name
    raise ValueError(f"{type(model).__name__}'s input embedding is not one of its named modules")


@torch.no_grad()
def subject_embedding_std(model: nn.Module, tok, subjects: Iterable[str]) -> float:
    """sigma: the standard deviation of all entries of the input embeddings of the subjects' tokens.

    Each subject is encoded alone and without special tokens (a BOS is not a subject token; ROME's
    GPT tokenizers add none). Read through the embedding module, so a model that scales its
    embeddings (Gemma) is measured as it is corrupted.
    """
    ids = [i for s in subjects for i in tok(s, add_special_tokens=False)["input_ids"]]
    if not ids:
        raise ValueError("no subject tokens to measure the embeddings' spread on")
    vectors = model.get_input_embeddings()(torch.tensor(ids, device=model_device(model)))
    return vectors.float().std().item()


def draw_noise(level: float, samples: int, n_tokens: int, hidden: int, seed: int) -> torch.Tensor:
    """``(samples, n_tokens, hidden)`` Gaussian draws of std ``level`` (ROME: 3 x subject_embedding_std)."""
    generator = torch.Generator().manual_seed(seed)
    return level * torch.randn(samples, n_tokens, hidden, generator=generator)


@dataclass(frozen=True)
class TracedFact:
    """A prompt ready for tracing: its ids, the subject's token span and the clean prediction."""

    input_ids: tuple[int, ...]
    subject: tuple[int, int]  # [start, end) token positions of the subject
    answer: int               # the clean run's most likely next token
    clean_prob: float         # its probability in the clean run


def _forward_options(model: nn.Module) -> dict:
    # Only the last position's logits are read: computing the others costs a vocabulary-sized matmul per token.
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


@torch.no_grad()
def _last_logits(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False,
                **_forward_options(model))
    return out.logits[:, -1].float()


@torch.no_grad()
def prepare_fact(model: nn.Module, tok, prompt: str, subject: str) -> TracedFact:
    """The prompt's ids (as util.tokens.encode gives them), where its first ``subject`` lies, and the
    model's clean prediction."""
    if subject not in prompt:
        raise ValueError(f"subject {subject!r} does not occur in prompt {prompt!r}")
    template = prompt.replace(subject, "{}", 1)
    start = fact_token_index(tok, template, subject, "subject_first")
    end = fact_token_index(tok, template, subject, "subject_last") + 1
    if end <= start:
        raise ValueError(f"subject {subject!r} has no tokens of its own in {prompt!r}")
    ids = encode(tok, prompt)
    probs = torch.softmax(_last_logits(model, torch.tensor([ids], device=model_device(model)))[0], dim=-1)
    answer = int(probs.argmax())
    return TracedFact(tuple(ids), (start, end), answer, float(probs[answer]))


def _restore(output: torch.Tensor, mask: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Rows x positions marked in ``mask`` take the clean run's value; the others keep their own."""
    # .to(output.device): a model spread over devices (device_map) runs each layer where its weights are.
    return torch.where(mask.to(output.device)[..., None], clean.to(output.device, output.dtype)[None], output)


def _add_noise(output: torch.Tensor, noise: torch.Tensor, span: tuple[int, int]) -> torch.Tensor:
    noisy = output.clone()
    noisy[:, span[0]:span[1]] += noise.to(output.device, output.dtype)
    return noisy


class Tracer:
    """Corrupted runs of one fact, any sets of states restored to their clean values.

    ``noise`` is ``(samples, subject tokens, hidden size)``: every restoration is run once per draw,
    with the same draws. ``sites``: every module whose output may be restored (their clean outputs
    are recorded once, here).
    """

    def __init__(self, model: nn.Module, fact: TracedFact, noise: torch.Tensor, sites: Iterable[str],
                 rows_per_pass: int = 256) -> None:
        start, end = fact.subject
        if noise.dim() != 3 or noise.shape[1] != end - start:
            raise ValueError(f"noise must be (samples, {end - start} subject tokens, hidden), got {tuple(noise.shape)}")
        self.model, self.fact = model, fact
        self.device = model_device(model)
        self.noise = noise.to(self.device)
        self.samples = noise.shape[0]
        self.embedding = embedding_module_name(model)
        self.ids = torch.tensor([fact.input_ids], device=self.device)
        with torch.no_grad(), capture(model, output_of=sorted(set(sites))) as clean:
            model(input_ids=self.ids, attention_mask=torch.ones_like(self.ids), use_cache=False)
        self.clean = {name: out[0] for name, out in clean.outputs.items()}  # name -> (tokens, hidden)
        self.per_pass = max(1, rows_per_pass // self.samples)  # restorations per forward pass

    def probs(self, restorations: Sequence[Collection[State]]) -> torch.Tensor:
        """P(answer) per restoration, the mean over the noise draws; an empty restoration is the corrupted run."""
        parts = [self._pass(restorations[i : i + self.per_pass]) for i in range(0, len(restorations), self.per_pass)]
        return torch.cat(parts) if parts else torch.zeros(0)

    def _masks(self, chunk: Sequence[Collection[State]]) -> dict[str, torch.Tensor]:
        """Per restored module, which (row, position) takes its clean value; restoration r owns rows
        r*samples .. (r+1)*samples - 1."""
        rows, width = len(chunk) * self.samples, self.ids.shape[1]
        masks: dict[str, torch.Tensor] = {}
        for r, states in enumerate(chunk):
            for name, position in states:
                if name not in self.clean:
                    raise ValueError(f"{name!r} was not among the sites recorded for this fact")
                if not 0 <= position < width:
                    raise ValueError(f"position {position} is outside the prompt's {width} tokens")
                mask = masks.setdefault(name, torch.zeros(rows, width, dtype=torch.bool))
                mask[r * self.samples : (r + 1) * self.samples, position] = True
        return {name: mask.to(self.device) for name, mask in masks.items()}

    @torch.no_grad()
    def _pass(self, chunk: Sequence[Collection[State]]) -> torch.Tensor:
        rows = len(chunk) * self.samples
        noise = self.noise.repeat(len(chunk), 1, 1)  # row r*samples + s gets draw s
        with ExitStack() as hooks:
            hooks.enter_context(edit_output(self.model, self.embedding,
                                            partial(_add_noise, noise=noise, span=self.fact.subject)))
            for name, mask in self._masks(chunk).items():
                hooks.enter_context(edit_output(self.model, name, partial(_restore, mask=mask, clean=self.clean[name])))
            logits = _last_logits(self.model, self.ids.expand(rows, -1))
        probs = torch.softmax(logits, dim=-1)[:, self.fact.answer]
        return probs.view(len(chunk), self.samples).mean(dim=1).cpu()


def trace_table(tracer: Tracer, kind: str, names: Sequence[str], positions: Sequence[int], window: int) -> torch.Tensor:
    """``(len(positions), layers)``: P(answer) with ``kind``'s state(s) at (position, layer) restored."""
    restorations = [restoration(kind, names, layer, p, window) for p in positions for layer in range(len(names))]
    return tracer.probs(restorations).view(len(positions), len(names))


def token_classes(subject: tuple[int, int], n_tokens: int) -> dict[str, list[int]]:
    """The positions of each of TOKEN_CLASSES, as ROME's average figures group them. A one-token
    subject's token is both its first and its last; a class may be empty (no middle subject tokens)."""
    start, end = subject
    if not 0 <= start < end <= n_tokens:
        raise ValueError(f"subject span {subject} does not lie within {n_tokens} tokens")
    after = [end] if end < n_tokens else []
    return dict(zip(TOKEN_CLASSES, (
        [start], list(range(start + 1, end - 1)), [end - 1], after, list(range(end + 1, n_tokens - 1)),
        [n_tokens - 1],
    )))


class ClassAverages:
    """Means over facts per token class and layer: of the restored probability and of the indirect effect.

    A class with several positions per fact (middle subject tokens, further tokens) counts every
    position, as ROME's averages do.
    """

    def __init__(self, n_layers: int) -> None:
        self.n_layers = n_layers
        self.prob_sums = torch.zeros(len(TOKEN_CLASSES), n_layers, dtype=torch.float64)
        self.effect_sums = torch.zeros(len(TOKEN_CLASSES), n_layers, dtype=torch.float64)
        self.counts = torch.zeros(len(TOKEN_CLASSES), dtype=torch.long)

    def add(self, table: torch.Tensor, first_position: int, corrupted_prob: float,
            classes: dict[str, list[int]]) -> None:
        """``table``: one fact's trace_table for positions first_position, first_position + 1, ..."""
        for c, name in enumerate(TOKEN_CLASSES):
            for position in classes[name]:
                row = table[position - first_position].double()
                self.prob_sums[c] += row
                self.effect_sums[c] += row - corrupted_prob
                self.counts[c] += 1

    def means(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean restored probability, mean indirect effect), each ``(classes, layers)``; NaN for an empty class."""
        counts = self.counts.double()[:, None]
        return self.prob_sums / counts, self.effect_sums / counts
