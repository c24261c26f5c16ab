"""Dataset loaders: real records shipped in assets/, the zsRE conversion, and bad-input errors."""
from __future__ import annotations

import json
import re
import shutil
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import COUNTERFACT, KNOWNS, ZSRE

import dsets
from dsets import (
    AttributeSnippets,
    CounterFactDataset,
    DataFileMissing,
    DatasetFormatError,
    KnownsDataset,
    MultiCounterFactDataset,
    ZsreDataset,
    zsre_record_to_case,
)
from dsets import data_dir as data_dir_module
from experiments.ds_kinds import load_edit_dataset

CANONICAL = "https://memit.baulab.info/data/dsets/"


@pytest.fixture()
def offline(monkeypatch):
    """Every download attempt fails as it does on a machine without internet; attempts are logged."""
    attempts: list[str] = []

    def refuse(url: str, dest: Path) -> None:
        attempts.append(url)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(data_dir_module, "download_file", refuse)
    return attempts


@pytest.fixture(scope="module")
def tiny_tok(tiny_llama_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_path)


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def cf_record(case_id: int = 0, prompt: str = "{} plays the") -> dict:
    return {
        "case_id": case_id,
        "requested_rewrite": {"prompt": prompt, "relation_id": "P1", "subject": "Anna",
                              "target_new": {"str": "piano", "id": "Q1"}, "target_true": {"str": "violin", "id": "Q2"}},
        "paraphrase_prompts": ["Anna is good at the"],
        "neighborhood_prompts": ["Bob plays the"],
        "attribute_prompts": [],
        "generation_prompts": ["Anna likes"],
    }


# --- data folder and downloads -------------------------------------------------------------


def test_globals_and_data_dir_resolution(tmp_path):
    """Relative folders of globals.yml are taken from the repository root, absolute ones as written, a
    missing key falls back to its default, and an override wins; the file itself is the user's to edit."""
    from util.globals import DEFAULT_GLOBALS, REPO_ROOT, load_globals, resolve_global_dir

    mine = tmp_path / "globals.yml"
    mine.write_text(f"DATA_DIR: elsewhere/data\nSTATS_DIR: {tmp_path / 'stats'}\n")
    values = load_globals(mine)
    assert values["DATA_DIR"] == "elsewhere/data" and values["RESULTS_DIR"] == DEFAULT_GLOBALS["RESULTS_DIR"]
    assert resolve_global_dir("DATA_DIR", globals_file=mine) == REPO_ROOT / "elsewhere" / "data"  # not the cwd
    assert resolve_global_dir("STATS_DIR", globals_file=mine) == tmp_path / "stats"
    assert resolve_global_dir("DATA_DIR", tmp_path, globals_file=mine) == tmp_path
    mine.write_text("- a list\n")
    with pytest.raises(ValueError, match="must be a YAML mapping"):
        load_globals(mine)
    assert dsets.resolve_data_dir(tmp_path) == tmp_path
    assert dsets.dataset_url("counterfact.json").endswith("/data/dsets/counterfact.json")


def test_missing_file_offline_names_file_url_and_folder(tmp_path, offline):
    folder = tmp_path / "data"
    with pytest.raises(DataFileMissing) as info:
        CounterFactDataset(folder)
    message = str(info.value)
    assert "counterfact.json" in message and CANONICAL + "counterfact.json" in message and str(folder) in message
    assert offline == [CANONICAL + "counterfact.json"]
    assert isinstance(info.value, FileNotFoundError)


def test_ensure_file_uses_injected_downloader_and_skips_present_files(tmp_path):
    fetched: list[str] = []

    def fake_download(url: str, dest: Path) -> None:
        fetched.append(url)
        dest.write_text("[]")

    path = dsets.ensure_file(tmp_path / "d", "x.json", download=fake_download)
    assert path == tmp_path / "d" / "x.json" and path.read_text() == "[]"
    assert fetched == [CANONICAL + "x.json"]
    dsets.ensure_file(tmp_path / "d", "x.json", download=fake_download)
    assert len(fetched) == 1  # present: not fetched again


def test_download_file_streams_to_final_name(tmp_path):
    # A file:// URL exercises the real download path (temp file, rename) without a network.
    source = write_json(tmp_path / "src.json", [1, 2, 3])
    dest = tmp_path / "out" / "copy.json"
    dsets.ensure_file(tmp_path / "out", "copy.json", url=source.as_uri())
    assert json.loads(dest.read_text()) == [1, 2, 3]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["copy.json"]  # no partial file left


def test_failed_download_leaves_no_partial_file(tmp_path):
    folder = tmp_path / "out"
    with pytest.raises(DataFileMissing, match="nothing.json"):
        dsets.ensure_file(folder, "nothing.json", url=(tmp_path / "absent.json").as_uri())
    assert list(folder.iterdir()) == []


