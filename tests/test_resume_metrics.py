"""A resumed run records the word tokenizer its own process computes Fluency with (experiments/resume.py)."""
from __future__ import annotations

import json
import logging

import experiments.resume as resume
from experiments.run_folder import RunFolder
from experiments.settings import RunConfig

CFG = RunConfig(alg_name="NSE", model_name="m", hparams_fname="h.json", ds_name="mcf")


def _config(tokenizer: str) -> dict:
    return {"args": {}, "metrics": {"generation": {"top_k": 5}, "word_tokenizer": tokenizer, "departures": []}}


def test_a_resume_on_a_machine_without_nltk_data_records_the_fallback_and_warns(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(resume, "metric_settings", lambda options: {"word_tokenizer": "nltk-untrained-punkt",
                                                                     "departures": []})
    config = _config("nltk.word_tokenize")
    with caplog.at_level(logging.WARNING, logger="experiments"):
        resume.record_resume(CFG, RunFolder(tmp_path), config)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["metrics"]["word_tokenizer"] == "nltk-untrained-punkt"
    assert saved["metrics"]["generation"] == {"top_k": 5}  # what did not change stays
    assert saved["resumed"][-1]["metrics_before"]["word_tokenizer"] == "nltk.word_tokenize"
    assert "nltk-untrained-punkt" in caplog.text and "nltk.word_tokenize" in caplog.text


def test_a_resume_with_the_same_tokenizer_records_nothing_more(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(resume, "metric_settings", lambda options: {"word_tokenizer": "nltk.word_tokenize",
                                                                     "departures": []})
    with caplog.at_level(logging.WARNING, logger="experiments"):
        resume.record_resume(CFG, RunFolder(tmp_path), _config("nltk.word_tokenize"))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["metrics"]["word_tokenizer"] == "nltk.word_tokenize"
    assert "metrics_before" not in saved["resumed"][-1] and not caplog.text
