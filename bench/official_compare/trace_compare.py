"""Compares the per-step value-optimisation traces (trace_ours.py, trace_official.py) for case 13.

Writes bench/results/official_rome_ft/per_step_trace.json and prints the tables used in that README.

    python bench/official_compare/trace_compare.py --work /work/official
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from provenance import Provenance  # noqa: E402

PAIRS = [("ours_suffix", "official"), ("ours_full", "official"), ("ours_suffix", "ours_full"),
         ("ours_suffix_rerun", "ours_suffix"), ("ours_suffix_p1e-7", "ours_suffix"), ("ours_suffix_p1e-6", "ours_suffix"),
         # same delta at every step (trace_ours.py --force): the gradient computation alone
         ("ours_suffix_forced", "official"), ("ours_full_forced", "official"), ("ours_full_forced_on_suffix", "ours_suffix"),
         # the same, with per-term gradients at every step (TRACE_EVERY_STEP=1 / --every_step 1); the official
         # every-step run follows the same trajectory as the plain one (autograd.grad does not touch delta.grad)
         ("ours_suffix_forced_every", "official_every"), ("ours_full_forced_every", "official_every"),
         ("ours_full_forced_every", "ours_suffix_forced_every"), ("official_every", "official")]


def T(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64).flatten()


def rel(a, b) -> float:
    a, b = T(a), T(b)
    return float((a - b).norm() / b.norm()) if b.norm() > 0 else float((a - b).norm())


def absd(a, b) -> float:
    return float((T(a) - T(b)).abs().max())


def compare(a: dict, b: dict) -> dict:
    n = min(len(a["steps"]), len(b["steps"]))
    g0a, g0b = T(a["steps"][0]["grad"]), T(b["steps"][0]["grad"])
    terms = {}
    for term in ("nll", "kl", "wd"):
        ta, tb = T(a["step0_term_grads"][term]), T(b["step0_term_grads"][term])
        terms[term] = {"norm_a": float(ta.norm()), "norm_b": float(tb.norm()),
                       "diff_norm_over_total_grad_norm": float((ta - tb).norm() / g0b.norm()),
                       "rel_diff": float((ta - tb).norm() / tb.norm()) if tb.norm() > 0 else None}
    sum_a = sum(T(a["step0_term_grads"][t]) for t in ("nll", "kl", "wd"))
    sum_b = sum(T(b["step0_term_grads"][t]) for t in ("nll", "kl", "wd"))
    steps = []
    for t in range(n):
        sa, sb = a["steps"][t], b["steps"][t]
        ua, ub = T(sa["delta_after_step"]) - T(sa["delta_before"]), T(sb["delta_after_step"]) - T(sb["delta_before"])
        steps.append({
            "t": t,
            "delta_before_rel": rel(sa["delta_before"], sb["delta_before"]) if t else 0.0,
            "delta_before_maxabs": absd(sa["delta_before"], sb["delta_before"]),
            "grad_rel": rel(sa["grad"], sb["grad"]),
            "adam_update_rel": rel(ua, ub),
            "adam_update_sign_flips": int(((ua > 0) != (ub > 0)).sum()),
            "delta_after_step_rel": rel(sa["delta_after_step"], sb["delta_after_step"]),
            "delta_norm_b": float(T(sb["delta_after_step"]).norm()),
            "grad_norm_b": float(T(sb["grad"]).norm()),
        })
        if "term_grads" in sa and "term_grads" in sb:
            steps[-1]["terms"] = {term: {"norm_b": float(T(sb["term_grads"][term]).norm()),
                                         "rel": rel(sa["term_grads"][term], sb["term_grads"][term]),
                                         "diff_over_total": float((T(sa["term_grads"][term]) - T(sb["term_grads"][term])).norm()
                                                                  / T(sb["grad"]).norm())}
                                  for term in ("nll", "kl", "wd")}
    evals = [{"t": t, **{k: ea[k] - eb[k] for k in ("loss", "nll", "kl", "wd")}}
             for t, (ea, eb) in enumerate(zip(a["evals"], b["evals"]))]
    return {
        "h0_rel": rel(a["h0"], b["h0"]), "h0_maxabs": absd(a["h0"], b["h0"]),
        "step0_grad_rel": rel(g0a, g0b), "step0_grad_maxabs": float((g0a - g0b).abs().max()),
        "step0_terms": terms,
        "step0_terms_sum_vs_grad_rel": {"a": rel(sum_a, g0a), "b": rel(sum_b, g0b)},
        "adam_steps": [len(a["steps"]), len(b["steps"])], "evals": [len(a["evals"]), len(b["evals"])],
        "final_delta_rel": rel(a["delta_final"], b["delta_final"]),
        "v_star_rel": rel(a["v_star"], b["v_star"]),
        "final_loss": [a["evals"][-1]["loss"], b["evals"][-1]["loss"]],
        "steps": steps, "eval_diffs_a_minus_b": evals,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/work/official")
    args = p.parse_args()
    stamp = Provenance.start(__file__)
    d = Path(args.work) / "runs" / "trace"
    traces = {f.name[: -len("_trace.json")]: json.loads(f.read_text()) for f in d.glob("*_trace.json")}
    h0n = float(T(traces["official"]["h0"]).norm())
    out = {"case_id": traces["official"]["case_id"], "h0_norm_official": h0n, "clamp_radius_official": 4 * h0n,
           "pairs": {}}
    for a, b in PAIRS:
        if a in traces and b in traces:
            out["pairs"][f"{a} vs {b}"] = c = compare(traces[a], traces[b])
            print(f"\n== {a} vs {b}: h0 {c['h0_rel']:.2e}, step-0 grad {c['step0_grad_rel']:.2e}, "
                  f"final delta {c['final_delta_rel']:.2e}, v* {c['v_star_rel']:.2e}, steps {c['adam_steps']}, "
                  f"final loss {c['final_loss']}")
            for term, v in c["step0_terms"].items():
                print(f"   term {term}: |g| {v['norm_a']:.3e} / {v['norm_b']:.3e}, rel {v['rel_diff']}, "
                      f"diff/|g_total| {v['diff_norm_over_total_grad_norm']:.2e}")
            print("   t  delta_before  grad   update  flips  after_step  |delta|  |g|")
            for s in c["steps"]:
                print(f"  {s['t']:2d}  {s['delta_before_rel']:.2e}  {s['grad_rel']:.2e}  {s['adam_update_rel']:.2e}"
                      f"  {s['adam_update_sign_flips']:3d}  {s['delta_after_step_rel']:.2e}  {s['delta_norm_b']:.3f}"
                      f"  {s['grad_norm_b']:.3e}" + ("".join(
                          f"  {k}: |g| {v['norm_b']:.2e} rel {v['rel']:.1e} d/|g| {v['diff_over_total']:.1e}"
                          for k, v in s["terms"].items()) if "terms" in s else ""))
    out["provenance"] = stamp.finish()
    res = ROOT / "bench/results/official_rome_ft/per_step_trace.json"
    res.write_text(json.dumps(out, indent=1))
    print("wrote", res)


if __name__ == "__main__":
    main()
