"""Metrics on hand-computed cases (a fake bigram model with known probabilities) and on stories260K."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import COUNTERFACT, ZSRE_POSTS, cf_post

from dsets import AttributeSnippets, vectorizer_from_stats
from experiments.metrics import (
    METRIC_DESCRIPTIONS,
    MetricOptions,
    compute_rewrite_quality_counterfact,
    compute_rewrite_quality_zsre,
    generate_texts,
    generation_ids,
    ngram_entropy,
    score_continuations,
    summarize_cases,
    text_ngram_entropy,
    tfidf_similarity,
    word_tokenize,
)
from experiments.ds_kinds import kind_named
from util.tokens import encode


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """The 260K-parameter model gains nothing from intra-op threads, and when other processes share
    the two cores, OpenMP threads waiting on each other make each forward pass ~100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- a word-level tokenizer and a bigram "model" whose next-token probabilities are written out ---

WORDS = ["<s>", "</s>", "the", "cat", "sat", "on", "mat", "dog", "paris", "rome"]
ID = {w: i for i, w in enumerate(WORDS)}

# P(next | current) for the rows the tests read; every other next token shares the remainder.
BIGRAMS = {
    "the": {"mat": 0.5, "dog": 0.25},
    "on": {"the": 0.6},
    "dog": {"sat": 0.7},
    "rome": {"dog": 0.8},
    "mat": {"on": 0.5},
    "sat": {"on": 0.6},
    "paris": {"</s>": 0.9},
}


def rest(row: str) -> float:
    """Probability of each next token not listed in BIGRAMS[row]."""
    listed = BIGRAMS[row]
    return (1.0 - sum(listed.values())) / (len(WORDS) - len(listed))


class WordTokenizer:
    """Splits on spaces (a leading space changes nothing); optionally adds BOS and/or EOS."""

    def __init__(self, bos: bool = False, append_eos: bool = False) -> None:
        self.bos, self.append_eos = bos, append_eos
        self.bos_token_id, self.eos_token_id, self.pad_token_id = ID["<s>"], ID["</s>"], None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = [ID[w] for w in text.split()]
        if add_special_tokens:
            ids = [self.bos_token_id] * self.bos + ids + [self.eos_token_id] * self.append_eos
        return {"input_ids": ids}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        specials = {self.bos_token_id, self.eos_token_id} if skip_special_tokens else set()
        return " ".join(WORDS[i] for i in ids if i not in specials)


class BigramModel(torch.nn.Module):
    """logits[b, t] = log P(· | input_ids[b, t]); remembers the inputs it was given."""

    def __init__(self) -> None:
        super().__init__()
        table = torch.full((len(WORDS), len(WORDS)), 1.0 / len(WORDS))
        for row, listed in BIGRAMS.items():
            table[ID[row]] = rest(row)
            for word, p in listed.items():
                table[ID[row], ID[word]] = p
        self.log_table = torch.nn.Parameter(table.log(), requires_grad=False)
        self.calls: list[torch.Tensor] = []
        self.positions: list[torch.Tensor | None] = []

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        self.calls.append(input_ids.clone())
        self.positions.append(position_ids)
        return SimpleNamespace(logits=self.log_table[input_ids], past_key_values=None)


def nll(*probs: float) -> float:
    """Mean negative log of per-token probabilities."""
    return -sum(math.log(p) for p in probs) / len(probs)


CF_RECORD = {
    "case_id": 1,
    "requested_rewrite": {"prompt": "{} sat on the", "subject": "cat", "relation_id": "P1",
                          "target_new": {"str": "mat", "id": "Q1"}, "target_true": {"str": "dog sat", "id": "Q2"}},
    "paraphrase_prompts": ["cat sat on"],
    "neighborhood_prompts": ["dog sat on the", "rome"],
    "generation_prompts": [],
}


