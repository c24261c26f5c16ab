"""Comparability with the papers: shipped task files, the Wikipedia alias, and Fluency/Consistency
computed as the original evaluation code did (hand-computed cases, the length rule on stories260K)."""
from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import experiments.metrics.fluency as fluency
from experiments.downstream import DEFAULT_TASKS, SHIPPED_GLUE_DIR, TASKS
from experiments.downstream.tasks import load_records
from experiments.metrics.fluency import (
    DEPARTURES,
    MetricOptions,
    decode_like_original,
    generate_texts,
    generation_ids,
    metric_settings,
    ngram_entropy,
    text_ngram_entropy,
    word_tokenize,
)
from util.corpus import corpus_id, load_corpus_texts
from util.tokens import encode

# --- part 1: data out of the box -----------------------------------------------------------------


def test_shipped_task_files_are_the_documented_ones():
    notes = (SHIPPED_GLUE_DIR / "SOURCES.md").read_text()
    for task in TASKS.values():
        data = (SHIPPED_GLUE_DIR / task.filename).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        assert re.search(rf"^  {re.escape(task.filename)} {digest}$", notes, re.M), task.filename
    assert all(load_records(TASKS[name], SHIPPED_GLUE_DIR) for name in DEFAULT_TASKS)


def test_cli_reads_the_shipped_task_files_unless_told_otherwise(monkeypatch, tmp_path):
    import experiments.evaluate as cli

    seen = []
    monkeypatch.setattr(cli, "run_experiment", lambda cfg, paths: seen.append(paths.glue) or tmp_path)
    flags = ["--alg_name=NSE", "--model_name=m", "--hparams_fname=h.json", "--ds_name=mcf", "--downstream_eval_steps=5"]
    assert cli.main(flags) == 0 and cli.main(flags + [f"--glue_dir={tmp_path}"]) == 0
    assert seen == [SHIPPED_GLUE_DIR, tmp_path]


def test_wikipedia_names_the_current_dump_sampled_as_the_original(monkeypatch):
    import datasets

    from util.corpus import hub_sample_indices

    calls = []
    rows = [{"text": "First article."}, {"text": ""}, {"text": "Second article."}, {"text": "Third."}]

    def fake_load_dataset(name, config=None, **kwargs):
        calls.append((name, config, kwargs))
        return rows

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    taken = [rows[i]["text"] for i in hub_sample_indices(len(rows), 3)]
    assert load_corpus_texts("wikipedia", 3) == [t for t in taken if t]  # empty texts dropped after the take
    assert calls == [("wikimedia/wikipedia", "20231101.en", {"split": "train"})]  # the whole split
    load_corpus_texts("wikimedia/wikipedia", 1)
    assert calls[-1][:2] == ("wikimedia/wikipedia", "20231101.en")
    assert corpus_id("wikipedia") == corpus_id("wikimedia/wikipedia") == "wikimedia_wikipedia-20231101.en"


# --- part 2: n-gram entropy as the original computes it ---------------------------------------------


@pytest.fixture()
def nltk_data(monkeypatch, tmp_path):
    """NLTK's data paths are one empty folder, so no Punkt model is installed; ``install()`` puts an
    English punkt_tab model there as ``nltk.download('punkt_tab')`` would (a tiny one whose only
    knowledge is the abbreviation "Mr."). The tokenizer choice is re-made each time."""
    import nltk.data
    import nltk.tokenize

    root = tmp_path / "nltk_data"
    root.mkdir()
    monkeypatch.setattr(nltk.data, "path", [str(root)])
    loaded = nltk.tokenize._get_punkt_tokenizer  # NLTK's cache of loaded models (a test may replace it)

    def reset() -> None:
        loaded.cache_clear()
        fluency._nltk_tokenizer.cache_clear()

    def install() -> Path:
        english = root / "tokenizers" / "punkt_tab" / "english"
        english.mkdir(parents=True)
        (english / "abbrev_types.txt").write_text("mr\n", encoding="utf-8")
        for name in ("collocations.tab", "ortho_context.tab", "sent_starters.txt"):
            (english / name).write_text("", encoding="utf-8")
        reset()
        return english

    reset()
    yield install
    reset()  # the next caller sees the real installation again


def bits(*counts: int) -> float:
    """Entropy in bits of the frequency distribution with these counts."""
    total = sum(counts)
    return -sum(c / total * math.log2(c / total) for c in counts)


