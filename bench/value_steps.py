"""How many Adam steps each request of one 100-request batch takes before the original's stopping
threshold (loss < 5e-2), on SmolLM2-135M with the NSE file's 25 steps: what per-request early
stopping could save at batch 100.

    python bench/value_steps.py [--out bench/results/stream/value_steps.json]

Nothing is asserted.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from provenance import Provenance  # noqa: E402
from smollm2 import load_smollm2  # noqa: E402

from experiments.algorithms import get_algorithm  # noqa: E402
from util.requests import normalize_request  # noqa: E402
from util.values import compute_values  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/stream/value_steps.json")
    args = ap.parse_args()
    stamp = Provenance.start(__file__)
    model, tok = load_smollm2(torch.float32)
    alg = get_algorithm("NSE")
    data = json.loads((ROOT / "hparams/NSE/SmolLM2-135M.json").read_text())
    editor = alg.make_editor(model, tok, alg.hparams_class.from_dict(data, source="value_steps"), progress=False)
    templates = editor.make_context_templates(model, tok, editor.hparams, 0)
    records = json.loads((ROOT / "assets/counterfact_test2191_first2000.json").read_text())[:100]
    requests = [normalize_request({"case_id": r["case_id"], **r["requested_rewrite"]}) for r in records]
    load = os.getloadavg()
    start = time.perf_counter()
    result = compute_values(model, tok, requests, editor.value_spec, templates)
    out = {"seconds": round(time.perf_counter() - start, 1), "load_average_start": load,
           "load_average_end": os.getloadavg(), "possible_steps_per_request": editor.value_spec.num_steps - 1,
           "steps_taken": dict(sorted(collections.Counter(result.updates).items())),
           "steps_total": sum(result.updates), "steps_possible": (editor.value_spec.num_steps - 1) * len(requests),
           "loss_mean": sum(result.losses) / len(result.losses), "provenance": stamp.finish()}
    text = json.dumps(out, indent=1)
    print(text)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
