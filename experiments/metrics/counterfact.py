"""Per-case CounterFact metrics (the ``post`` dict of one case file).

For every rewrite, paraphrase and neighborhood prompt: the mean per-token NLL of
``" " + target_new`` and of ``" " + target_true`` (teacher forced), and whether greedy decoding
reproduces the whole target (target_new for rewrite/paraphrase, target_true for neighborhood).
Optionally sampled generations with their Fluency and Consistency.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from sklearn.feature_extraction.text import TfidfVectorizer

from dsets.attr_snippets import AttributeSnippets
from experiments.metrics.consistency import tfidf_similarity
from experiments.metrics.fluency import MAX_LENGTH, MetricOptions, generate_texts_many, ngram_entropy
from experiments.metrics.scoring import score_continuations
from util.architectures import model_device
from util.requests import check_prompt_template, fill_prompt, with_leading_space
from util.tokens import encode, encode_target

PROMPT_GROUPS = ("rewrite", "paraphrase", "neighborhood")
ESSENCE_MAX_TOKENS = 100  # the subject snippets are long; the original scored their first 100 tokens


def _prompt_groups(record: dict[str, Any]) -> dict[str, list[str]]:
    rewrite = record["requested_rewrite"]
    check_prompt_template(rewrite["prompt"], where=f"case_id={record.get('case_id', '?')}: requested_rewrite.prompt")
    return {
        "rewrite": [fill_prompt(rewrite["prompt"], rewrite["subject"])],
        "paraphrase": list(record["paraphrase_prompts"]),
        "neighborhood": list(record["neighborhood_prompts"]),
    }


def probability_metrics(
    model: torch.nn.Module, tok: Any, record: dict[str, Any], batch_size: int = 64
) -> dict[str, list]:
    """``*_prompts_probs`` (NLLs of both targets) and ``*_prompts_correct`` for the three groups."""
    return probability_metrics_many(model, tok, [record], batch_size=batch_size)[0]


def probability_metrics_many(
    model: torch.nn.Module, tok: Any, records: Sequence[dict[str, Any]], batch_size: int = 64
) -> list[dict[str, list]]:
    """:func:`probability_metrics` of every record, their prompts scored together: rows of many
    cases fill each forward pass (the scores are each prompt's own, up to float round-off)."""
    pairs, layouts = [], []
    for record in records:
        rewrite = record["requested_rewrite"]
        targets = [encode_target(tok, with_leading_space(rewrite[key]["str"])) for key in ("target_new", "target_true")]
        groups = _prompt_groups(record)
        layouts.append([len(groups[g]) for g in PROMPT_GROUPS])
        pairs += [(encode(tok, p), target) for g in PROMPT_GROUPS for p in groups[g] for target in targets]
    scores = iter(score_continuations(model, tok, pairs, batch_size=batch_size))
    return [_probability_post(scores, counts) for counts in layouts]


def _probability_post(scores: Iterator, counts: Sequence[int]) -> dict[str, list]:
    """One record's metrics from its scores, (new, true) per prompt, groups in PROMPT_GROUPS order."""
    post: dict[str, list] = {}
    for group, count in zip(PROMPT_GROUPS, counts):
        per_prompt = [(next(scores), next(scores)) for _ in range(count)]
        post[f"{group}_prompts_probs"] = [{"target_new": n.nll, "target_true": t.nll} for n, t in per_prompt]
        # Neighborhood prompts are about other subjects: success there is keeping the true object.
        post[f"{group}_prompts_correct"] = [
            (t if group == "neighborhood" else n).all_correct for n, t in per_prompt
        ]
    return post


@torch.no_grad()
def perplexity(model: torch.nn.Module, tok: Any, text: str, max_tokens: int = ESSENCE_MAX_TOKENS) -> float:
    """exp of the mean NLL of ``text``'s tokens (first ``max_tokens`` ids, BOS as the tokenizer adds it)."""
    ids = encode(tok, text)[:max_tokens]
    if len(ids) < 2:
        raise ValueError(f"perplexity needs at least two tokens, {text!r} has {len(ids)}")
    input_ids = torch.tensor([ids], device=model_device(model))
    logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits[0, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits, input_ids[0, 1:])
    return math.exp(nll.item())


def generation_metrics(
    model: torch.nn.Module,
    tok: Any,
    record: dict[str, Any],
    snips: AttributeSnippets | None,
    vec: TfidfVectorizer | None,
    seed: int = 0,
    max_length: int = MAX_LENGTH,
    options: MetricOptions = MetricOptions(),
) -> dict[str, Any]:
    """``text`` and ``ngram_entropy``; with snippets also ``reference_score`` (and ``essence_score``).

    ``max_length`` caps each text's tokens, prompt included (the original's rule); ``options``
    names departures from the original metric code (all off by default).
    """
    return generation_metrics_many(model, tok, [record], snips, vec, [seed], max_length, options)[0]


def generation_metrics_many(
    model: torch.nn.Module,
    tok: Any,
    records: Sequence[dict[str, Any]],
    snips: AttributeSnippets | None,
    vec: TfidfVectorizer | None,
    seeds: Sequence[int],
    max_length: int = MAX_LENGTH,
    options: MetricOptions = MetricOptions(),
) -> list[dict[str, Any]]:
    """:func:`generation_metrics` of several records, their texts sampled in one batch (each case
    from its own seed, as alone: experiments.metrics.fluency.generation_ids_many)."""
    if snips is not None and vec is None:
        raise ValueError("snippets were given without a TF-IDF vectorizer; load one with dsets.load_tfidf_vectorizer")
    all_texts = generate_texts_many(model, tok, [r["generation_prompts"] for r in records], seeds, max_length,
                                    options=options)
    return [_text_metrics(model, tok, record, texts, snips, vec, options) for record, texts in zip(records, all_texts)]


def _text_metrics(model, tok, record: dict[str, Any], texts: list[str], snips: AttributeSnippets | None,
                  vec: TfidfVectorizer | None, options: MetricOptions) -> dict[str, Any]:
    out: dict[str, Any] = {"text": texts, "ngram_entropy": ngram_entropy(texts, regex=options.regex_word_tokenizer)}
    if snips is None:
        return out
    rewrite = record["requested_rewrite"]
    relation_id, target_id = rewrite.get("relation_id"), rewrite["target_new"].get("id")
    references = snips.get(relation_id, target_id)
    if not references:
        warnings.warn(
            f"case_id={record.get('case_id', '?')}: no attribute snippets for ({relation_id}, {target_id}); "
            "reference_score left out for this case",
            stacklevel=3,
        )
    else:
        out["reference_score"] = tfidf_similarity(" ".join(texts), " ".join(s["text"] for s in references), vec)
    essence = [s["text"] for s in snips.samples_about(rewrite["subject"])]
    if essence:
        out["essence_score"] = perplexity(model, tok, " ".join(essence))
        out["essence_text"] = essence
    return out


def compute_rewrite_quality_counterfact(
    model: torch.nn.Module,
    tok: Any,
    record: dict[str, Any],
    snips: AttributeSnippets | None = None,
    vec: TfidfVectorizer | None = None,
    generation: bool = True,
    *,
    seed: int = 0,
    max_length: int = MAX_LENGTH,
    options: MetricOptions = MetricOptions(),
    batch_size: int = 64,
) -> dict[str, Any]:
    """The per-case ``post`` dict for one CounterFact record (see module docstring)."""
    post = probability_metrics(model, tok, record, batch_size=batch_size)
    if generation and record.get("generation_prompts"):
        post.update(generation_metrics(model, tok, record, snips, vec, seed=seed, max_length=max_length,
                                       options=options))
    return post