def test_counterfact_probabilities_hand_computed():
    post = compute_rewrite_quality_counterfact(BigramModel(), WordTokenizer(), CF_RECORD, generation=False)
    expected = {
        # "... the" -> mat: 0.5; -> dog sat: 0.25 then P(sat|dog) 0.7
        "rewrite_prompts_probs": [{"target_new": nll(0.5), "target_true": nll(0.25, 0.7)}],
        # "... on" -> mat: rest(on); -> dog: rest(on), sat: 0.7
        "paraphrase_prompts_probs": [{"target_new": nll(rest("on")), "target_true": nll(rest("on"), 0.7)}],
        "neighborhood_prompts_probs": [
            {"target_new": nll(0.5), "target_true": nll(0.25, 0.7)},
            {"target_new": nll(rest("rome")), "target_true": nll(0.8, 0.7)},
        ],
    }
    for key, rows in expected.items():
        assert len(post[key]) == len(rows)
        for got, want in zip(post[key], rows):
            assert got["target_new"] == pytest.approx(want["target_new"], abs=1e-6)
            assert got["target_true"] == pytest.approx(want["target_true"], abs=1e-6)
    # greedy: after "the" comes mat (rewrite right); after "on" comes the (paraphrase wrong);
    # neighborhood checks target_true "dog sat": after "rome" dog then sat, after "the" mat.
    assert post["rewrite_prompts_correct"] == [True]
    assert post["paraphrase_prompts_correct"] == [False]
    assert post["neighborhood_prompts_correct"] == [False, True]
    assert "ngram_entropy" not in post and "text" not in post


def test_sequences_are_built_from_ids_with_bos_once_and_right_padding():
    model, tok = BigramModel(), WordTokenizer(bos=True, append_eos=True)
    assert encode(tok, "cat sat") == [ID["<s>"], ID["cat"], ID["sat"]]  # BOS kept, EOS dropped
    scores = score_continuations(model, tok, [(encode(tok, "rome"), [ID["dog"], ID["sat"]]),
                                              (encode(tok, "cat sat on the"), [ID["mat"]])])
    (batch,) = model.calls
    assert batch.tolist() == [  # a target's last token is never read, so it is not input
        [ID["<s>"], ID["rome"], ID["dog"], ID["</s>"], ID["</s>"]],  # padded on the right
        [ID["<s>"], ID["cat"], ID["sat"], ID["on"], ID["the"]],
    ]
    assert scores[0].nll == pytest.approx(nll(0.8, 0.7)) and scores[0].token_hits == (True, True)
    assert scores[1].nll == pytest.approx(nll(0.5)) and scores[1].all_correct


def test_zsre_token_accuracy_hand_computed():
    record = {
        "case_id": 0,
        "requested_rewrite": {"prompt": "{} sat on the", "subject": "cat",
                              "target_new": {"str": "mat dog"}, "target_true": {"str": "<|endoftext|>"}},
        "paraphrase_prompts": ["cat sat on"],
        "neighborhood_prompts": [
            {"prompt": "rome", "target": "dog", "target_id": ID["dog"]},
            {"prompt": "rome dog", "target": "sat", "target_id": ID["sat"]},
            {"prompt": "cat sat on", "target": "mat"},  # no id: the target text is tokenized
        ],
    }
    post = compute_rewrite_quality_zsre(BigramModel(), WordTokenizer(), record)
    # after "the": mat (hit); after "mat": on, not dog (miss). After "on": the, not mat; then miss again.
    assert post == {
        "rewrite_prompts_correct": [True, False],
        "paraphrase_prompts_correct": [False, False],
        "neighborhood_prompts_correct": [True, True, False],
    }


def test_zsre_neighborhood_trusts_target_id_over_text():
    record = {
        "case_id": 0,
        "requested_rewrite": {"prompt": "{} on", "subject": "mat", "target_new": {"str": "the"},
                              "target_true": {"str": "<|endoftext|>"}},
        "paraphrase_prompts": [],
        "neighborhood_prompts": [{"prompt": "rome", "target": "", "target_id": ID["dog"]}],  # "" as from "▁"
    }
    post = compute_rewrite_quality_zsre(BigramModel(), WordTokenizer(), record)
    assert post == {"rewrite_prompts_correct": [True], "paraphrase_prompts_correct": [],
                    "neighborhood_prompts_correct": [True]}


