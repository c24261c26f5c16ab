"""The official side of the ROME/FT fidelity check: our own driver that imports and calls the
official research code, unmodified, in its own venv, on the inputs ours.py wrote.

Nothing of the official code is copied here. The adaptations to CPU and to a Llama model are made
from this script at run time (see README of bench/results/official_rome_ft):

- device: the official code moves tensors to "cuda" by name; torch.Tensor.to, torch.zeros and
  torch.tensor are wrapped, after the model is loaded, so that the device "cuda" means "cpu"
  (nothing else is changed);
- the GPT config name n_embd: the loaded Llama config gets n_embd = hidden_size;
- imports the edit path does not use: matplotlib.style (an unused import in compute_v) and
  datasets (layer_stats, not called here) get stand-in modules;
- context templates: the official module-level cache is set to ours (flattened, "{}" first);
- C0: the official layer_stats called by get_inv_cov returns our matrix, so its own
  inverse (torch.inverse of the float32 moment, cast to float32) runs on the same C0;
- observation only: compute_u/compute_v/get_reprs_at_word_tokens are wrapped to record their
  results, numpy.round (used only in compute_v's loss printout) to record the exact losses, and
  FT's printouts to record its epochs and epoch losses.

    cd /work/official/rome && PYTHONPATH=/work/official/rome \
        /work/official/venv/bin/python /work/main/bench/official_compare/official_driver.py rome --work /work/official
    cd /work/official/AlphaEdit && PYTHONPATH=/work/official/AlphaEdit \
        /work/official/venv/bin/python /work/main/bench/official_compare/official_driver.py ft --work /work/official
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
from model_checks import greedy, state_sha256  # this folder: the script's own (sys.path[0])



# ---------------------------------------------------------------- CPU / Llama adaptations
def _cpu(device):
    if isinstance(device, str) and device.startswith("cuda"):
        return "cpu"
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    return device


def patch_cuda_to_cpu() -> None:
    real_to, real_zeros, real_tensor = torch.Tensor.to, torch.zeros, torch.tensor

    def to(self, *args, **kwargs):
        args = tuple(_cpu(a) for a in args)
        if "device" in kwargs:
            kwargs["device"] = _cpu(kwargs["device"])
        return real_to(self, *args, **kwargs)

    def zeros(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _cpu(kwargs["device"])
        return real_zeros(*args, **kwargs)

    def tensor(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _cpu(kwargs["device"])
        return real_tensor(*args, **kwargs)

    torch.Tensor.to, torch.zeros, torch.tensor = to, zeros, tensor


def stub_unused_imports() -> None:
    mpl, style = types.ModuleType("matplotlib"), types.ModuleType("matplotlib.style")
    style.context = None
    mpl.style = style
    sys.modules.setdefault("matplotlib", mpl)
    sys.modules.setdefault("matplotlib.style", style)
    ds = types.ModuleType("datasets")

    def load_dataset(*a, **k):
        raise RuntimeError("the comparison gives C0 directly; no dataset is loaded")

    ds.load_dataset = load_dataset
    sys.modules.setdefault("datasets", ds)


# ---------------------------------------------------------------- shared helpers (our own)
def load_model(inputs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(inputs["model_dir"], dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(inputs["model_dir"])
    model.config.n_embd = model.config.hidden_size  # the GPT name compute_v reads
    assert state_sha256(model) == inputs["model_sha256"], "not the weights ours.py used"
    # Only after loading: wrapping torch.Tensor.to before from_pretrained leaves the rotary
    # inv_freq buffer uninitialised in transformers 5 (random NaN logits).
    patch_cuda_to_cpu()
    return model, tok


def plain_requests(inputs, n):
    return [{"case_id": r["case_id"], "prompt": r["prompt"], "subject": r["subject"],
             "target_new": {"str": r["target_new"]["str"]}, "target_true": {"str": r["target_true"]["str"]}}
            for r in inputs["requests"][:n]]


def module_templates(hp: dict) -> dict:
    return {k: hp[k] for k in ("rewrite_module_tmp", "layer_module_tmp", "mlp_module_tmp", "attn_module_tmp",
                               "ln_f_module", "lm_head_module")}


# ---------------------------------------------------------------- ROME (kmeng01/rome)
def run_rome(inputs, runs: Path) -> dict:
    import rome.compute_u as cu
    import rome.compute_v as cv
    import rome.repr_tools as rt
    import rome.rome_main as rm
    from rome import ROMEHyperParams, apply_rome_to_model
    from util import nethook

    model, tok = load_model(inputs)
    ours = inputs["rome_hparams"]
    hp = ROMEHyperParams(
        layers=ours["layers"], fact_token=ours["fact_token"], v_num_grad_steps=ours["v_num_grad_steps"],
        v_lr=ours["v_lr"], v_loss_layer=ours["v_loss_layer"], v_weight_decay=ours["v_weight_decay"],
        clamp_norm_factor=ours["clamp_norm_factor"], kl_factor=ours["kl_factor"],
        mom2_adjustment=ours["mom2_adjustment"], context_template_length_params=ours["context_template_length_params"],
        mom2_dataset=ours["mom2_dataset"], mom2_n_samples=ours["mom2_n_samples"], mom2_dtype=ours["mom2_dtype"],
        **module_templates(ours),
    )
    # Inputs: our templates (flat, "{}" first) and our C0 behind the official layer_stats.
    rm.CONTEXT_TEMPLATES_CACHE = [t for group in inputs["context_templates"] for t in group]
    c0 = torch.load(inputs["C0_path"])

    class _Moment:
        def moment(self):
            return c0.clone()

    def layer_stats(model, tok, layer_name, *a, **k):
        assert layer_name == inputs["C0_module"], layer_name
        return types.SimpleNamespace(mom2=_Moment())

    cu.layer_stats = layer_stats

    # Observation wrappers.
    seen: dict = {}
    real_u, real_v, real_reprs = rm.compute_u, rm.compute_v, rt.get_reprs_at_word_tokens

    def compute_u(*a, **k):
        seen["u"] = real_u(*a, **k).detach().clone()
        return seen["u"]

    def compute_v(*a, **k):
        seen["losses"] = []
        seen["right"] = real_v(*a, **k).detach().clone()
        return seen["right"]

    def get_reprs_at_word_tokens(*a, **k):
        result = real_reprs(*a, **k)
        if k.get("track", "in") == "in":
            seen["k_star"] = result.detach().mean(0)
        else:
            seen["k_plain"], seen["out_plain"] = result[0][0].detach().clone(), result[1][0].detach().clone()
        return result

    rm.compute_u, rm.compute_v, rt.get_reprs_at_word_tokens = compute_u, compute_v, get_reprs_at_word_tokens

    class _NpRecorder:  # compute_v prints np.round(loss), np.round(nll), np.round(kl), np.round(wd) per step
        def __getattr__(self, name):
            return getattr(np, name)

        def round(self, x, *a):
            seen.setdefault("losses", []).append(float(x))
            return np.round(x, *a)

    cv.np = _NpRecorder()

    weight = nethook.get_parameter(model, f"{hp.rewrite_module_tmp.format(hp.layers[0])}.weight")
    out = {"rome": [], "model_sha256": state_sha256(model)}
    weights_after = []
    requests = plain_requests(inputs, inputs["n_rome"])
    for r in requests:
        t0 = time.time()
        apply_rome_to_model(model, tok, [r], hp)
        u, right = seen["u"].double(), seen["right"].double()
        v_star = right * (seen["k_plain"].double() @ u) + seen["out_plain"].double()  # target, as compute_v solved
        steps = seen["losses"][0::4]
        out["rome"].append({
            "case_id": r["case_id"], "loss": steps[-1], "loss_per_step": steps, "adam_steps": len(steps) - 1,
            "seconds": time.time() - t0, "u": seen["u"].tolist(), "k_star": seen["k_star"].tolist(),
            "k_plain": seen["k_plain"].tolist(), "v_star": v_star.float().tolist(), "right_vector": right.float().tolist(),
        })
        weights_after.append(weight.detach().clone())
        print(f"official ROME case {r['case_id']}: loss {steps[-1]:.5f}, {len(steps) - 1} steps", flush=True)
    torch.save(torch.stack(weights_after), runs / "official_rome_weights.pt")
    out["rome_greedy"] = [greedy(model, tok, r["prompt"].replace("{}", r["subject"])) for r in requests]
    return out


# ---------------------------------------------------------------- FT (jianghoucheng/AlphaEdit)
def run_ft(inputs, runs: Path) -> dict:
    import baselines.ft.ft_main as fm
    from baselines.ft import FTHyperParams, apply_ft_to_model

    model, tok = load_model(inputs)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    ours = inputs["ft_hparams"]
    log: list[str] = []
    fm.print = lambda *a, **k: log.append(" ".join(str(x) for x in a))  # records "Epoch: i", "Total loss x"
    out = {"ft": {}, "model_sha256": state_sha256(model)}
    requests = plain_requests(inputs, inputs["n_ft"])
    half = len(requests) // 2
    for name, change in {"json": {}, "constr5e-4": {"norm_constraint": 5e-4}}.items():
        model.load_state_dict(original)
        nc = change.get("norm_constraint", ours["norm_constraint"])
        hp = FTHyperParams(
            layers=ours["layers"], num_steps=ours["num_steps"], lr=ours["lr"],
            weight_decay=float(ours["weight_decay"] or 0), kl_factor=ours["kl_factor"], norm_constraint=nc,
            batch_size=ours["batch_size"], wd_power_law=ours["wd_power_law"], **module_templates(ours),
        )
        calls, saved = [], {}
        for c, batch in enumerate((requests[:half], requests[half:])):
            log.clear()
            t0 = time.time()
            apply_ft_to_model(model, tok, batch, hp)
            epochs = sum(1 for line in log if line.startswith("Epoch:"))
            totals = [float(line.split()[-1]) for line in log if line.startswith("Total loss")]
            calls.append({"cases": [r["case_id"] for r in batch], "final_loss": totals[-1], "epochs": epochs,
                          "epoch_losses": totals, "seconds": time.time() - t0})
            for n, p in model.named_parameters():
                if any(hp.rewrite_module_tmp.format(l) in n for l in hp.layers):
                    saved[f"{n}@call{c}"] = p.detach().clone()
            print(f"official FT {name} call {c}: loss {totals[-1]:.6f} after {epochs} epochs", flush=True)
        torch.save(saved, runs / f"official_ft_{name}_weights.pt")
        out["ft"][name] = {"hparams_change": change, "calls": calls,
                           "greedy": [greedy(model, tok, r["prompt"].replace("{}", r["subject"])) for r in requests]}
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("part", choices=["rome", "ft"])
    p.add_argument("--work", default="/work/official")
    args = p.parse_args()
    torch.set_num_threads(1)
    stub_unused_imports()
    work = Path(args.work)
    inputs = json.loads((work / "inputs" / "inputs.json").read_text())
    runs = work / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    import transformers

    out = run_rome(inputs, runs) if args.part == "rome" else run_ft(inputs, runs)
    out.update(side="official", part=args.part, torch=torch.__version__, transformers=transformers.__version__,
               numpy=np.__version__, checkout=str(Path.cwd()))
    (runs / f"official_{args.part}.json").write_text(json.dumps(out))
    print("wrote", runs / f"official_{args.part}.json")


if __name__ == "__main__":
    main()
