"""The run's settings are declared once (experiments.settings.RunConfig): the CLI, the checks and the
resume rules follow from the fields; progress on a redirected stream is plain lines."""
from __future__ import annotations

import dataclasses
import io
import re
from pathlib import Path

import pytest
from tqdm import tqdm

from experiments.evaluate import build_parser
from experiments.settings import RunConfig, SettingError, check_values, default_settings, resumable_settings
from util.progress import PlainProgress


def _flags(parser) -> dict[str, object]:
    return {a.dest: a for a in parser._actions if a.dest not in ("help", "log_level")}


def test_every_setting_is_one_flag_with_its_default_and_help():
    actions = _flags(build_parser())
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    assert set(actions) == set(fields)
    defaults = default_settings()
    for name, action in actions.items():
        assert action.help, name
        assert action.required == (name not in defaults), name
        if name in defaults:
            assert action.default == defaults[name], name


def test_parsing_yields_a_config_equal_to_the_dataclass_defaults():
    args = vars(build_parser().parse_args(["--alg_name=nse", "--model_name=m", "--hparams_fname=h.json",
                                           "--ds_name=ZSRE"]))
    args.pop("log_level")
    assert RunConfig(**args) == RunConfig(alg_name="NSE", model_name="m", hparams_fname="h.json", ds_name="zsre")


def test_the_settings_a_resume_may_change_are_those_that_change_no_result():
    assert resumable_settings() == {"continue_from_run", "stop_after_batches", "device", "device_map",
                                    "conserve_memory", "use_cache", "stats_dir", "results_dir", "save_model",
                                    "hparams_fname", "mom2_dataset"}


@pytest.mark.parametrize("field, value, message", [
    ("num_edits", 0, "--num_edits must be >= 1 (edits per batch), got 0"),
    ("generation_test_interval", -2, "--generation_test_interval must be >= 1 or -1"),
    ("seed", 2**32, "--seed must be between 0 and 4294967295"),
    ("ds_name", "MCF", "--ds_name='MCF' is not one of cf, mcf, zsre"),  # Python callers pass canonical names
])
def test_check_values_applies_the_flags_rules(field, value, message):
    cfg = RunConfig(alg_name="NSE", model_name="m", hparams_fname="h", ds_name="mcf")
    check_values(cfg)
    with pytest.raises(SettingError, match=re.escape(message)):
        check_values(dataclasses.replace(cfg, **{field: value}))
    assert check_values(dataclasses.replace(cfg, generation_test_interval=-1)) is None


def test_redirected_progress_is_plain_lines_at_most_every_interval():
    out, now = io.StringIO(), [0.0]
    stream = PlainProgress(out, every=30.0, clock=lambda: now[0])
    for _ in tqdm(range(100), desc="editing", file=stream, mininterval=0):
        now[0] += 1.0  # one second per step: a line at 0, 30, 60, 90 s and the last state
    print("a log line", file=stream)
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert [line.split("|")[0].strip() for line in lines[:-1]] == ["editing:   0%", "editing:  30%", "editing:  60%",
                                                                    "editing:  90%", "editing: 100%"]
    assert lines[-1] == "a log line"


def test_nested_bars_leave_no_cursor_movement_in_redirected_output():
    """tqdm moves the cursor up ("ESC[A") to redraw an inner bar; a log file keeps only plain lines."""
    out = io.StringIO()
    stream = PlainProgress(out, every=0.0)
    for _ in tqdm(range(2), desc="outer", file=stream, mininterval=0):
        for _ in tqdm(range(3), desc="inner", file=stream, mininterval=0, leave=False):
            pass
    print("done", file=stream)
    text = out.getvalue()
    assert "\x1b" not in text and "[A" not in text and "\r" not in text
    assert all(line.strip() for line in text.splitlines())  # no empty lines left by the moves
    assert any(line.startswith("inner:") for line in text.splitlines()) and text.endswith("done\n")


def test_resuming_a_run_from_before_a_new_hyperparameter(tmp_path):
    """A key params.json lacks means the former behaviour: equal where the default did not change what
    is computed (MEMIT's new keys), refused where it did (RECT's timing), unless the file asks for it."""
    import json

    from experiments.resume import ResumeError, _check_same_hparams
    from experiments.run_folder import RunFolder
    from memit.hparams import MEMITRectHyperParams

    base = dict(layers=[0], fact_token="subject_last", v_num_grad_steps=1, v_lr=0.1, v_loss_layer=1,
                v_weight_decay=0.0, clamp_norm_factor=4.0, kl_factor=0.0, mom2_adjustment=True, mom2_dataset="x",
                mom2_n_samples=1, mom2_dtype="float32", mom2_update_weight=1.0)
    now = MEMITRectHyperParams(**base).to_dict()
    old = {k: v for k, v in now.items() if k not in ("rect_timing", "rect_rule", "norm_anchor", "norm_anchor_samples",
                                                       "norm_anchor_pool", "context_template_length")}
    (tmp_path / "params.json").write_text(json.dumps(old))
    before = MEMITRectHyperParams.VALUES_BEFORE
    with pytest.raises(ResumeError, match="rect_timing: run 'per_layer', now 'after_layers'"):
        _check_same_hparams(RunFolder(tmp_path), now, before)
    asked = MEMITRectHyperParams(**base, rect_timing="per_layer", rect_rule="exact_share").to_dict()
    assert _check_same_hparams(RunFolder(tmp_path), asked, before) is None  # the rest of the new keys: their defaults


def test_a_hyperparameter_file_with_other_notes_resumes_the_run(tmp_path):
    """Notes change nothing computed: the published AlphaEdit runs resume from bench/configs' float64 copy,
    whose notes differ; without projection_dtype float64 they are refused, naming it."""
    import json

    from alphaedit.hparams import AlphaEditHyperParams
    from experiments.resume import ResumeError, _check_same_hparams
    from experiments.run_folder import RunFolder

    root = Path(__file__).resolve().parents[1]
    shipped = AlphaEditHyperParams.from_json(root / "hparams/AlphaEdit/SmolLM2-135M.json").to_dict()
    run = {k: v for k, v in shipped.items() if k not in ("projection_dtype", "value_prompts")}  # from before both
    (tmp_path / "params.json").write_text(json.dumps(run))
    copy = AlphaEditHyperParams.from_json(root / "bench/configs/AlphaEdit_SmolLM2-135M_float64.json").to_dict()
    assert copy["notes"] != run["notes"]
    before = AlphaEditHyperParams.VALUES_BEFORE
    assert _check_same_hparams(RunFolder(tmp_path), copy, before) is None
    with pytest.raises(ResumeError, match="projection_dtype: run 'float64', now 'float32'") as err:
        _check_same_hparams(RunFolder(tmp_path), shipped, before)
    assert "notes" not in str(err.value)