def test_batched_scores_match_single_unpadded_forward(tiny_llama):
    model, tok = tiny_llama
    prompts = ["Once upon a time", "The cat", "Lily and her mom went to the big park to"]
    target = tok(" a dog", add_special_tokens=False)["input_ids"]
    scores = score_continuations(model, tok, [(encode(tok, p), target) for p in prompts])
    for prompt, score in zip(prompts, scores):
        ids = tok(prompt)["input_ids"] + target  # this tokenizer adds BOS and nothing else
        assert ids[0] == tok.bos_token_id
        with torch.no_grad():
            logprobs = model(torch.tensor([ids])).logits[0].log_softmax(-1)
        span = range(len(ids) - len(target) - 1, len(ids) - 1)
        want = -np.mean([logprobs[j, ids[j + 1]].item() for j in span])
        assert score.nll == pytest.approx(want, abs=1e-5)


def test_shared_rows_score_as_one_forward_per_pair(tiny_llama):
    """Pairs whose inputs are prefixes of one another share a row (plan_rows), and only the positions
    read reach the LM head: every score equals its own unpadded forward's, targets of 1-3 tokens."""
    from experiments.metrics.scoring import plan_rows

    model, tok = tiny_llama
    words = [" a dog", " a", " the big park", " dog", " a dog and"]
    targets = [tok(w, add_special_tokens=False)["input_ids"] for w in words]
    prompts = [encode(tok, p) for p in ("Once upon a time", "The cat", "Lily went to")]
    pairs = [(p, t) for p in prompts for t in targets]
    rows = plan_rows(pairs)
    assert len(rows) < len(pairs)  # " a" is read from the row of " a dog" (and " a dog" from " a dog and")
    assert sorted(i for r in rows for i, _ in r.reads) == list(range(len(pairs)))
    scores = score_continuations(model, tok, pairs, batch_size=4)
    for (prompt, target), score in zip(pairs, scores):
        ids = prompt + target
        with torch.no_grad():
            logprobs = model(torch.tensor([ids])).logits[0].log_softmax(-1)
        span = range(len(prompt) - 1, len(ids) - 1)
        assert score.nll == pytest.approx(-np.mean([logprobs[j, ids[j + 1]].item() for j in span]), abs=1e-5)
        assert score.token_hits == tuple(bool(logprobs[j].argmax() == ids[j + 1]) for j in span)


def test_the_head_hook_is_removed_after_scoring(tiny_llama):
    model, tok = tiny_llama
    score_continuations(model, tok, [(encode(tok, "The cat"), [5])])
    assert not model.get_output_embeddings()._forward_pre_hooks
    assert model(torch.tensor([[1, 5, 6]])).logits.shape[1] == 3  # every position again


def test_cases_sampled_together_draw_what_each_draws_alone(tiny_llama):
    """generation_ids_many: one batch, each case from its own seed and length rule, as alone; a case
    whose prompt is already max_length long gets no tokens (the original's rule), beside the others."""
    import warnings

    from experiments.metrics.fluency import generation_ids_many

    model, tok = tiny_llama
    cases = [["Once upon a time", "The cat"], ["Lily went to the park and", "A dog"], ["Tom"],
             ["word " * 20], ["She", "He said that the"]]
    seeds = [3, 4, 5, 6, 7]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the 20-word prompt's warning
        together = generation_ids_many(model, tok, cases, seeds, max_length=16)
        alone = [generation_ids(model, tok, prompts, max_length=16, seed=seed) for prompts, seed in zip(cases, seeds)]
    assert together == alone
    assert together[3] == [encode(tok, "word " * 20)] and all(len(r) == 16 for r in together[0] + together[4])


