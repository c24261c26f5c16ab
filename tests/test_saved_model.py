"""--save_model: a Hugging Face folder that reloads with the same logits, and continuing from it
gives what an unbroken run gives."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import CORPUS, COUNTERFACT, REQUESTS, TINY_LLAMA, stories_hparams, assert_same_scores
from transformers import AutoModelForCausalLM, AutoTokenizer

from experiments.algorithms import get_algorithm
from experiments.evaluate import main as evaluate
from experiments.saved_model import EDIT_INFO, STATE_FILE, save_dir_problem, save_edited_model
from util.editor import originals_path
from util.model_loading import load_model_and_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TINY = TINY_LLAMA
TEXT = "Once upon a time, Lily liked to eat apples, and her favourite colour was red."


def _logits(model, tok, text: str = TEXT) -> torch.Tensor:
    with torch.no_grad():
        return model(**tok(text, return_tensors="pt")).logits


def test_saved_model_reloads_with_the_same_logits(tiny_llama, tmp_path):
    model, tok = tiny_llama
    before = _logits(model, tok)
    editor = get_algorithm("NSE").make_editor(model, tok, stories_hparams(), stats_dir=tmp_path / "stats")
    editor.edit(REQUESTS[:2])
    edited = _logits(model, tok)
    assert not torch.equal(before, edited)  # the edit changed the model
    out = save_edited_model(model, tok, editor, tmp_path / "edited", {"alg_name": "NSE", "run": "r"})
    assert (out / "model.safetensors").is_file() and (out / STATE_FILE).is_file()
    assert json.loads((out / EDIT_INFO).read_text())["total_edits"] == 2
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok2 = AutoTokenizer.from_pretrained(out)
    assert tok2(TEXT)["input_ids"] == tok(TEXT)["input_ids"] and tok2.pad_token == tok.pad_token
    assert torch.equal(_logits(reloaded, tok2), edited)
    state = torch.load(out / STATE_FILE, weights_only=True)
    assert state["total_edits"] == 2 and state["num_batches"] == 1 and "num_edits" not in state
    # Saving again replaces the folder; a folder that is not a saved model is refused.
    save_edited_model(model, tok, editor, out, {"alg_name": "NSE"})
    assert save_dir_problem(out) is None
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert "holds no saved edited model" in save_dir_problem(tmp_path / "mine")
    with pytest.raises(ValueError, match="holds no saved edited model"):
        save_edited_model(model, tok, editor, tmp_path / "mine", {})
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def small_hparams(folder: Path) -> Path:
    hp = json.loads((ROOT / "hparams/NSE/tinystories-260k.json").read_text())
    path = folder / "tiny_nse.json"
    path.write_text(json.dumps({**hp, "mom2_n_samples": 60, "mom2_max_length": 64}))
    return path


def _args(results: Path, stats: Path, **extra) -> list[str]:
    base = {
        "alg_name": "NSE", "model_name": str(TINY), "hparams_fname": str(small_hparams(stats)), "ds_name": "mcf",
        "ds_file": str(COUNTERFACT), "dataset_size_limit": "4", "num_edits": "2",
        "mom2_dataset": CORPUS, "skip_generation_tests": None, "results_dir": str(results),
        "stats_dir": str(stats), "data_dir": str(results / "no_data"),
    }
    base.update(extra)
    return [f"--{k}" if v is None else f"--{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="module")
def stats_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("stats")


def _state(run: Path) -> dict:
    state = torch.load(run / STATE_FILE, weights_only=True)
    return {**state, "original": torch.load(originals_path(run / STATE_FILE), weights_only=True)}


def _posts(run: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text())["post"] for p in run.glob("2_edits-case_*.json")}


def test_continuing_a_saved_model_equals_an_unbroken_run(tmp_path, stats_dir):
    # A: batches 1 and 2 in one run.
    assert evaluate(_args(tmp_path / "a", stats_dir)) == 0
    run_a = tmp_path / "a" / "NSE" / "run_000"
    # B: batch 1, saved as a model folder.
    saved = tmp_path / "saved"
    assert evaluate(_args(tmp_path / "b", stats_dir, dataset_size_limit="2", save_model=str(saved))) == 0
    run_b = tmp_path / "b" / "NSE" / "run_000"
    assert json.loads((saved / EDIT_INFO).read_text())["total_edits"] == 2

    # The saved folder is the edited model: the unedited model + B's editor state, logit for logit.
    base, tok = load_model_and_tokenizer(str(TINY), "cpu")
    editor = get_algorithm("NSE").make_editor(base, tok, stories_hparams(), stats_dir=stats_dir)
    editor.load(run_b / STATE_FILE)
    reloaded = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32).eval()
    assert torch.equal(_logits(reloaded, tok), _logits(base, tok))
    for (name, p), (name2, q) in zip(reloaded.state_dict().items(), base.state_dict().items()):
        assert name == name2 and torch.equal(p, q), name

    # C: batch 2 from the saved folder (its state found there), stopped before editing and resumed.
    c_args = _args(tmp_path / "c", stats_dir, model_name=str(saved), dataset_offset="2", dataset_size_limit="2",
                   save_model=str(tmp_path / "saved_c"))
    assert evaluate(c_args + ["--stop_after_batches=0"]) == 0
    run_c = tmp_path / "c" / "NSE" / "run_000"
    continued = json.loads((run_c / "config.json").read_text())["continued_from"]
    assert continued == {"editor_state": str((saved / STATE_FILE).resolve()), "num_batches": 1, "total_edits": 2}
    assert evaluate(c_args + ["--continue_from_run=run_000"]) == 0

    a, c = _state(run_a), _state(run_c)
    assert (c["num_batches"], c["total_edits"]) == (a["num_batches"], a["total_edits"]) == (2, 4)
    assert c["context_templates"] == a["context_templates"]
    for part in ("original", "current", "regulariser"):
        assert a[part].keys() == c[part].keys()
        for layer in a[part]:
            assert torch.equal(c[part][layer], a[part][layer]), (part, layer)
    assert [r["batch_index"] for r in json.loads((run_c / "edit_reports.json").read_text())] == [1]
    posts_a, posts_c = _posts(run_a), _posts(run_c)
    assert len(posts_c) == 2 and posts_c.keys() <= posts_a.keys()  # C scored the records it edited
    for name, post in posts_c.items():
        assert_same_scores(post, posts_a[name])  # C scored 2 cases per batch of prompts, A 4
    info = json.loads((tmp_path / "saved_c" / EDIT_INFO).read_text())
    assert info["total_edits"] == 4 and info["base_model"] == str(TINY) and info["model_name"] == str(saved)
    assert "num_edits" not in info


def test_continuation_errors(tmp_path, capsys, stats_dir):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    assert evaluate(_args(tmp_path, stats_dir, save_model=str(foreign))) == 2
    assert "holds no saved edited model" in capsys.readouterr().err
    assert evaluate(_args(tmp_path, stats_dir, load_editor_state=str(tmp_path / "nope.pt"))) == 2
    assert "nope.pt does not exist" in capsys.readouterr().err
    other = tmp_path / "memit_model"  # a real model folder that another method edited
    shutil.copytree(TINY, other)
    (other / STATE_FILE).write_bytes(b"")
    (other / EDIT_INFO).write_text(json.dumps({"alg_name": "MEMIT"}))
    assert evaluate(_args(tmp_path, stats_dir, model_name=str(other))) == 2
    assert "--alg_name=MEMIT" in capsys.readouterr().err
    assert not (tmp_path / "NSE").exists() and (foreign / "notes.txt").read_text() == "keep"
