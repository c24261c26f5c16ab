"""Per-step trace of our ROME value optimisation (util/values.py), first request only (case 13).

Same inputs as ours.py / official_driver.py (inputs.json under --work: templates, C0; the model from
the GGUF wheel, whose state-dict hash is checked against inputs.json). trace_hooks.Tracer reads
_optimise's frame locals (nll, kl, decay, delta, h0); the loss terms of every evaluation are read by a
stop rule that wraps the default one (LossBelow(5e-2), same answer) and looks at the same locals.

    . .venv/bin/activate
    python bench/official_compare/trace_ours.py --work /work/official --suffix_only 1 --tag ours_suffix
    python bench/official_compare/trace_ours.py --work /work/official --suffix_only 0 --tag ours_full
    python bench/official_compare/trace_ours.py --work /work/official --suffix_only 1 --perturb 1e-7 --tag ours_suffix_p1e-7
    python bench/official_compare/trace_ours.py --work /work/official --suffix_only 1 \
        --force /work/official/runs/trace/official_trace.json --tag ours_suffix_forced
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rome import ROMEEditor  # noqa: E402
from rome.hparams import ROMEHyperParams  # noqa: E402
from smollm2 import load_smollm2  # noqa: E402
from model_checks import state_sha256  # noqa: E402
from trace_hooks import Tracer  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--work", default="/work/official")
    p.add_argument("--suffix_only", type=int, default=1)
    p.add_argument("--perturb", type=float, default=0.0)
    p.add_argument("--tag", default="ours_suffix")
    p.add_argument("--every_step", type=int, default=0, help="per-term gradients at every step")
    p.add_argument("--force", default=None, help="a trace JSON whose delta_after_step is imposed after each step")
    args = p.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work)
    inputs = json.loads((work / "inputs" / "inputs.json").read_text())
    out_dir = work / "runs" / "trace"
    out_dir.mkdir(parents=True, exist_ok=True)

    model, tok = load_smollm2(torch.float32)
    assert state_sha256(model) == inputs["model_sha256"], "not the weights of inputs.json"
    hp = ROMEHyperParams.from_json(ROOT / "hparams/ROME/SmolLM2-135M.json").resolved_for(model)
    editor = ROMEEditor(model, tok, hp, stats_dir=ROOT / "data/stats", context_templates=inputs["context_templates"],
                        seed=0, progress=False)
    editor.cov = torch.load(inputs["C0_path"]).clone()

    tracer = Tracer("delta", {"nll": "nll", "kl": "kl", "wd": "decay"}, "h0", perturb=args.perturb,
                    force=[s["delta_after_step"] for s in json.loads(Path(args.force).read_text())["steps"]]
                    if args.force else None, every_step=bool(args.every_step))
    tracer.install()
    real_stop = editor.value_spec.stop

    def stop(state):
        loc = inspect.currentframe().f_back.f_locals
        tracer.evals.append({"loss": float(loc["loss"][0]), "nll": float(loc["nll"][0]), "kl": float(loc["kl"][0]),
                             "wd": float(loc["decay"][0])})
        return real_stop(state)

    editor.value_spec = dataclasses.replace(editor.value_spec, stop=stop, suffix_only=bool(args.suffix_only))
    request = inputs["requests"][0]
    report = editor.edit([request])
    trace = tracer.result()
    if tracer.h0 is not None and tracer.delta is not None:
        trace["v_star"] = (torch.tensor(tracer.h0) + torch.tensor(trace["delta_final"])).float().tolist()
    trace.update(side=args.tag, case_id=request["case_id"], suffix_only=bool(args.suffix_only),
                 value_loss=report.value_loss_mean, torch=torch.__version__)
    (out_dir / f"{args.tag}_trace.json").write_text(json.dumps(trace))
    print(args.tag, "steps", len(trace["steps"]), "evals", len(trace["evals"]), "loss", report.value_loss_mean)


if __name__ == "__main__":
    main()