def test_fluency_of_a_known_text_by_hand():
    text = "The cat sat. The cat sat."
    assert word_tokenize(text) == ["The", "cat", "sat", ".", "The", "cat", "sat", "."]
    # bigrams: (The cat) 2, (cat sat) 2, (sat .) 2, (. The) 1; trigrams: 2, 2, 1, 1
    h2, h3 = bits(2, 2, 2, 1), bits(2, 2, 1, 1)
    assert h3 == pytest.approx(math.log2(3) + 1 / 3)
    expected = (2 / 3 * h2 + 4 / 3 * h3) / 2  # np.mean of the weighted entropies
    assert text_ngram_entropy(text) == pytest.approx(expected) == pytest.approx(1.9289346, abs=1e-7)
    assert ngram_entropy([text, "One"]) == pytest.approx(expected / 2)  # a text without bigrams counts 0
    assert text_ngram_entropy("the cat sat. The cat sat.") != text_ngram_entropy(text)  # case is kept


def test_nltk_own_punkt_data_is_used_when_installed(nltk_data):
    """NLTK's installed punkt_tab model (found on nltk.data.path) runs word_tokenize itself, and
    config.json records it."""
    import nltk.tokenize

    nltk_data()
    name, tokenize = fluency._nltk_tokenizer()
    assert name == "nltk.word_tokenize" and tokenize is nltk.tokenize.word_tokenize
    assert metric_settings()["word_tokenizer"] == "nltk.word_tokenize"
    # The installed model knows "Mr." is an abbreviation: no sentence ends there, so its period stays.
    assert word_tokenize("Mr. Smith sat. Mr. Smith sat.") == ["Mr.", "Smith", "sat", ".", "Mr.", "Smith", "sat", "."]
    # Fluency by hand through it: bigrams (Mr. Smith) 2, (Smith sat) 2, (sat .) 2, (. Mr.) 1.
    expected = (2 / 3 * bits(2, 2, 2, 1) + 4 / 3 * bits(2, 2, 1, 1)) / 2
    assert text_ngram_entropy("Mr. Smith sat. Mr. Smith sat.") == pytest.approx(expected)


def test_no_punkt_model_is_shipped():
    """The trained model's licence is unclarified upstream (nltk_data's DATASET-LICENSES.md), so
    the project ships none: without NLTK's data the fallback runs (docs/comparability.md)."""
    assert not hasattr(fluency, "SHIPPED_PUNKT")
    assert not (Path(fluency.__file__).parent / "punkt_tab").exists()


def test_fallback_without_punkt_is_word_tokenize_with_an_untrained_model(nltk_data, monkeypatch):
    import nltk.tokenize
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    assert metric_settings()["word_tokenizer"] == "nltk-untrained-punkt"
    assert not nltk.tokenize.punkt_model_available("english")
    # Sentence-final periods are split off mid-text (not glued: "there."), as word_tokenize does;
    # without abbreviation knowledge "Mr." ends a sentence, so its period is a token of its own.
    assert word_tokenize("Hello there. How are you?") == ["Hello", "there", ".", "How", "are", "you", "?"]
    assert word_tokenize("Mr. Smith sat.") == ["Mr", ".", "Smith", "sat", "."]
    monkeypatch.setattr(nltk.tokenize, "_get_punkt_tokenizer", lambda language="english": PunktSentenceTokenizer())
    for text in ('He said "no." Then, it\'s 3.5 km away!', "Don't stop. Tom's cat (a big one) ran... Far away."):
        assert word_tokenize(text) == nltk.tokenize.word_tokenize(text)  # same pipeline, untrained model


def test_a_punkt_model_outside_nltk_data_runs_the_same_pipeline(nltk_data, tmp_path):
    """bench/punkt_effect.py reads a model from any folder (read_punkt_params) and runs
    word_tokenize's pipeline with it: the same tokens as NLTK's own loading of that model."""
    import shutil

    import nltk.tokenize

    elsewhere = shutil.copytree(nltk_data(), tmp_path / "elsewhere" / "english")
    tokenize = fluency.punkt_word_tokenizer(fluency.read_punkt_params(elsewhere))
    for text in ("Mr. Smith sat. Mr. Smith sat.", 'He said "no." Then, it\'s 3.5 km away!',
                 "Dr. Who met Mrs. Jones at 5 p.m. on Jan. 3. They left."):
        assert tokenize(text) == nltk.tokenize.word_tokenize(text)
    assert fluency.tokens_ngram_entropy(tokenize("The cat sat. The cat sat.")) == text_ngram_entropy("The cat sat. The cat sat.")


