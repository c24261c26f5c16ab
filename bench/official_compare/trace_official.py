"""Per-step trace of the official ROME value optimisation (kmeng01/rome compute_v), first request only.

Runs official_driver.run_rome (the official code, unmodified, with the driver's CPU/Llama adaptations)
on the first request (case 13; no earlier edits) with trace_hooks.Tracer installed. compute_v's frame
locals give the terms: nll_loss, kl_loss, weight_decay, delta, target_init. The loss terms of every
evaluation come from numpy.round, which compute_v calls on loss, nll, kl, wd (in that order) each step.

    cd /work/official/rome && PYTHONPATH=$PWD /work/official/venv/bin/python \
        /work/main/bench/official_compare/trace_official.py --work /work/official
    (TRACE_EVERY_STEP=1: per-term gradients at every step too, written to official_every_trace.json)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import official_driver as od  # noqa: E402
from trace_hooks import Tracer  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--work", default="/work/official")
    args = p.parse_args()
    torch.set_num_threads(1)
    od.stub_unused_imports()
    work = Path(args.work)
    inputs = json.loads((work / "inputs" / "inputs.json").read_text())
    inputs["n_rome"] = 1
    out_dir = work / "runs" / "trace"
    out_dir.mkdir(parents=True, exist_ok=True)

    tracer = Tracer("delta", {"nll": "nll_loss", "kl": "kl_loss", "wd": "weight_decay"}, "target_init",
                    every_step=bool(int(__import__("os").environ.get("TRACE_EVERY_STEP", "0"))))
    tracer.install()
    printed: list[float] = []
    real_round = np.round

    def round_(x, *a):  # compute_v: np.round(loss), np.round(nll), np.round(kl), np.round(wd) per evaluation
        printed.append(float(x))
        if len(printed) % 4 == 0:
            tracer.evals.append(dict(zip(("loss", "nll", "kl", "wd"), printed[-4:])))
        return real_round(x, *a)

    np.round = round_
    result = od.run_rome(inputs, out_dir)
    trace = tracer.result()
    trace.update(side="official", case_id=result["rome"][0]["case_id"], right_vector=result["rome"][0]["right_vector"],
                 v_star=result["rome"][0]["v_star"], torch=torch.__version__)
    name = "official_every_trace.json" if tracer.every_step else "official_trace.json"
    (out_dir / name).write_text(json.dumps(trace))
    print("steps", len(trace["steps"]), "evals", len(trace["evals"]), "->", out_dir / name)


if __name__ == "__main__":
    main()
