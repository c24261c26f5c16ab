"""The unit measurements README's stream section cites, rerun on an idle machine, as one JSON.

    python bench/unit_speedups.py [--out bench/results/stream/unit_speedups.json]

On SmolLM2-135M: teacher-forced scoring of 40 CounterFact cases (many cases per pass, and one case
per pass) with their largest NLL difference; generation of 8 cases (every 10th record) sampled
together and one case at a time, and how many texts are identical; 4 value steps of 100 requests
with the model in float32 and in bfloat16 (the NSE file's settings, the fp32 model's templates).
Nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from provenance import Provenance  # noqa: E402
from smollm2 import load_smollm2  # noqa: E402

from experiments.algorithms import get_algorithm  # noqa: E402
from experiments.metrics.counterfact import probability_metrics, probability_metrics_many  # noqa: E402
from experiments.metrics.fluency import generation_ids, generation_ids_many  # noqa: E402
from util.requests import normalize_request  # noqa: E402
from util.values import compute_values  # noqa: E402

DATA = ROOT / "assets" / "counterfact_test2191_first2000.json"


def _clock(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _value_steps(dtype: torch.dtype, requests: list[dict], steps: int, templates=None):
    model, tok = load_smollm2(dtype)
    alg = get_algorithm("NSE")
    data = json.loads((ROOT / "hparams/NSE/SmolLM2-135M.json").read_text())
    editor = alg.make_editor(model, tok, alg.hparams_class.from_dict(data, source="unit_speedups"), progress=False)
    templates = templates or editor.make_context_templates(model, tok, editor.hparams, 0)
    spec = replace(editor.value_spec, num_steps=steps)
    seconds, _ = _clock(lambda: compute_values(model, tok, requests, spec, templates))
    return seconds, templates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/stream/unit_speedups.json")
    args = ap.parse_args()
    stamp = Provenance.start(__file__)
    records = json.loads(DATA.read_text())
    model, tok = load_smollm2(torch.float32)
    out: dict = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                 "load_average_start": os.getloadavg()}
    tf = records[:40]
    many_s, many = _clock(lambda: probability_metrics_many(model, tok, tf))
    one_s, one = _clock(lambda: [probability_metrics(model, tok, r) for r in tf])
    out["teacher_forced_s_per_case"] = {"many_per_pass": many_s / 40, "one_case_per_pass": one_s / 40}
    out["teacher_forced_max_nll_difference"] = max(
        abs(a[g][i][k] - b[g][i][k]) for a, b in zip(many, one) for g in a if g.endswith("_probs")
        for i in range(len(a[g])) for k in ("target_new", "target_true"))
    gen = records[0:80:10]
    prompts, seeds = [r["generation_prompts"] for r in gen], [r["case_id"] for r in gen]
    together_s, together = _clock(lambda: generation_ids_many(model, tok, prompts, seeds))
    alone_s, alone = _clock(lambda: [generation_ids(model, tok, p, seed=s) for p, s in zip(prompts, seeds)])
    out["generation_s_per_case"] = {"8_cases_together": together_s / 8, "one_case_at_a_time": alone_s / 8}
    out["generation_identical_texts"] = [sum(x == y for c1, c2 in zip(together, alone) for x, y in zip(c1, c2)),
                                         sum(len(c) for c in alone)]
    requests = [normalize_request({"case_id": r["case_id"], **r["requested_rewrite"]}) for r in records[:100]]
    fp32_s, templates = _value_steps(torch.float32, requests, 4)
    bf16_s, _ = _value_steps(torch.bfloat16, requests, 4, templates)
    out["value_phase_4_steps_100_requests_s"] = {"float32": fp32_s, "bfloat16": bf16_s}
    out["load_average_end"] = os.getloadavg()
    out["provenance"] = stamp.finish()
    text = json.dumps(out, indent=1)
    print(text)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