# --- fluency ------------------------------------------------------------------------------------


def test_regex_word_tokenizer_option():
    assert word_tokenize("It's 3.5 km, well-known!", regex=True) == ["It's", "3.5", "km", ",", "well-known", "!"]
    assert word_tokenize("", regex=True) == [] and word_tokenize("") == []


def test_ngram_entropy_hand_computed():
    # "a b a b a": bigrams ab, ba, ab, ba -> 1 bit; trigrams aba, bab, aba -> H(2/3, 1/3)
    h3 = -(2 / 3) * math.log2(2 / 3) - (1 / 3) * math.log2(1 / 3)
    assert text_ngram_entropy("a b a b a") == pytest.approx((2 / 3 * 1.0 + 4 / 3 * h3) / 2)
    assert text_ngram_entropy("one") == 0.0  # no bigrams at all
    assert ngram_entropy(["a b a b a", "one"]) == pytest.approx((2 / 3 * 1.0 + 4 / 3 * h3) / 4)
    with pytest.raises(TypeError, match="list of texts"):
        ngram_entropy("a b a")


def test_collapsed_text_has_lower_entropy():
    normal = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the "
              "park with her friends, and every morning her mother packed a small red basket for her.")
    collapsed = " ".join(["the ball"] * 20)
    assert ngram_entropy([collapsed]) < 0.5 * ngram_entropy([normal])


def test_generation_greedy_batch_matches_known_output(tiny_llama):
    model, tok = tiny_llama
    # Greedy continuations of stories260K recorded in assets/SOURCES.md.
    known = {
        "Once upon a time": "Once upon a time, there was a little girl named Lily. She loved to play outside in "
                            "the park. One day, she saw a big, red ball.",
        "The capital of France is": "The capital of France is a big, red ball. He liked to play with his ball. "
                                    "He liked to play with his ball. He liked to play with his ball.\nO",
    }
    texts = generate_texts(model, tok, list(known), max_length=26, top_k=1)  # different lengths: left padding
    for text, reference in zip(texts, known.values()):
        assert text.startswith("<s> ") and len(text) > 40 and reference.startswith(text[4:])  # BOS kept, as originally


def test_generation_is_seeded_and_bounded(tiny_llama):
    model, tok = tiny_llama
    prompts = ["Once upon a time", "Tom had a"]
    first = generation_ids(model, tok, prompts, max_length=16, seed=3)
    assert first == generation_ids(model, tok, prompts, max_length=16, seed=3)
    others = [generation_ids(model, tok, prompts, max_length=16, seed=s) for s in (4, 5)]
    assert any(o != first for o in others)
    for prompt, row in zip(prompts, first):
        assert row[: len(encode(tok, prompt))] == encode(tok, prompt) and len(row) == 16
    texts = generate_texts(model, tok, prompts, max_length=16, seed=3, options=MetricOptions(skip_special_tokens=True))
    assert all(t.startswith(p) for t, p in zip(texts, prompts))


def test_generation_option_stops_at_eos_and_at_the_length_cap():
    model = BigramModel()
    # greedy: paris -> </s> at once; rome -> dog sat on the mat on (6 tokens, then 8 with <s> rome)
    options = MetricOptions(stop_at_eos=True, skip_special_tokens=True)
    texts = generate_texts(model, WordTokenizer(bos=True), ["paris", "rome"], max_length=8, top_k=1, options=options)
    assert texts == ["paris", "rome dog sat on the mat on"]
    assert len(model.calls) == 6 and model.calls[0][:, -1].tolist() == [ID["paris"], ID["rome"]]


