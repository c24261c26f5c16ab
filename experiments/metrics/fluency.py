"""Fluency: sampled generations and their n-gram entropy (low entropy = repetitive, collapsed text).

By default everything here follows the evaluation code of ROME/MEMIT/NSE, so the numbers compare
with the published tables:

- generation: top-5 sampling until each text holds ``MAX_LENGTH`` (100) tokens *in total*, prompt
  included; no stop at EOS; the text is decoded with its special tokens, NFKD-normalised, blank
  lines ("\\n\\n") turned into a space and GPT-2's ``<|endoftext|>`` removed;
- entropy: words from NLTK's ``word_tokenize`` (case kept); per text the entropy in bits of the
  bigram and of the trigram frequency distribution, weighted 2/3 and 4/3, then averaged; then the
  mean over texts.

Each departure from that is a named option of :class:`MetricOptions`, off by default
(README, "Comparability with the papers").
"""
from __future__ import annotations

import functools
import math
import re
import unicodedata
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

import torch

from util.generation import SampleGroup, sample_token_ids_grouped
from util.tokens import encode, pad_token_id

MAX_LENGTH = 100  # the original's max_out_len: total tokens per text, the prompt's included
TOP_K = 5
NGRAM_ORDERS = (2, 3)
NGRAM_WEIGHTS = (2 / 3, 4 / 3)

# Departures from the original metric code; each is a MetricOptions field of the same name.
DEPARTURES = {
    "stop_at_eos": "end a generation at the tokenizer's EOS (the original samples on past it)",
    "skip_special_tokens": "decode generations without special tokens such as BOS (the original keeps "
                           "them, removing only GPT-2's <|endoftext|>)",
    "regex_word_tokenizer": "split words for n-gram entropy with this project's regex instead of NLTK's "
                            "word_tokenize",
}

# Names recorded in a run's config.json for the word tokenizer that was used.
NLTK_EXACT = "nltk.word_tokenize"  # NLTK's own punkt_tab data installed: word_tokenize itself
NLTK_FALLBACK = "nltk-untrained-punkt"  # punkt_tab data missing: see _nltk_tokenizer
REGEX_TOKENIZER = "regex"

# The project's older stand-in tokenizer (option regex_word_tokenizer): runs of letters/digits,
# kept together across inner apostrophes, hyphens and dots ("don't", "well-known", "3.5"); every
# other non-space character is a token of its own.
_WORD_RE = re.compile(r"[^\W_]+(?:['’\-.][^\W_]+)*|\S")


@dataclass(frozen=True)
class MetricOptions:
    """Departures from the original Fluency/Consistency code; all off = the original (see DEPARTURES)."""

    stop_at_eos: bool = False
    skip_special_tokens: bool = False
    regex_word_tokenizer: bool = False

    @classmethod
    def from_names(cls, names: Iterable[str] | None) -> MetricOptions:
        """Options with the named departures on, e.g. ``from_names(["stop_at_eos"])``."""
        names = list(names or [])
        unknown = sorted(set(names) - set(DEPARTURES))
        if unknown:
            raise ValueError(f"unknown metric departure(s) {unknown}; known: {', '.join(DEPARTURES)}")
        return cls(**{name: True for name in names})

    def names(self) -> list[str]:
        """The departures that are on, in DEPARTURES order."""
        return [f.name for f in fields(self) if getattr(self, f.name)]


# --- word tokenization -------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _nltk_tokenizer() -> tuple[str, Callable[[str], list[str]]]:
    """NLTK's ``word_tokenize`` if NLTK's own English Punkt model (``nltk.download('punkt_tab')``,
    ``tokenizers/punkt_tab/english/`` under ``nltk.data.path``) is installed, else the same pipeline
    with an untrained Punkt model. No Punkt model is shipped with this project: its licence is
    unclarified upstream (README, "NLTK's tokenizer data"). Decided once per process; imported
    lazily because importing nltk takes about a second."""
    from nltk.tokenize import punkt_model_available
    from nltk.tokenize import word_tokenize as nltk_word_tokenize

    if punkt_model_available("english"):  # loads it as word_tokenize does, from NLTK's data paths
        return NLTK_EXACT, nltk_word_tokenize
    # word_tokenize = Punkt sentences, then NLTKWordTokenizer per sentence. Without the trained
    # model only abbreviation knowledge is lost ("Mr." ends a sentence); skipping the sentence
    # split instead would glue every sentence-final period to its word ("sat." in mid-text).
    return NLTK_FALLBACK, punkt_word_tokenizer()