# --- CounterFact ---------------------------------------------------------------------------


def test_counterfact_real_records():
    ds = CounterFactDataset(COUNTERFACT)
    assert len(ds) == 200 and ds[-1]["case_id"] == 2213  # the first 200 of counterfact_test2191.json
    first = ds[0]
    assert first["case_id"] == 13
    assert first["requested_rewrite"]["prompt"] == "{}, developed by"
    assert first["requested_rewrite"]["subject"] == "Ferrari F40"
    assert first["requested_rewrite"]["target_new"] == {"str": "Microsoft", "id": "Q2283"}
    assert first["requested_rewrite"]["target_true"] == {"str": "Ferrari", "id": "Q27586"}
    assert len(first["paraphrase_prompts"]) == 2 and len(first["neighborhood_prompts"]) == 10
    assert [r["case_id"] for r in ds[:3]] == [13, 18, 37]
    assert len(CounterFactDataset(COUNTERFACT, size=7)) == 7


def test_counterfact_from_data_folder_single_and_multi(tmp_path, offline):
    write_json(tmp_path / "counterfact.json", [cf_record(0), cf_record(1)])
    write_json(tmp_path / "multi_counterfact.json", [cf_record(5)])
    assert [r["case_id"] for r in CounterFactDataset(tmp_path)] == [0, 1]
    assert [r["case_id"] for r in CounterFactDataset(tmp_path, multi=True)] == [5]
    assert [r["case_id"] for r in MultiCounterFactDataset(tmp_path)] == [5]
    assert [r["case_id"] for r in load_edit_dataset("cf", tmp_path)] == [0, 1]
    assert offline == []  # files present: no download attempted


def test_counterfact_not_json_names_the_file(tmp_path):
    bad = tmp_path / "counterfact.json"
    bad.write_text('[{"case_id": 0,', encoding="utf-8")
    with pytest.raises(DatasetFormatError, match="counterfact.json is not valid JSON"):
        CounterFactDataset(tmp_path)


def test_counterfact_not_a_list(tmp_path):
    write_json(tmp_path / "cf.json", {"case_id": 0})
    with pytest.raises(DatasetFormatError, match="JSON list"):
        CounterFactDataset(tmp_path / "cf.json")


@pytest.mark.parametrize("prompt", ["{} plays the {}", "Anna plays the", "{} plays {the"])
def test_counterfact_prompt_needs_exactly_one_placeholder(tmp_path, prompt):
    write_json(tmp_path / "cf.json", [cf_record(0), cf_record(42, prompt=prompt)])
    with pytest.raises(DatasetFormatError, match=r"case_id=42.*exactly one '\{\}'.*fix"):
        CounterFactDataset(tmp_path / "cf.json")


def test_counterfact_prompt_list_of_wrong_elements_names_the_element(tmp_path):
    record = {**cf_record(42), "neighborhood_prompts": ["A is in", 7]}
    write_json(tmp_path / "cf.json", [cf_record(0), record])
    with pytest.raises(DatasetFormatError, match=r"case_id=42: 'neighborhood_prompts' .* element 1 is 7 \(int\)"):
        CounterFactDataset(tmp_path / "cf.json")


def test_counterfact_size_only_validates_kept_records(tmp_path):
    write_json(tmp_path / "cf.json", [cf_record(0), cf_record(1, prompt="no placeholder")])
    assert len(CounterFactDataset(tmp_path / "cf.json", size=1)) == 1


def test_counterfact_duplicate_case_id(tmp_path):
    write_json(tmp_path / "cf.json", [cf_record(3), cf_record(3)])
    with pytest.raises(DatasetFormatError, match="case_id=3 occurs twice"):
        CounterFactDataset(tmp_path / "cf.json")


@pytest.mark.parametrize("case_id", ["37", "word", None, [1], 1.5, True, -2])
def test_counterfact_case_ids_are_whole_numbers(tmp_path, case_id):
    """37 and "37" would write the same case file (one case never scored); a word or null would crash
    the final scoring after every batch was edited. Refused at load, naming file and record."""
    write_json(tmp_path / "cf.json", [cf_record(37), {**cf_record(0), "case_id": case_id}])
    with pytest.raises(DatasetFormatError, match=r"cf\.json: record #1 has case_id=.*whole numbers >= 0"):
        CounterFactDataset(tmp_path / "cf.json")