def test_generation_can_run_past_eos():
    from util.generation import sample_continuations, sample_token_ids

    model = BigramModel()
    (row,) = sample_token_ids(model, [[ID["<s>"], ID["paris"]]], max_new_tokens=3, top_k=1, seed=0,
                              pad_id=ID["</s>"], eos_id=None)
    assert len(row) == 3 and row[0] == ID["</s>"]  # greedy paris -> </s>, then two more tokens
    tok = WordTokenizer(bos=True)
    (text,) = sample_continuations(model, tok, ["paris"], 3, top_k=1, stop_at_eos=False)
    assert text == tok.decode([ID["<s>"], ID["paris"]] + row, skip_special_tokens=True)
    assert generate_texts(model, WordTokenizer(bos=True), []) == []
    with pytest.raises(ValueError, match="top_k >= 1"):
        generate_texts(model, WordTokenizer(bos=True), ["paris"], top_k=0)


def test_generation_positions_count_real_tokens_only():
    # Absolute-position models (GPT-2) would see a left-padded prompt shifted without this.
    model = BigramModel()
    generate_texts(model, WordTokenizer(bos=True), ["rome", "cat sat on"], max_length=5, top_k=1)
    pad = ID["</s>"]
    assert model.calls[0].tolist() == [[pad, pad, ID["<s>"], ID["rome"]], [ID["<s>"], ID["cat"], ID["sat"], ID["on"]]]
    assert model.positions[0].tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]
    assert model.positions[1].tolist() == [[2], [4]]


# --- consistency ---------------------------------------------------------------------------------


def test_tfidf_similarity_hand_computed():
    vec = vectorizer_from_stats(np.array([1.0, 1.0, 1.0]), {"piano": 0, "violin": 1, "drum": 2})
    assert tfidf_similarity("piano", "piano violin", vec) == pytest.approx(1 / math.sqrt(2))
    assert tfidf_similarity("piano piano", "piano", vec) == pytest.approx(1.0)
    assert tfidf_similarity("drum", "violin", vec) == 0.0
    assert tfidf_similarity("unknown words", "piano", vec) == 0.0  # no known word: no direction


# --- the full CounterFact case on a real model -----------------------------------------------------


def test_counterfact_case_with_generation_on_tiny_llama(tiny_llama):
    from dsets import CounterFactDataset, fit_tfidf

    model, tok = tiny_llama
    record = CounterFactDataset(COUNTERFACT, size=1)[0]
    snips = AttributeSnippets.from_records([
        {"relation_id": "P176", "target_id": "Q2283",
         "samples": [{"name": "Windows 10", "text": "Windows 10 is an operating system made by Microsoft."}]},
        {"relation_id": "P176", "target_id": "Q27586",
         "samples": [{"name": "Ferrari F40", "text": "The Ferrari F40 is a sports car built by Ferrari."}]},
    ])
    vec = fit_tfidf(snips.texts() + ["Once upon a time there was a little red car."])
    post = compute_rewrite_quality_counterfact(model, tok, record, snips, vec, max_length=50, seed=1)
    assert len(post["rewrite_prompts_probs"]) == 1 and len(post["paraphrase_prompts_probs"]) == 2
    assert len(post["neighborhood_prompts_probs"]) == 10 and len(post["neighborhood_prompts_correct"]) == 10
    assert all(v > 0 for row in post["neighborhood_prompts_probs"] for v in row.values())
    assert len(post["text"]) == 10 and post["text"][0].startswith("<s> Ferrari F40 is sold by")
    assert post["ngram_entropy"] > 0 and 0.0 <= post["reference_score"] <= 1.0
    assert post["essence_score"] > 1.0 and post["essence_text"] == ["The Ferrari F40 is a sports car built by Ferrari."]
    again = compute_rewrite_quality_counterfact(model, tok, record, snips, vec, max_length=50, seed=1)
    assert again["text"] == post["text"]
    with pytest.raises(ValueError, match="vectorizer"):
        compute_rewrite_quality_counterfact(model, tok, record, snips, None, max_length=50)


# --- summary ------------------------------------------------------------------------------------


