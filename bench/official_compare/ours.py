"""Our side of the ROME/FT fidelity check against the official research code (issue 15 item 9).

Runs in this project's venv. Writes the shared inputs (requests, context templates, C0, the model as
a plain fp32 folder) under --work (outside the repository) and our numbers next to them; the
official side (official_driver.py, its own venv) reads the same inputs, and compare.py makes the table.

    . .venv/bin/activate
    python bench/official_compare/ours.py --work /work/official
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import rome.editor as rome_editor_module  # noqa: E402
from baselines.ft import FTEditor  # noqa: E402
from baselines.ft.hparams import FTHyperParams  # noqa: E402
from rome import ROMEEditor  # noqa: E402
from rome.hparams import ROMEHyperParams  # noqa: E402
from smollm2 import load_smollm2  # noqa: E402
from util.second_moment import cached_second_moments  # noqa: E402

from model_checks import GREEDY_TOKENS, greedy, state_sha256  # noqa: E402 (this folder)



def load_requests(path: Path, n: int) -> list[dict]:
    records = json.loads(path.read_text())[:n]
    return [{"case_id": r["case_id"], "prompt": r["requested_rewrite"]["prompt"],
             "subject": r["requested_rewrite"]["subject"],
             "target_new": {"str": r["requested_rewrite"]["target_new"]["str"]},
             "target_true": {"str": r["requested_rewrite"]["target_true"]["str"]}} for r in records]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--work", default="/work/official", help="folder outside the repository for big files")
    p.add_argument("--n_rome", type=int, default=4)
    p.add_argument("--n_ft", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work)
    inputs_dir, runs = work / "inputs", work / "runs"
    inputs_dir.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)

    model, tok = load_smollm2(torch.float32)
    hf_dir = work / "smollm2-hf"
    if not (hf_dir / "model.safetensors").exists():
        gguf_model = copy.deepcopy(model)
        gguf_model.hf_quantizer = None  # de-quantised fp32 weights; the GGUF flag only blocks saving
        if hasattr(gguf_model.config, "quantization_config"):
            del gguf_model.config.quantization_config
        gguf_model.save_pretrained(hf_dir)
        tok.save_pretrained(hf_dir)
        del gguf_model
    original_state = {k: v.clone() for k, v in model.state_dict().items()}

    requests = load_requests(ROOT / "assets/counterfact_test2191_first200.json", max(args.n_rome, args.n_ft))
    rome_hp = ROMEHyperParams.from_json(ROOT / "hparams/ROME/SmolLM2-135M.json").resolved_for(model)
    ft_hp = FTHyperParams.from_json(ROOT / "hparams/FT/SmolLM2-135M.json").resolved_for(model)

    templates = ROMEEditor.make_context_templates(model, tok, rome_hp, seed=args.seed)
    c0_name = rome_hp.rewrite_module(rome_hp.layers[0])
    c0 = cached_second_moments(model, tok, [c0_name], rome_hp.stats_spec(), ROOT / "data/stats",
                               progress=False)[c0_name].float().cpu()
    c0_path = inputs_dir / "C0_layer5.pt"
    torch.save(c0, c0_path)
    inputs = {
        "model_dir": str(hf_dir), "model_sha256": state_sha256(model),
        "requests": requests, "context_templates": templates, "C0_path": str(c0_path), "C0_module": c0_name,
        "C0_sha256": hashlib.sha256(c0.numpy().tobytes()).hexdigest(),
        "rome_hparams": {k: v for k, v in vars(rome_hp).items() if k != "notes"},
        "ft_hparams": {k: v for k, v in vars(ft_hp).items() if k != "notes"},
        "n_rome": args.n_rome, "n_ft": args.n_ft, "greedy_tokens": GREEDY_TOKENS,
    }
    (inputs_dir / "inputs.json").write_text(json.dumps(inputs, indent=1))

    out = {"side": "ours", "torch": torch.__version__, "rome": [], "ft": {}}

    # ---- ROME: one request per edit() call, sequentially --------------------------------------
    seen: dict = {}
    real_rank_one, real_compute_values = rome_editor_module.rank_one_update, rome_editor_module.compute_values

    def spy_rank_one(current_out, v_star, k_write, u):
        seen.update(current_out=current_out.detach().clone(), v_star=v_star.detach().clone(),
                    k_write=k_write.detach().clone(), u=u.detach().clone())
        return real_rank_one(current_out, v_star, k_write, u)

    def spy_key_direction(k_star, cov):
        seen["k_star"] = k_star.detach().clone()
        return real_key_direction(k_star, cov)

    def spy_compute_values(*a, **kw):
        result = real_compute_values(*a, **kw)
        seen["value_steps"] = result.updates[0]
        return result

    real_key_direction = rome_editor_module.key_direction
    rome_editor_module.rank_one_update = spy_rank_one
    rome_editor_module.key_direction = spy_key_direction
    rome_editor_module.compute_values = spy_compute_values
    editor = ROMEEditor(model, tok, rome_hp, stats_dir=ROOT / "data/stats", context_templates=templates,
                        seed=args.seed, progress=False)
    editor.cov = c0.clone()
    w = editor.weights[editor.layer]
    weights_after = []
    for r in requests[: args.n_rome]:
        before = w.detach().clone()
        t0 = time.time()
        report = editor.edit([r])
        u = seen["u"] / seen["u"].norm()
        k = seen["k_write"].double()
        right = (seen["v_star"].double() - seen["current_out"].double()) / (u @ k)
        out["rome"].append({
            "case_id": r["case_id"], "loss": report.value_loss_mean, "adam_steps": seen["value_steps"],
            "seconds": time.time() - t0, "u": u.float().tolist(), "k_star": seen["k_star"].float().tolist(),
            "k_plain": seen["k_write"].float().tolist(), "v_star": seen["v_star"].float().tolist(),
            "right_vector": right.float().tolist(),
        })
        weights_after.append(w.detach().clone())
        print(f"ROME case {r['case_id']}: loss {report.value_loss_mean:.5f}, "
              f"{seen['value_steps']} steps, |Delta| {float((w - before).norm()):.4f}", flush=True)
    torch.save(torch.stack(weights_after), runs / "ours_rome_weights.pt")
    out["rome_greedy"] = [greedy(model, tok, r["prompt"].replace("{}", r["subject"])) for r in requests[: args.n_rome]]
    rome_editor_module.rank_one_update, rome_editor_module.key_direction = real_rank_one, real_key_direction
    rome_editor_module.compute_values = real_compute_values

    # ---- FT: two sequential calls of half the requests each, from the unedited model ----------
    variants = {"json": {}, "constr5e-4": {"norm_constraint": 5e-4}}
    for name, change in variants.items():
        model.load_state_dict(original_state)
        hp = FTHyperParams.from_dict({**{k: v for k, v in vars(ft_hp).items()}, **change}).resolved_for(model)
        ft = FTEditor(model, tok, hp, progress=False)
        half = args.n_ft // 2
        calls, saved = [], {}
        for c, batch in enumerate((requests[:half], requests[half : args.n_ft])):
            before = {k: v.detach().clone() for k, v in ft.weights.items()}
            t0 = time.time()
            report = ft.edit(batch)
            calls.append({"cases": [r["case_id"] for r in batch], "final_loss": report.final_loss,
                          "epochs": report.epochs, "seconds": time.time() - t0})
            for k, v in ft.weights.items():
                saved[f"{k}@call{c}"] = v.detach().clone()
            print(f"FT {name} call {c}: loss {report.final_loss:.6f} after {report.epochs} epochs", flush=True)
        torch.save(saved, runs / f"ours_ft_{name}_weights.pt")
        out["ft"][name] = {"hparams_change": change, "calls": calls,
                           "greedy": [greedy(model, tok, r["prompt"].replace("{}", r["subject"]))
                                      for r in requests[: args.n_ft]]}
    model.load_state_dict(original_state)
    (runs / "ours.json").write_text(json.dumps(out))
    print("wrote", runs / "ours.json")


if __name__ == "__main__":
    main()