@pytest.mark.parametrize("change, shown", [
    ({"subject": " Anna"}, "has surrounding spaces"),
    ({"subject": "Anna "}, "has surrounding spaces"),
    ({"subject": "?!"}, "has no letter or digit"),
    ({"target_new": {"str": "violin", "id": "Q2"}}, "target_new equals target_true ('violin')"),
    ({"target_new": {"str": " violin", "id": "Q2"}}, "target_new equals target_true"),
])
def test_counterfact_records_that_would_edit_nothing_are_refused(tmp_path, change, shown):
    record = cf_record(5)
    record["requested_rewrite"].update(change)
    write_json(tmp_path / "cf.json", [cf_record(0), record])
    with pytest.raises(DatasetFormatError, match=re.escape(f"cf.json: case_id=5: ") + ".*" + re.escape(shown)):
        CounterFactDataset(tmp_path / "cf.json")


def test_counterfact_cases_without_paraphrases_or_neighbours_are_named(tmp_path, caplog):
    write_json(tmp_path / "cf.json", [cf_record(0), {**cf_record(1), "paraphrase_prompts": []},
                                      {**cf_record(2), "neighborhood_prompts": []}])
    assert len(CounterFactDataset(tmp_path / "cf.json")) == 3
    assert "1 case(s) have no paraphrase_prompts (case_ids 1)" in caplog.text
    assert "1 case(s) have no neighborhood_prompts (case_ids 2)" in caplog.text


def test_explicit_json_path_is_never_downloaded(tmp_path, offline):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CounterFactDataset(tmp_path / "typo.json")
    assert offline == []


# --- zsRE ----------------------------------------------------------------------------------


def test_zsre_real_records_load(tiny_tok):
    ds = ZsreDataset(ZSRE, tiny_tok)
    assert len(ds) == 452
    assert [r["case_id"] for r in ds[:3]] == [0, 1, 2]
    last = ds[451]
    assert last["requested_rewrite"]["subject"] == "Timmy Martin"
    assert last["requested_rewrite"]["prompt"].count("{}") == 1
    assert len(ZsreDataset(ZSRE, tiny_tok, size=4)) == 4


def test_zsre_conversion_field_by_field(tiny_tok):
    case = ZsreDataset(ZSRE, tiny_tok, size=1)[0]
    assert case["case_id"] == 0
    assert case["requested_rewrite"] == {
        "prompt": "What university did {} attend?",
        "subject": "Watts Humphrey",
        "target_new": {"str": "Illinois Institute of Technology"},
        "target_true": {"str": "<|endoftext|>"},
    }
    assert case["paraphrase_prompts"] == ["What university did Watts Humphrey take part in?"]
    assert case["attribute_prompts"] == [] and case["generation_prompts"] == []
    # " Hugo Weaving" in the 512-piece vocabulary of stories260K is
    # ▁H(320) u(425) g(428) o(414) ▁(410) W(448) e(411) a(412) v(435) ing(299); the SentencePiece
    # decoder drops the word-start marker of a leading piece, so "▁" alone decodes to "".
    loc = "nq question: who played desmond doss father in hacksaw ridge"
    prefixes = ["", "H", "Hu", "Hug", "Hugo", "Hugo ", "Hugo W", "Hugo We", "Hugo Wea", "Hugo Weav"]
    targets = ["H", "u", "g", "o", "", "W", "e", "a", "v", "ing"]
    ids = [320, 425, 428, 414, 410, 448, 411, 412, 435, 299]
    expected = [{"prompt": loc + "?" + p, "target": t, "target_id": i} for p, t, i in zip(prefixes, targets, ids)]
    assert case["neighborhood_prompts"] == expected


def zsre_raw(**overrides) -> dict:
    record = {"subject": "Anna", "src": "Where was Anna born?", "answers": ["Paris", "Lyon"],
              "rephrase": "What is the birthplace of Anna?", "loc": "nq question: who wrote hamlet",
              "loc_ans": "Shakespeare"}
    record.update(overrides)
    return record


def test_zsre_uses_first_answer_and_is_tokenizer_generic(tiny_tok):
    case = zsre_record_to_case(zsre_raw(), 7, tiny_tok)
    assert case["case_id"] == 7 and case["requested_rewrite"]["target_new"] == {"str": "Paris"}
    token_ids = tiny_tok(" Shakespeare", add_special_tokens=False)["input_ids"]
    assert [e["target_id"] for e in case["neighborhood_prompts"]] == token_ids


def test_zsre_loc_without_prefix(tiny_tok):
    with pytest.raises(DatasetFormatError, match="zsRE record 3: loc .* must start with 'nq question: '"):
        zsre_record_to_case(zsre_raw(loc="who wrote hamlet"), 3, tiny_tok)


def test_zsre_subject_not_in_src(tiny_tok):
    with pytest.raises(DatasetFormatError, match="zsRE record 5: subject 'Bob' does not occur in src"):
        zsre_record_to_case(zsre_raw(subject="Bob"), 5, tiny_tok)


