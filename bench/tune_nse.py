"""Tune NSE hyperparameters on held-out real CounterFact records (SmolLM2 by default).

    python bench/tune_nse.py --hparams hparams/NSE/SmolLM2-135M.json --cases 20 --offset 100 \
        --override '{"v_lr": 0.5}'

Prints, per setting, how many rewrites flipped (greedy continuation starts with the new target),
P(new) > P(true) on the rewrite prompt, and neighbourhood prompts that kept P(true) > P(new).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.provenance import Provenance  # noqa: E402
from bench.smollm2 import load_smollm2  # noqa: E402
from dsets import resolve_global_dir  # noqa: E402
from nse import NSEEditor, NSEHyperParams  # noqa: E402
from util.tokens import encode, encode_target  # noqa: E402


def nll(model, tok, prompt: str, target: str) -> float:
    p, t = encode(tok, prompt), encode_target(tok, target)
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([p + t])).logits[0].float(), -1)
    return -sum(lp[len(p) - 1 + i, x].item() for i, x in enumerate(t)) / len(t)


def greedy(model, tok, prompt: str, n: int = 3) -> str:
    ids = torch.tensor([encode(tok, prompt)])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False)
    return tok.decode(out[0, ids.shape[1]:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hparams", required=True)
    ap.add_argument("--override", default="{}")
    ap.add_argument("--cases", type=int, default=16)
    ap.add_argument("--offset", type=int, default=100)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--data", default="assets/counterfact_test2191_first200.json")
    args = ap.parse_args()
    stamp = Provenance.start(__file__)
    torch.manual_seed(0)
    model, tok = load_smollm2()
    hp = dataclasses.replace(NSEHyperParams.from_json(args.hparams), **json.loads(args.override))
    records = json.load(open(args.data))[args.offset : args.offset + args.cases]
    requests = [dict(r["requested_rewrite"], case_id=r["case_id"]) for r in records]
    editor = NSEEditor(model, tok, hp, stats_dir=resolve_global_dir("STATS_DIR"), progress=False)
    t0 = time.time()
    for s in range(0, len(requests), args.batch):
        print(editor.edit(requests[s : s + args.batch]).log_line(), flush=True)
    flips = wins = nb_ok = nb_total = 0
    for r, rec in zip(requests, records):
        prompt = r["prompt"].replace("{}", r["subject"])
        new, true = " " + r["target_new"]["str"].strip(), " " + r["target_true"]["str"].strip()
        flips += greedy(model, tok, prompt).startswith(new)
        wins += nll(model, tok, prompt, new) < nll(model, tok, prompt, true)
        for nb in rec["neighborhood_prompts"][:3]:
            nb_total += 1
            nb_ok += nll(model, tok, nb, true) < nll(model, tok, nb, new)
    n = len(requests)
    print(json.dumps({"override": json.loads(args.override), "greedy_flips": f"{flips}/{n}",
                      "p_new_gt_p_true": f"{wins}/{n}", "neighbourhood_kept": f"{nb_ok}/{nb_total}",
                      "seconds": round(time.time() - t0, 1), "provenance": stamp.finish()}))


if __name__ == "__main__":
    main()