def punkt_word_tokenizer(params: Any = None) -> Callable[[str], list[str]]:
    """``word_tokenize``'s pipeline (Punkt sentences, then ``NLTKWordTokenizer`` per sentence) with
    the Punkt parameters ``params`` (a ``PunktParameters``, e.g. :func:`read_punkt_params`), or with
    an untrained model when None."""
    from nltk.tokenize import NLTKWordTokenizer
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    sentences, words = PunktSentenceTokenizer(), NLTKWordTokenizer()
    if params is not None:
        sentences._params = params  # as nltk's PunktTokenizer.load_lang sets it
    return lambda text: [w for s in sentences.tokenize(text) for w in words.tokenize(s)]


def read_punkt_params(lang_dir: str | Path):
    """The Punkt parameters in a punkt_tab language folder (``abbrev_types.txt``,
    ``collocations.tab``, ``ortho_context.tab``, ``sent_starters.txt``), decoded as nltk's
    ``load_punkt_params`` decodes them; nltk's own loader opens files under its data paths only.
    For measurements against a model kept outside NLTK's data (bench/punkt_effect.py)."""
    from nltk.tabdata import PunktDecoder
    from nltk.tokenize.punkt import PunktParameters

    lang_dir = Path(lang_dir)

    def read(name: str, decode):
        with (lang_dir / name).open(encoding="utf-8") as f:
            return decode(f)

    params, dec = PunktParameters(), PunktDecoder()
    params.collocations = set(read("collocations.tab", dec.tab2tups))
    params.sent_starters = read("sent_starters.txt", dec.txt2set)
    params.abbrev_types = read("abbrev_types.txt", dec.txt2set)
    params.ortho_context = read("ortho_context.tab", dec.tab2intdict)
    return params


def word_tokenizer_name(regex: bool = False) -> str:
    """Which tokenizer :func:`word_tokenize` uses here: NLTK_EXACT, NLTK_FALLBACK or REGEX_TOKENIZER."""
    return REGEX_TOKENIZER if regex else _nltk_tokenizer()[0]


def word_tokenize(text: str, regex: bool = False) -> list[str]:
    """Word and punctuation tokens of ``text``, case kept, as the original metric splits them."""
    if regex:
        return _WORD_RE.findall(text)
    return _nltk_tokenizer()[1](text)


# --- n-gram entropy ----------------------------------------------------------------------------


def ngram_distribution_entropy(tokens: Sequence[str], n: int) -> float:
    """Entropy in bits of the frequency distribution of ``tokens``' n-grams (0 if there are none)."""
    counts = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0


def text_ngram_entropy(text: str, regex: bool = False) -> float:
    """Mean of the weighted bigram and trigram entropies of one text (weights 2/3 and 4/3)."""
    return tokens_ngram_entropy(word_tokenize(text, regex=regex))


def tokens_ngram_entropy(tokens: Sequence[str]) -> float:
    """:func:`text_ngram_entropy` of an already tokenized text."""
    weighted = [w * ngram_distribution_entropy(tokens, n) for n, w in zip(NGRAM_ORDERS, NGRAM_WEIGHTS)]
    return sum(weighted) / len(weighted)


def ngram_entropy(texts: Sequence[str], regex: bool = False) -> float:
    """Mean over ``texts`` of :func:`text_ngram_entropy` (the paper's Fluency, before ×100)."""
    if isinstance(texts, str):
        raise TypeError("ngram_entropy takes a list of texts; wrap a single text in a list")
    if not texts:
        raise ValueError("ngram_entropy needs at least one text")
    return sum(text_ngram_entropy(t, regex=regex) for t in texts) / len(texts)


# --- generation --------------------------------------------------------------------------------


def generation_ids(
    model: torch.nn.Module,
    tok: Any,
    prompts: Sequence[str],
    max_length: int = MAX_LENGTH,
    top_k: int = TOP_K,
    seed: int = 0,
    stop_at_eos: bool = False,
) -> list[list[int]]:
    """Prompt ids + sampled ids per prompt, under the original's length rule.

    Every text is filled up to ``max_length`` tokens in total, its prompt (with BOS, if the
    tokenizer adds one) included. The original sampled all prompts of a case as one batch until the
    batch was ``max_length`` wide, so when any prompt already has ``max_length`` tokens no prompt
    gets new ones; that is kept (with a warning). Each prompt is otherwise sampled as if alone.
    """
    if isinstance(prompts, str):
        raise TypeError("generation takes a list of prompts; wrap a single prompt in a list")
    return generation_ids_many(model, tok, [prompts], [seed], max_length, top_k, stop_at_eos)[0]