def test_zsre_subject_twice_in_src(tiny_tok):
    with pytest.raises(DatasetFormatError, match="exactly one"):
        zsre_record_to_case(zsre_raw(src="Anna met Anna?"), 0, tiny_tok)


def test_zsre_empty_answers_and_missing_field(tiny_tok):
    with pytest.raises(DatasetFormatError, match="answers"):
        zsre_record_to_case(zsre_raw(answers=[]), 0, tiny_tok)
    raw = zsre_raw()
    del raw["rephrase"]
    with pytest.raises(DatasetFormatError, match="'rephrase' must be a non-empty string"):
        zsre_record_to_case(raw, 0, tiny_tok)


def test_zsre_folder_and_registry(tmp_path, tiny_tok, offline):
    write_json(tmp_path / "zsre_mend_eval.json", [zsre_raw(), zsre_raw(subject="Where")])
    assert len(load_edit_dataset("zsre", tmp_path, tok=tiny_tok)) == 2
    with pytest.raises(ValueError, match="tokenizer"):
        load_edit_dataset("zsre", tmp_path)
    with pytest.raises(ValueError, match="cf, mcf, zsre"):
        load_edit_dataset("wiki", tmp_path)


# --- knowns, snippets, TF-IDF ----------------------------------------------------------------


def test_knowns_real_file(tmp_path):
    ds = KnownsDataset(KNOWNS)
    assert len(ds) == 1209
    assert ds[0]["subject"] == "Vinson Massif" and ds[0]["prompt"] == "Vinson Massif is located in the continent of"
    shutil.copy(KNOWNS, tmp_path / "known_1000.json")
    assert len(KnownsDataset(tmp_path, size=10)) == 10


SNIPPETS = [
    {"relation_id": "P1", "target_id": "Q1", "samples": [{"name": "Anna", "text": "Anna plays piano daily."},
                                                         {"name": "Carl", "text": "Carl tunes pianos."}]},
    {"relation_id": "P1", "target_id": "Q2", "samples": [{"name": "Bob", "text": "Bob plays violin."}]},
]


def test_attribute_snippets_from_file(tmp_path):
    write_json(tmp_path / "attribute_snippets.json", SNIPPETS)
    snips = AttributeSnippets(tmp_path)
    assert [s["name"] for s in snips["P1"]["Q1"]] == ["Anna", "Carl"]
    assert snips.get("P1", "Q2") == [{"name": "Bob", "text": "Bob plays violin."}]
    assert snips.get("P9", "Q1") == [] and snips["P9"] == {}
    assert snips.samples_about("Anna") == [{"name": "Anna", "text": "Anna plays piano daily."}]
    assert sorted(snips.texts()) == sorted(s["text"] for r in SNIPPETS for s in r["samples"]) and len(snips) == 3


def test_attribute_snippets_bad_format(tmp_path):
    write_json(tmp_path / "snips.json", [{"relation_id": "P1", "target_id": "Q1", "samples": "text"}])
    with pytest.raises(DatasetFormatError, match="record #0"):
        AttributeSnippets(tmp_path / "snips.json")


def test_tfidf_loaded_from_stats_files(tmp_path):
    np.save(tmp_path / "idf.npy", np.array([1.0, 2.0, 3.0]))
    write_json(tmp_path / "tfidf_vocab.json", {"piano": 0, "violin": 1, "plays": 2})
    vec = dsets.load_tfidf_vectorizer(tmp_path)
    np.testing.assert_allclose(vec.idf_, [1.0, 2.0, 3.0])
    row = vec.transform(["violin violin plays"]).toarray()[0]
    # tf-idf before l2 normalisation: violin 2*2, plays 1*3 -> (0, 4, 3) / 5
    np.testing.assert_allclose(row, [0.0, 0.8, 0.6])


def test_tfidf_stats_must_match(tmp_path):
    np.save(tmp_path / "idf.npy", np.array([1.0, 2.0]))
    write_json(tmp_path / "tfidf_vocab.json", {"piano": 0})
    with pytest.raises(DatasetFormatError, match="same fit"):
        dsets.load_tfidf_vectorizer(tmp_path)


def test_tfidf_refit_when_absent_offline(tmp_path, offline):
    with pytest.warns(UserWarning, match="refit"):
        vec = dsets.load_tfidf_vectorizer(tmp_path, fit_texts=["Anna plays piano", "Bob plays violin"])
    assert set(vec.vocabulary_) == {"anna", "plays", "piano", "bob", "violin"}
    with pytest.raises(DataFileMissing, match="idf.npy"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            dsets.load_tfidf_vectorizer(tmp_path)
