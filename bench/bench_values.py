"""Batched vs one-request-at-a-time value optimisation (wall time on this machine).

    python bench/bench_values.py [--model assets/tinystories-260k-llama] [--n 16]

Both paths compute the same z (tests/test_values.py pins that); this measures what batching buys.
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
from nse import NSEHyperParams  # noqa: E402
from util.model_loading import load_model_and_tokenizer  # noqa: E402
from util.requests import normalize_request  # noqa: E402
from util.values import compute_values  # noqa: E402

TEMPLATES = [["{}"], ["The day was warm. {}", "Therefore it was. {}", "Because of that. {}", "I think. {}",
                      "You know. {}"]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="assets/tinystories-260k-llama")
    ap.add_argument("--hparams", default="hparams/NSE/tinystories-260k.json")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--data", default="assets/counterfact_test2191_first200.json")
    args = ap.parse_args()
    model, tok = load_model_and_tokenizer(args.model)
    hp = dataclasses.replace(NSEHyperParams.from_json(args.hparams), v_num_grad_steps=args.steps).resolved_for(model).value_spec(model)
    records = json.load(open(args.data))[: args.n]
    reqs = [normalize_request({"case_id": r["case_id"], **r["requested_rewrite"]}) for r in records]
    t0 = time.perf_counter()
    batched = compute_values(model, tok, reqs, hp, TEMPLATES)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    singles = torch.cat([compute_values(model, tok, [r], hp, TEMPLATES).z for r in reqs])
    t_single = time.perf_counter() - t0
    print(json.dumps({"model": args.model, "requests": args.n, "max_steps": args.steps,
                      "device": str(next(model.parameters()).device), "torch_threads": torch.get_num_threads(),
                      "batched_s": round(t_batched, 2), "one_at_a_time_s": round(t_single, 2),
                      "speedup": round(t_single / t_batched, 2),
                      "max_abs_z_diff": float((batched.z - singles).abs().max())}))


if __name__ == "__main__":
    main()