def test_regex_tokenizer_is_a_named_departure(nltk_data):
    assert word_tokenize("It's here.", regex=True) == ["It's", "here", "."]
    assert word_tokenize("It's here.") == ["It", "'s", "here", "."]
    settings = metric_settings(MetricOptions.from_names(["regex_word_tokenizer"]))
    assert settings["word_tokenizer"] == "regex" and settings["departures"] == ["regex_word_tokenizer"]
    assert metric_settings()["departures"] == [] and set(DEPARTURES) == set(MetricOptions().__dict__)
    with pytest.raises(ValueError, match="unknown metric departure"):
        MetricOptions.from_names(["lowercase"])


def test_bad_departure_is_a_run_error():
    from experiments.runner import RunConfig, RunError, run_experiment

    cfg = RunConfig(alg_name="NSE", model_name="m", hparams_fname="h.json", ds_name="mcf", metric_departures=["x"])
    with pytest.raises(RunError, match="metric_departures"):
        run_experiment(cfg)


# --- part 2: generation as the original did it -----------------------------------------------------


class AlwaysEos(torch.nn.Module):
    """Predicts EOS after every token (vocab of the tokenizer it is built for)."""

    def __init__(self, vocab: int, eos: int) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(vocab), requires_grad=False)
        self.logits.data[eos] = 10.0

    def forward(self, input_ids, **kwargs):
        return SimpleNamespace(logits=self.logits.expand(*input_ids.shape, -1), past_key_values=None)


def test_length_is_a_total_cap_with_the_prompt(tiny_llama):
    model, tok = tiny_llama
    prompts = ["Once upon a time, in a big house,", "The cat"]
    lengths = [len(encode(tok, p)) for p in prompts]
    assert lengths[0] > lengths[1] + 3  # rows of clearly different prompt lengths
    rows = generation_ids(model, tok, prompts, max_length=16, seed=2)
    assert [len(r) for r in rows] == [16, 16]  # not prompt + 16: the cap counts the prompt (and BOS)
    assert all(r[:n] == encode(tok, p) for r, n, p in zip(rows, lengths, prompts))
    texts = generate_texts(model, tok, prompts, max_length=16, seed=2)
    assert texts == [decode_like_original(tok, r) for r in rows] and texts[1].startswith("<s> The cat")


def test_no_tokens_when_a_prompt_reaches_the_cap(tiny_llama):
    model, tok = tiny_llama
    prompts = ["Once upon a time, in a big house,", "The cat"]
    cap = len(encode(tok, prompts[0]))
    with pytest.warns(UserWarning, match="no prompt of this batch"):
        rows = generation_ids(model, tok, prompts, max_length=cap)
    assert rows == [encode(tok, p) for p in prompts]  # the original's batch was already cap wide


def test_generation_runs_past_eos_unless_told(tiny_llama):
    _, tok = tiny_llama
    model = AlwaysEos(len(tok), tok.eos_token_id)
    n = len(encode(tok, "The cat"))
    (row,) = generation_ids(model, tok, ["The cat"], max_length=9, top_k=1)
    assert len(row) == 9 and row[n:] == [tok.eos_token_id] * (9 - n)
    (row,) = generation_ids(model, tok, ["The cat"], max_length=9, top_k=1, stop_at_eos=True)
    assert row == encode(tok, "The cat")
    options = MetricOptions(stop_at_eos=True, skip_special_tokens=True)
    assert generate_texts(model, tok, ["The cat"], max_length=9, top_k=1, options=options) == ["The cat"]


def test_decoding_is_post_processed_as_originally():
    tok = SimpleNamespace(decode=lambda ids, skip_special_tokens: "Caf\u00e9\n\nﬁne<|endoftext|>\nend")
    assert decode_like_original(tok, [1]) == "Cafe\u0301 fine\nend"  # NFKD, blank line -> space, no GPT-2 EOS


def test_sampling_is_top_5_and_seeded(tiny_llama):
    model, tok = tiny_llama
    first = generation_ids(model, tok, ["Once upon a time"], max_length=14, seed=7)
    assert first == generation_ids(model, tok, ["Once upon a time"], max_length=14, seed=7)
    ids = torch.tensor([first[0]])
    with torch.no_grad():
        logits = model(ids).logits[0]
    start = len(encode(tok, "Once upon a time"))
    for position in range(start, len(first[0])):  # every sampled token is among the 5 likeliest
        assert first[0][position] in logits[position - 1].topk(5).indices.tolist()


def test_the_comparability_page_documents_every_departure():
    page = (Path(__file__).resolve().parents[1] / "docs" / "comparability.md").read_text()
    assert all(f"`{name}`" in page for name in DEPARTURES)