def generation_ids_many(
    model: torch.nn.Module,
    tok: Any,
    prompt_lists: Sequence[Sequence[str]],
    seeds: Sequence[int],
    max_length: int = MAX_LENGTH,
    top_k: int = TOP_K,
    stop_at_eos: bool = False,
) -> list[list[list[int]]]:
    """:func:`generation_ids` of several cases (each its prompts and its seed) in one batch: each
    case draws from its own generator what it would draw alone (util.generation.SampleGroup)."""
    if max_length < 1 or top_k < 1:
        raise ValueError(f"need max_length >= 1 and top_k >= 1, got {max_length} and {top_k}")
    cases = [[encode(tok, p) for p in prompts] for prompts in prompt_lists]
    if any(not ids for prompt_ids in cases for ids in prompt_ids):
        raise ValueError("every generation prompt must tokenize to at least one token")
    rows, groups, group_of = [], [], []  # group_of: per case, its SampleGroup or None (no new tokens)
    for prompt_ids, seed in zip(cases, seeds):
        widest = max((len(ids) for ids in prompt_ids), default=0)
        if widest >= max_length:
            warnings.warn(f"a generation prompt has {widest} tokens >= max_length={max_length}: as in the "
                          "original, no prompt of this batch gets generated tokens", stacklevel=2)
        if not prompt_ids or widest >= max_length:
            group_of.append(None)
            continue
        steps = max_length - min(len(ids) for ids in prompt_ids)
        groups.append(SampleGroup(len(rows), len(rows) + len(prompt_ids), seed, steps))
        group_of.append(groups[-1])
        rows += prompt_ids
    eos_id = tok.eos_token_id if stop_at_eos else None
    new = sample_token_ids_grouped(model, rows, groups, top_k, pad_token_id(tok), eos_id) if rows else []
    return [[list(ids) for ids in prompt_ids] if g is None else
            [ids + row[: max_length - len(ids)] for ids, row in zip(prompt_ids, new[g.start : g.stop])]
            for prompt_ids, g in zip(cases, group_of)]


def decode_like_original(tok: Any, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    """``ids`` as text, post-processed as the original did before measuring it."""
    text = tok.decode(list(ids), skip_special_tokens=skip_special_tokens)
    return unicodedata.normalize("NFKD", text).replace("\n\n", " ").replace("<|endoftext|>", "")


def generate_texts(
    model: torch.nn.Module,
    tok: Any,
    prompts: Sequence[str],
    max_length: int = MAX_LENGTH,
    top_k: int = TOP_K,
    seed: int = 0,
    options: MetricOptions = MetricOptions(),
) -> list[str]:
    """The texts Fluency and Consistency are measured on (see :func:`generation_ids`); seeded,
    all prompts in one batch, each text starting with its prompt."""
    rows = generation_ids(model, tok, prompts, max_length, top_k, seed, stop_at_eos=options.stop_at_eos)
    return _decoded(tok, rows, options)


def generate_texts_many(
    model: torch.nn.Module,
    tok: Any,
    prompt_lists: Sequence[Sequence[str]],
    seeds: Sequence[int],
    max_length: int = MAX_LENGTH,
    top_k: int = TOP_K,
    options: MetricOptions = MetricOptions(),
) -> list[list[str]]:
    """:func:`generate_texts` of several cases in one batch (see :func:`generation_ids_many`)."""
    cases = generation_ids_many(model, tok, prompt_lists, seeds, max_length, top_k, stop_at_eos=options.stop_at_eos)
    return [_decoded(tok, rows, options) for rows in cases]


def _decoded(tok: Any, rows: Sequence[Sequence[int]], options: MetricOptions) -> list[str]:
    return [decode_like_original(tok, row, options.skip_special_tokens) for row in rows]


def metric_settings(options: MetricOptions = MetricOptions()) -> dict[str, Any]:
    """What a run's config.json records about how Fluency/Consistency were computed."""
    return {
        "generation": {"max_length_with_prompt": MAX_LENGTH, "top_k": TOP_K},
        "word_tokenizer": word_tokenizer_name(regex=options.regex_word_tokenizer),
        "departures": options.names(),
    }