def test_summarize_counterfact_hand_computed():
    ln2 = math.log(2)  # NLL ln 2 <-> P = 1/2; NLL ln 4 <-> P = 1/4
    posts = [
        cf_post([(ln2, 2 * ln2)], [(ln2, 2 * ln2), (2 * ln2, ln2)], [(ln2, 2 * ln2)],
                ngram_entropy=6.0, reference_score=0.3),
        cf_post([(ln2, 2 * ln2)], [(2 * ln2, ln2), (2 * ln2, ln2)], [(2 * ln2, ln2)]),
    ]
    summary = summarize_cases(posts, "counterfact")
    assert summary["rewrite_success"] == pytest.approx((100.0, 0.0))
    assert summary["paraphrase_success"] == pytest.approx((25.0, 25.0))  # cases: 1/2 and 0
    assert summary["neighborhood_success"] == pytest.approx((50.0, 50.0))  # cases: 0 and 1
    assert summary["rewrite_diff"] == pytest.approx((25.0, 0.0))  # 1/2 - 1/4
    assert summary["paraphrase_diff"] == pytest.approx((-12.5, 12.5))  # cases: 0 and -1/4
    assert summary["neighborhood_diff"] == pytest.approx((0.0, 25.0))  # cases: -1/4 and +1/4
    assert summary["paraphrase_acc"] == pytest.approx((50.0, 0.0))
    assert summary["ngram_entropy"] == pytest.approx((600.0, 0.0))  # only the case that has it
    assert summary["reference_score"] == pytest.approx((30.0, 0.0))
    score, spread = summary["score"]
    assert score == pytest.approx(3 / (1 / 100 + 1 / 25 + 1 / 50)) and math.isnan(spread)
    assert "essence_score" not in summary
    assert set(summary) <= set(METRIC_DESCRIPTIONS) and set(kind_named("counterfact").columns) <= set(summary)


def test_summarize_ties_count_for_neither_and_zero_sinks_score():
    summary = summarize_cases([cf_post([(1.0, 1.0)], [(1.0, 2.0)], [(1.0, 1.0)])], "counterfact")
    assert summary["rewrite_success"][0] == 0.0 and summary["neighborhood_success"][0] == 0.0
    assert summary["score"][0] == 0.0


def test_summarize_zsre_hand_computed():
    summary = summarize_cases(ZSRE_POSTS, "zsre")
    assert summary == {
        "rewrite_acc": pytest.approx((75.0, 25.0)),
        "paraphrase_acc": pytest.approx((50.0, 50.0)),
        "neighborhood_acc": pytest.approx((87.5, 12.5)),
    }


def test_summarize_bad_input():
    with pytest.raises(ValueError, match="unknown dataset kind 'mcf'; known: counterfact, zsre"):
        summarize_cases([{}], "mcf")
    with pytest.raises(ValueError, match="rewrite_prompts_probs"):
        summarize_cases([{"rewrite_prompts_correct": [True]}], "counterfact")
    with pytest.raises(ValueError, match="at least one case"):
        summarize_cases([], "zsre")


def test_generation_without_matching_snippets_warns_and_omits_consistency():
    record = dict(CF_RECORD, generation_prompts=["rome", "paris"])
    snips = AttributeSnippets.from_records([{"relation_id": "P9", "target_id": "Q1", "samples": []}])
    vec = vectorizer_from_stats(np.array([1.0]), {"dog": 0})
    with pytest.warns(UserWarning, match=r"no attribute snippets for \(P1, Q1\)"):
        post = compute_rewrite_quality_counterfact(BigramModel(), WordTokenizer(), record, snips, vec, max_length=4,
                                                   options=MetricOptions(stop_at_eos=True, skip_special_tokens=True))
    assert "reference_score" not in post and "essence_score" not in post
    assert len(post["text"]) == 2 and post["text"][1] == "paris"  # paris ends at once (EOS is likely)
    assert post["ngram_entropy"] == pytest.approx(ngram_entropy(post["text"]))
