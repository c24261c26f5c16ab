"""Table of differences between our ROME/FT and the official code on identical inputs.

Reads what ours.py and official_driver.py wrote under --work and writes
bench/results/official_rome_ft/comparison.json (numbers) and table.md (the table).

    . .venv/bin/activate && python bench/official_compare/compare.py --work /work/official
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench/results/official_rome_ft"
sys.path.insert(0, str(ROOT / "bench"))
from provenance import Provenance  # noqa: E402


def diff(a: torch.Tensor, b: torch.Tensor) -> dict:
    """max |a - b| and ||a - b|| / ||b|| (b: the official value), in float64."""
    a, b = a.double(), b.double()
    return {"max_abs": float((a - b).abs().max()), "rel": float((a - b).norm() / b.norm()),
            "norm_official": float(b.norm())}


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/work/official")
    args = p.parse_args()
    stamp = Provenance.start(__file__)
    work = Path(args.work)
    runs = work / "runs"
    inputs = json.loads((work / "inputs/inputs.json").read_text())
    ours = json.loads((runs / "ours.json").read_text())
    off_rome = json.loads((runs / "official_rome.json").read_text())
    off_ft = json.loads((runs / "official_ft.json").read_text())
    tok_decode = None
    try:
        from transformers import AutoTokenizer

        tok_decode = AutoTokenizer.from_pretrained(inputs["model_dir"]).decode
    except Exception:  # the table works without texts
        pass
    state = load_file(str(Path(inputs["model_dir"]) / "model.safetensors"))
    c0 = torch.load(inputs["C0_path"])
    result: dict = {
        "inputs": {k: inputs[k] for k in ("model_sha256", "C0_module", "C0_sha256", "requests", "context_templates",
                                          "rome_hparams", "ft_hparams", "n_rome", "n_ft", "greedy_tokens")},
        "same_weights_loaded": off_rome["model_sha256"] == off_ft["model_sha256"] == inputs["model_sha256"],
        "versions": {"ours_torch": ours["torch"], "official_torch": off_rome["torch"],
                     "official_transformers": off_rome["transformers"], "official_numpy": off_rome["numpy"]},
        "C0_condition_number": float(torch.linalg.cond(c0.double())),
    }

    # ---- ROME -------------------------------------------------------------------------------
    c0_inv32 = torch.inverse(c0.float()).float()  # the official get_inv_cov's arithmetic
    w_name = inputs["rome_hparams"]["rewrite_module_tmp"].format(inputs["rome_hparams"]["layers"][0]) + ".weight"
    w0 = state[w_name]
    w_ours = torch.load(runs / "ours_rome_weights.pt")
    w_off = torch.load(runs / "official_rome_weights.pt")
    rows = []
    for i, (a, b) in enumerate(zip(ours["rome"], off_rome["rome"])):
        assert a["case_id"] == b["case_id"]
        t = lambda r, k: torch.tensor(r[k], dtype=torch.float64)  # noqa: E731
        k_star = t(a, "k_star")
        prev_o, prev_f = (w_ours[i - 1], w_off[i - 1]) if i else (w0, w0)
        rows.append({
            "case_id": a["case_id"],
            "k_star_template_mean": diff(t(a, "k_star"), t(b, "k_star")),
            "k_plain": diff(t(a, "k_plain"), t(b, "k_plain")),
            "u": diff(t(a, "u"), t(b, "u")),
            # The same k* through both u recipes: float32 inverse (official) vs float64 solve (ours).
            "u_recipe_f32_inverse_vs_f64_solve": diff(unit(torch.linalg.solve(c0.double(), k_star)),
                                                      unit(c0_inv32 @ k_star.float())),
            "u_official_recipe_on_our_k_star_vs_official_u": diff(unit(c0_inv32 @ k_star.float()), t(b, "u")),
            "v_star": diff(t(a, "v_star"), t(b, "v_star")),
            "right_vector": diff(t(a, "right_vector"), t(b, "right_vector")),
            "delta_this_edit": diff(w_ours[i] - prev_o, w_off[i] - prev_f),
            "weight_change_since_start": diff(w_ours[i] - w0, w_off[i] - w0),
            "loss_ours": a["loss"], "loss_official": b["loss"], "loss_abs_diff": abs(a["loss"] - b["loss"]),
            "adam_steps_ours": a["adam_steps"], "adam_steps_official": b["adam_steps"],
        })
    greedy_same = [x == y for x, y in zip(ours["rome_greedy"], off_rome["rome_greedy"])]
    result["rome"] = {"per_edit": rows, "greedy_same": greedy_same,
                      "greedy_texts_ours": [tok_decode(x) for x in ours["rome_greedy"]] if tok_decode else None,
                      "greedy_texts_official": [tok_decode(x) for x in off_rome["rome_greedy"]] if tok_decode else None}

    # ---- FT ---------------------------------------------------------------------------------
    result["ft"] = {}
    for name, mine in ours["ft"].items():
        theirs = off_ft["ft"][name]
        wo, wf = torch.load(runs / f"ours_ft_{name}_weights.pt"), torch.load(runs / f"official_ft_{name}_weights.pt")
        calls = []
        for c, (a, b) in enumerate(zip(mine["calls"], theirs["calls"])):
            per_param = {}
            for key in sorted(k for k in wf if k.endswith(f"@call{c}")):
                param = key.split("@")[0]
                before_o = wo[f"{param}@call{c - 1}"] if c else state[param]
                before_f = wf[f"{param}@call{c - 1}"] if c else state[param]
                per_param[param] = {"delta_this_call": diff(wo[key] - before_o, wf[key] - before_f),
                                    "weight_change_since_start": diff(wo[key] - state[param], wf[key] - state[param])}
            calls.append({"cases": a["cases"], "params": per_param, "final_loss_ours": a["final_loss"],
                          "final_loss_official": b["final_loss"], "epochs_ours": a["epochs"],
                          "epochs_official": b["epochs"], "loss_abs_diff": abs(a["final_loss"] - b["final_loss"])})
        result["ft"][name] = {"hparams_change": mine["hparams_change"], "calls": calls,
                              "greedy_same": [x == y for x, y in zip(mine["greedy"], theirs["greedy"])]}
    OUT.mkdir(parents=True, exist_ok=True)
    result["provenance"] = stamp.finish()
    (OUT / "comparison.json").write_text(json.dumps(result, indent=1))

    # ---- table ------------------------------------------------------------------------------
    f = lambda d: f"{d['max_abs']:.1e} / {d['rel']:.1e}"  # noqa: E731
    lines = ["ROME, one request per call, sequential edits (max abs / relative difference, ours vs official):", "",
             "| edit | case | k* (template mean) | u | u: f32 inverse vs f64 solve, same k* | v* | right vector | ΔW this edit | W − W0 | loss ours / official | Adam steps |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows):
        lines.append(f"| {i} | {r['case_id']} | {f(r['k_star_template_mean'])} | {f(r['u'])} | "
                     f"{f(r['u_recipe_f32_inverse_vs_f64_solve'])} | {f(r['v_star'])} | {f(r['right_vector'])} | "
                     f"{f(r['delta_this_edit'])} | {f(r['weight_change_since_start'])} | "
                     f"{r['loss_ours']:.6f} / {r['loss_official']:.6f} | {r['adam_steps_ours']} / {r['adam_steps_official']} |")
    lines += ["", f"ROME greedy continuations ({inputs['greedy_tokens']} tokens) after all edits: "
              f"{sum(greedy_same)}/{len(greedy_same)} the same.", "",
              "FT, two sequential calls of 4 requests each (max abs / relative difference of the edited weight):", "",
              "| variant | call | ΔW this call | W − W0 | final loss ours / official | epochs ours / official |",
              "|---|---|---|---|---|---|"]
    for name, v in result["ft"].items():
        for c, call in enumerate(v["calls"]):
            for param, d in call["params"].items():
                lines.append(f"| {name} | {c} | {f(d['delta_this_call'])} | {f(d['weight_change_since_start'])} | "
                             f"{call['final_loss_ours']:.7f} / {call['final_loss_official']:.7f} | "
                             f"{call['epochs_ours']} / {call['epochs_official']} |")
        lines.append(f"| {name} | greedy after both calls | {sum(v['greedy_same'])}/{len(v['greedy_same'])} the same | | | |")
    lines += ["", f"C0 condition number: {result['C0_condition_number']:.3e}; same weights loaded on both sides: "
              f"{result['same_weights_loaded']}."]
    (OUT / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
