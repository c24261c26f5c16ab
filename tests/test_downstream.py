"""Downstream (general-capability) evaluation: task table, likelihood scoring, metrics, files."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import TASKS_DIR
from torch import nn

from experiments.downstream import (
    ANSWER_CUE,
    DEFAULT_TASKS,
    TASKS,
    classification_metrics,
    run_downstream_eval,
    write_downstream_result,
)
from experiments.downstream.scoring import (
    build_pairs,
    continuation_ids,
    fit_prompt,
    mean_logprobs,
)
from experiments.downstream.tasks import load_records, select_subset
from util.tokens import encode

# ---------------------------------------------------------------------------------------------
# A fake LM with known logits and a whitespace tokenizer, so expected answers can be hand-made.


class WordTokenizer:
    """Whitespace tokenizer: one id per word, BOS=1 prepended when special tokens are asked for."""

    pad_token_id, bos_token_id, eos_token_id, unk_id = 0, 1, 2, 3
    model_max_length = int(1e30)

    def __init__(self, words: list[str]):
        self.vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", *words])}

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        ids = [self.vocab.get(word, self.unk_id) for word in text.split()]
        return {"input_ids": ([self.bos_token_id] if add_special_tokens else []) + ids}


class BagOfWordsLM(nn.Module):
    """Causal toy LM: logits at position t are the sum of ``table[token]`` over tokens 0..t.

    A hint word anywhere in the prompt therefore raises the logit of the label word it points to.
    """

    def __init__(self, table: torch.Tensor, max_len: int = 64):
        super().__init__()
        self.table = nn.Parameter(table)  # (V, V)
        self.config = SimpleNamespace(max_position_embeddings=max_len)
        self.lengths_seen: list[int] = []

    def forward(self, input_ids, attention_mask, **_):
        assert not self.training, "scoring must run in eval mode"
        assert input_ids.shape[1] <= self.config.max_position_embeddings, "prompt not truncated"
        self.lengths_seen.append(input_ids.shape[1])
        rows = self.table[input_ids] * attention_mask.unsqueeze(-1)  # (B, T, V)
        return SimpleNamespace(logits=rows.cumsum(dim=1))


def _hint_model(max_len: int = 64) -> tuple[BagOfWordsLM, WordTokenizer]:
    tok = WordTokenizer(["Answer:", "good", "bad", "positive", "negative", "film", "plot"])
    table = torch.zeros(len(tok.vocab), len(tok.vocab))
    table[tok.vocab["good"], tok.vocab["positive"]] = 2.0
    table[tok.vocab["bad"], tok.vocab["negative"]] = 2.0
    return BagOfWordsLM(table, max_len).eval(), tok


def _write_json(path: Path, records: list[dict]) -> None:
    path.write_text(json.dumps(records), encoding="utf-8")


HAND_MADE_SST2 = [  # hint -> prediction; label -> gold (1 = positive)
    {"sentence": "good film", "label": 1},   # TP
    {"sentence": "good plot", "label": 1},   # TP
    {"sentence": "good acting", "label": 0},  # FP
    {"sentence": "bad film", "label": 0},    # TN
    {"sentence": "bad music", "label": 0},   # TN
    {"sentence": "bad ending", "label": 1},  # FN
]


# ---------------------------------------------------------------------------------------------
# Scoring and metrics on hand-computed values


def test_mean_logprobs_match_hand_computation_under_right_padding():
    model, _ = _hint_model()
    pairs = [([1, 5], [7]), ([1, 6, 9, 9, 9], [8, 7]), ([1], [5, 6, 7])]
    expected = []
    for prompt, cont in pairs:
        seq = torch.tensor([prompt + cont])
        logits = model(seq, torch.ones_like(seq)).logits[0]  # (T, V), unpadded
        logp = [logits[len(prompt) - 1 + j].log_softmax(-1)[tok].item() for j, tok in enumerate(cont)]
        expected.append(sum(logp) / len(logp))
    for batch_size in (1, 2, 3):
        got = mean_logprobs(model, pairs, batch_size=batch_size, pad_id=0)
        assert got == pytest.approx(expected, abs=1e-6)
    # The hint word "good" (id 5) must make "positive" (id 7) more likely than "negative" (id 8).
    good_pos, good_neg = mean_logprobs(model, [([1, 5], [7]), ([1, 5], [8])], batch_size=2, pad_id=0)
    assert good_pos > good_neg


def test_higher_likelihood_label_wins_and_metrics_match_hand_values(tmp_path):
    _write_json(tmp_path / "sst2.json", HAND_MADE_SST2)
    model, tok = _hint_model()
    model.train()  # the eval must switch to eval mode and give the caller's mode back
    result = run_downstream_eval(model, tok, tmp_path, tasks=("sst2",), n_per_task=6, batch_size=4,
                                 progress=False, protocol="likelihood")
    assert model.training
    # TP=2 FP=1 FN=1 TN=2: accuracy 4/6, F1 = 2/3, MCC = (2*2 - 1*1) / sqrt(3*3*3*3) = 1/3.
    assert result == {"sst2": pytest.approx({"accuracy": 4 / 6, "f1": 2 / 3, "mcc": 1 / 3, "n": 6})}


def test_multiclass_metrics_use_macro_f1():
    gold, pred = [0, 1, 2, 2], [0, 2, 2, 2]
    got = classification_metrics(gold, pred, n_classes=3)
    # per-class F1: 1, 0, 0.8; MCC = (3*4 - (1*1 + 0*1 + 3*2)) / sqrt((16 - 10) * (16 - 6)).
    assert got == pytest.approx({"accuracy": 0.75, "f1": 0.6, "mcc": 5 / math.sqrt(60), "n": 4})


def test_binary_f1_counts_the_declared_positive_class():
    gold, pred = [0, 0, 1, 1], [0, 0, 0, 1]
    assert classification_metrics(gold, pred, 2, positive=1)["f1"] == pytest.approx(2 / 3)
    assert classification_metrics(gold, pred, 2, positive=0)["f1"] == pytest.approx(0.8)


def test_fit_prompt_keeps_bos_and_the_end():
    assert fit_prompt([1, 5, 6, 7, 8, 9], budget=4, bos_id=1) == [1, 7, 8, 9]
    assert fit_prompt([5, 6, 7, 8, 9], budget=3, bos_id=1) == [7, 8, 9]
    assert fit_prompt([1, 5], budget=4, bos_id=1) == [1, 5]


def test_long_prompts_are_truncated_to_the_model_context(tmp_path):
    _write_json(tmp_path / "sst2.json", HAND_MADE_SST2)
    model, tok = _hint_model(max_len=6)  # every sst2 prompt here is ~14 words
    result = run_downstream_eval(model, tok, tmp_path, tasks=("sst2",), n_per_task=6, progress=False,
                                 protocol="likelihood")
    assert result["sst2"]["n"] == 6
    assert max(model.lengths_seen) <= 6


# ---------------------------------------------------------------------------------------------
# The task table against the real data files


@pytest.mark.parametrize("name", list(TASKS))
def test_real_task_files_parse_with_declared_labels(name):
    task = TASKS[name]
    records = load_records(task, TASKS_DIR)  # raises on a label outside the set
    golds = {task.gold_index(r) for r in records}
    assert golds == set(range(len(task.labels))), "every declared class should occur"
    assert all(task.prompt(r).endswith(ANSWER_CUE) for r in records)

    subset = select_subset(task, records, 40, seed=0)
    counts = [sum(task.gold_index(r) == k for r in subset) for k in range(len(task.labels))]
    assert len(subset) == 40 and max(counts) - min(counts) <= 1, counts
    assert subset == select_subset(task, records, 40, seed=0)  # same at every evaluation point
    assert subset != select_subset(task, records, 40, seed=1)


def test_default_tasks_are_in_the_table():
    assert set(DEFAULT_TASKS) <= set(TASKS)


def test_label_words_continue_the_prompt_as_joint_tokenization_would(tiny_llama):
    _, tok = tiny_llama
    for task in TASKS.values():
        record = load_records(task, TASKS_DIR)[0]
        prompt = task.prompt(record)
        for word in task.label_words:
            assert encode(tok, prompt) + continuation_ids(tok, word) == encode(tok, prompt + word), (task.name, word)


# ---------------------------------------------------------------------------------------------
# The tiny real model, end to end


def test_tiny_model_all_tasks_in_range_and_result_file(tiny_llama, tmp_path):
    model, tok = tiny_llama
    result = run_downstream_eval(model, tok, TASKS_DIR, tasks=tuple(TASKS), n_per_task=8,
                                 batch_size=16, progress=False, protocol="likelihood")
    assert set(result) == set(TASKS)
    for name, metrics in result.items():
        assert metrics["n"] == 8, name
        assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["f1"] <= 1.0, name
        assert -1.0 <= metrics["mcc"] <= 1.0, name

    out = write_downstream_result(tmp_path / "downstream" / "edits_000010.json", result, total_edits=10,
                                  batch_index=1)
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert saved["total_edits"] == 10 and saved["batch_index"] == 1 and "num_edits" not in saved
    assert saved["tasks"] == result  # JSON round-trips floats exactly
    assert [p.name for p in out.parent.iterdir()] == ["edits_000010.json"]  # no temp file left


def test_prompt_longer_than_context_is_cut_from_the_left(tiny_llama):
    # The end-to-end run above also meets this: its 8-item MMLU and dialogue subsets hold
    # prompts of 682 and 885 tokens against a 512-token context.
    model, tok = tiny_llama
    record = {"question": "why? " * 2000, "subject": "philosophy", "choices": ["a", "b", "c", "d"], "answer": 2}
    prompt = TASKS["mmlu"].prompt(record)
    candidates = [continuation_ids(tok, word) for word in TASKS["mmlu"].label_words]
    limit = model.config.max_position_embeddings
    pairs = build_pairs(tok, [prompt], candidates, limit=limit)
    longest = max(len(c) for c in candidates)
    for prompt_ids, cont in pairs:
        assert len(prompt_ids) == limit - longest and len(prompt_ids) + len(cont) <= limit
        assert prompt_ids[0] == tok.bos_token_id  # BOS kept, the start of the question dropped
        kept = len(prompt_ids) - 1
        assert prompt_ids[1:] == encode(tok, prompt)[-kept:]  # ... and the end with the options kept


# ---------------------------------------------------------------------------------------------
# Bad input


def test_unknown_task_lists_the_known_ones(tmp_path):
    model, tok = _hint_model()
    with pytest.raises(ValueError, match=r"unknown downstream task 'glu'.*sst2.*mmlu"):
        run_downstream_eval(model, tok, tmp_path, tasks=("glu",), progress=False)


def test_missing_folder_names_it(tmp_path):
    model, tok = _hint_model()
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope.*sst2.json"):
        run_downstream_eval(model, tok, missing, progress=False)


def test_missing_task_file_names_the_file(tmp_path):
    _write_json(tmp_path / "sst2.json", HAND_MADE_SST2)
    model, tok = _hint_model()
    with pytest.raises(FileNotFoundError, match="mmlu.json"):
        run_downstream_eval(model, tok, tmp_path, tasks=("sst2", "mmlu"), progress=False)
    assert model.lengths_seen == [], "files are checked before any task runs"


def test_label_outside_the_declared_set_is_rejected(tmp_path):
    _write_json(tmp_path / "sst2.json", [{"sentence": "good", "label": "1"}])  # string, not int
    model, tok = _hint_model()
    with pytest.raises(ValueError, match="sst2.json, record 0"):
        run_downstream_eval(model, tok, tmp_path, tasks=("sst2",), progress=False)


def test_result_file_is_replaced_whole(tmp_path):
    path = tmp_path / "point.json"
    write_downstream_result(path, {"sst2": {"accuracy": 0.5, "f1": 0.5, "mcc": 0.0, "n": 2}}, 0, 0)
    write_downstream_result(path, {"sst2": {"accuracy": 1.0, "f1": 1.0, "mcc": 1.0, "n": 2}}, 5, 1)
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved == {"total_edits": 5, "batch_index": 1,
                     "tasks": {"sst2": {"accuracy": 1.0, "f1": 1.0, "mcc": 1.0, "n": 2}}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["point.json"]
