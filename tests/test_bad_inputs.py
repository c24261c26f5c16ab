"""Bad inputs are one clear error before work starts; resuming is refused when flags differ; a run
folder is locked while a process works in it (issue 8, parts 2-4).

Everything runs on a tiny Llama with a word-level tokenizer, built and saved in ``tmp_path``, with
CounterFact/zsRE records written here, and FT (no covariance statistics), so each CLI call takes
seconds and the tests read nothing from outside the checkout.
"""
from __future__ import annotations

import errno
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from experiments.evaluate import main as evaluate

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = 128  # the tiny model's max_position_embeddings

WORDS = ("the a of is by in was and to it his her city capital country language river made developed built "
         "speaks lives born Paris France Rome Italy Berlin Germany Madrid Spain London English French German "
         "Answer : Yes No True False positive negative A B C D ( ) ? . , Review Sentence Question sentiment").split()


def _record(case_id: int, subject: str, true: str, new: str, **extra) -> dict:
    return {"case_id": case_id,
            "requested_rewrite": {"prompt": "{} is the capital of", "subject": subject,
                                  "target_new": {"str": new}, "target_true": {"str": true}},
            "paraphrase_prompts": [f"the city {subject} is the capital of"],
            "neighborhood_prompts": ["Rome is the capital of"], "attribute_prompts": ["Madrid is the capital of"],
            "generation_prompts": [f"{subject} is"], **extra}


RECORDS = [_record(0, "Paris", "France", "Italy"), _record(1, "Berlin", "Germany", "Spain"),
           _record(2, "London", "England", "France")]


def _save_tiny_model(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(dict.fromkeys(WORDS))}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                  model_max_length=CONTEXT)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=CONTEXT,
                         bos_token_id=1, eos_token_id=2)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("world")
    _save_tiny_model(root / "model")
    (root / "cf.json").write_text(json.dumps(RECORDS))
    zsre = [{"subject": "Paris", "src": "What is Paris the capital of?", "rephrase": "Paris is the capital of?",
             "answers": ["France"], "loc": "nq question: who lives in Rome", "loc_ans": "Italy"}]
    (root / "zsre.json").write_text(json.dumps(zsre))
    (root / "ft.json").write_text(json.dumps({"layers": [1], "num_steps": 2, "lr": 0.005, "weight_decay": 0,
                                              "kl_factor": 0, "norm_constraint": False}))
    return {"root": root, "model": root / "model", "cf": root / "cf.json", "zsre": root / "zsre.json",
            "hparams": root / "ft.json"}


def _argv(world: dict[str, Path], results: Path, **extra) -> list[str]:
    flags = {"alg_name": "FT", "model_name": str(world["model"]), "hparams_fname": str(world["hparams"]),
             "ds_name": "mcf", "ds_file": str(world["cf"]), "dataset_size_limit": "2", "num_edits": "1",
             "skip_generation_tests": True, "results_dir": str(results), "stats_dir": str(results / "stats"),
             "data_dir": str(results / "no_data")}
    flags.update(extra)
    return [f"--{k}" if v is True else f"--{k}={v}" for k, v in flags.items() if v not in (None, False)]


def _runs(results: Path) -> list[Path]:
    return sorted((results / "FT").glob("run_*")) if (results / "FT").is_dir() else []


def _fails(world, results: Path, capsys, message: str, **extra) -> str:
    """The CLI answers ``message`` (exit 2, one line, no traceback) and no run folder looks complete."""
    try:
        code = evaluate(_argv(world, results, **extra))
    except SystemExit as done:  # refused while parsing the flags
        code = done.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("error: ")]
    assert message in line
    assert not any((run / "run_complete.json").exists() for run in _runs(results))
    return line


def _fails_at_start(world, tmp_path, capsys, message: str, **extra) -> str:
    line = _fails(world, tmp_path, capsys, message, **extra)
    assert _runs(tmp_path) == [], "a run that fails on start leaves no run folder"
    return line


# -- numbers out of range, empty datasets ---------------------------------------------------------

@pytest.mark.parametrize("flag, value, message", [
    ("dataset_size_limit", "0", "--dataset_size_limit must be >= 1"),
    ("num_edits", "0", "--num_edits must be >= 1"),
    ("downstream_n_per_task", "0", "--downstream_n_per_task must be >= 1"),
    ("values_batch_size", "0", "--values_batch_size must be >= 1"),
    ("stop_after_batches", "-1", "--stop_after_batches must be >= 0"),
    ("downstream_eval_steps", "-2", "--downstream_eval_steps must be >= 0"),
    ("generation_test_interval", "0", "--generation_test_interval must be >= 1 or -1 (every N-th case, or -1 for none)"),
    ("seed", "-1", "--seed must be between 0 and 4294967295"),
    ("seed", str(2**64), "--seed must be between 0 and 4294967295"),  # torch's generators overflow past 2**64
    ("num_edits", "ten", "--num_edits='ten' is not a whole number"),
    ("curve_every", "1.5", "--curve_every='1.5' is not a whole number"),
])
def test_numbers_out_of_range(world, tmp_path, capsys, flag, value, message):
    _fails_at_start(world, tmp_path, capsys, message, **{flag: value})


@pytest.mark.parametrize("flag, value, message", [
    ("alg_name", "nse2", "--alg_name='nse2' is not one of AlphaEdit, ENCORE, FT, MEMIT"),
    ("ds_name", "counterfact", "--ds_name='counterfact' is not one of cf, mcf, zsre"),
    ("dtype", "fp16", "--dtype='fp16' is not one of float32, bfloat16, float16"),
    ("device_map", "everywhere", "--device_map='everywhere' is not one of auto, balanced"),
])
def test_fixed_choices_list_the_choices(world, tmp_path, capsys, flag, value, message):
    _fails_at_start(world, tmp_path, capsys, message, **{flag: value})


def test_fixed_choices_accept_any_case(world, tmp_path, capsys):
    """ft, MCF, Float32 are the choices FT, mcf, float32: the run goes on to its results, named canonically."""
    argv = _argv(world, tmp_path, alg_name="ft", ds_name="MCF", dtype="Float32", log_level="warning")
    assert evaluate(argv) == 0
    [run] = _runs(tmp_path)
    args = json.loads((run / "config.json").read_text())["args"]
    assert (args["alg_name"], args["ds_name"], args["dtype"]) == ("FT", "mcf", "float32")


def test_settings_built_in_python_are_checked_like_flags(world, tmp_path):
    """run_experiment() with a RunConfig applies the rules the CLI applies while parsing."""
    from experiments.runner import run_experiment
    from experiments.settings import RunConfig, SettingError

    base = dict(alg_name="FT", model_name=str(world["model"]), hparams_fname=str(world["hparams"]), ds_name="mcf",
                results_dir=str(tmp_path))
    for extra, message in (({"num_edits": 0}, "--num_edits must be >= 1"), ({"dtype": "fp16"}, "--dtype='fp16'"),
                           ({"metric_departures": ["x"]}, "--metric_departures='x' is not one of")):
        with pytest.raises(SettingError, match=re.escape(message)):
            run_experiment(RunConfig(**base, **extra))
    assert _runs(tmp_path) == []


def test_stats_dir_a_file_or_not_creatable(world, tmp_path, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    _fails_at_start(world, tmp_path, capsys, f"--stats_dir={afile}: {afile} is a file, not a folder",
                    stats_dir=str(afile))
    _fails_at_start(world, tmp_path, capsys, f"--stats_dir={afile / 'stats'}: {afile} is a file",
                    stats_dir=str(afile / "stats"))


def test_read_only_stats_dir_warns_and_names_the_risk(world, tmp_path, caplog, monkeypatch):
    """An existing read-only cache may hold every statistic the run needs (a shared cache): a warning."""
    import experiments.setting_checks

    stats = tmp_path / "shared_stats"
    stats.mkdir()
    real = os.access
    monkeypatch.setattr(experiments.setting_checks.os, "access",  # root ignores chmod
                        lambda path, mode: False if Path(path) == stats else real(path, mode))
    assert evaluate(_argv(world, tmp_path, stats_dir=str(stats))) == 0  # FT reads no statistics
    assert f"--stats_dir={stats} is not writable" in caplog.text


def test_empty_dataset_is_an_error(world, tmp_path, capsys):
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    _fails_at_start(world, tmp_path, capsys, f"no records to edit: {empty} holds 0 record(s)", ds_file=str(empty))
    _fails_at_start(world, tmp_path, capsys, "holds 3 record(s) and --dataset_offset=3 skips them all",
                    dataset_offset="3")



def test_more_edits_per_batch_than_records_is_an_error(world, tmp_path, capsys):
    """Case files are named after --num_edits: 1000 on 3 records would claim edits never made."""
    _fails_at_start(world, tmp_path, capsys, "--num_edits=1000 is more than the 2 record(s) to edit",
                    num_edits="1000")


def test_a_size_limit_past_the_dataset_edits_what_is_there_with_a_warning(world, tmp_path, capsys):
    assert evaluate(_argv(world, tmp_path, dataset_size_limit="50", stop_after_batches="1")) == 0
    assert "--dataset_size_limit=50: " in capsys.readouterr().err


def test_a_layer_outside_the_model_names_the_hparams_file(world, tmp_path, capsys):
    bad = tmp_path / "ft_bad.json"
    bad.write_text(json.dumps({**json.loads(world["hparams"].read_text()), "layers": [7]}))
    line = _fails_at_start(world, tmp_path, capsys, f"{bad}: 'layers' [7] out of range", hparams_fname=str(bad))
    assert not (tmp_path / "FT").exists()  # not even the method's folder


# -- devices --------------------------------------------------------------------------------------

def test_cuda_without_cuda(world, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _fails_at_start(world, tmp_path, capsys, "--device=cuda: CUDA is not available here", device="cuda")
    _fails_at_start(world, tmp_path, capsys, "--device='banana' is not a torch device", device="banana")


# -- damaged or missing files -----------------------------------------------------------------------

def _model_copy(world, tmp_path: Path, drop: tuple[str, ...] = ()) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    for f in world["model"].iterdir():
        if f.name not in drop:
            (folder / f.name).write_bytes(f.read_bytes())
    return folder


def test_truncated_model_weights(world, tmp_path, capsys):
    folder = _model_copy(world, tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:3000])
    line = _fails_at_start(world, tmp_path, capsys, f"could not read the model weights in {folder}",
                           model_name=str(folder))
    assert "damaged or incomplete" in line


def test_model_folder_without_tokenizer_or_config(world, tmp_path, capsys):
    no_tok = _model_copy(world, tmp_path, drop=("tokenizer.json", "tokenizer_config.json"))
    _fails_at_start(world, tmp_path, capsys, f"{no_tok} holds no tokenizer files", model_name=str(no_tok))
    (no_tok / "config.json").unlink()
    _fails_at_start(world, tmp_path, capsys, f"{no_tok} holds no config.json", model_name=str(no_tok))


def test_damaged_config_json_is_named(world, tmp_path, capsys):
    folder = _model_copy(world, tmp_path)
    (folder / "config.json").write_text('{"model_type": "llama",')
    _fails_at_start(world, tmp_path, capsys, f"{folder / 'config.json'} is not valid JSON", model_name=str(folder))


def test_missing_model_folder_is_not_called_a_hub_id(world, tmp_path, capsys):
    line = _fails_at_start(world, tmp_path, capsys, f"model folder {tmp_path / 'nope'} does not exist",
                           model_name=str(tmp_path / "nope"))
    assert "hub" not in line


def test_a_mistyped_folder_under_an_existing_one_is_not_a_hub_id(world, tmp_path, capsys, monkeypatch):
    """``assets/tinystories-260k-lama`` has the shape of a hub id, but ``assets`` is a folder here."""
    monkeypatch.chdir(world["root"])
    line = _fails_at_start(world, tmp_path, capsys, "model folder model/typo does not exist", model_name="model/typo")
    assert "hub" not in line


def test_truncated_editor_state(world, tmp_path, capsys):
    assert evaluate(_argv(world, tmp_path, stop_after_batches="1")) == 0
    state = tmp_path / "FT" / "run_000" / "editor_state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    _fails(world, tmp_path, capsys, f"editor state {state} is damaged or truncated", continue_from_run="run_000")
    other = tmp_path / "other"
    _fails_at_start(world, other, capsys, f"editor state {state} is damaged or truncated",
                    load_editor_state=str(state))


class _Crafted:
    def __reduce__(self):  # loading this with weights_only=False would run os.getcwd: a stand-in for any code
        return (os.getcwd, ())


@pytest.mark.parametrize("content", ["crafted pickle", "a README", "a pickle of plain data"])
def test_a_file_that_is_not_a_state_file_is_called_that(world, tmp_path, capsys, content):
    """Not "damaged or truncated", and never torch's advice to load with weights_only=False."""
    path = tmp_path / "state.pt"
    if content == "crafted pickle":
        torch.save({"num_edits": _Crafted()}, path)
    elif content == "a README":
        path.write_text("# My project\n\nSome notes.\n")
    else:
        import pickle

        path.write_bytes(pickle.dumps({"num_edits": 3}))
    line = _fails_at_start(world, tmp_path / "out", capsys, f"{path} is not a file this harness wrote as editor state",
                           load_editor_state=str(path))
    assert "weights_only" not in capsys.readouterr().err + line and "damaged" not in line


# -- dataset files of the wrong shape ----------------------------------------------------------------

def test_ds_file_folder_and_wrong_kind(world, tmp_path, capsys):
    _fails_at_start(world, tmp_path, capsys, f"--ds_file={world['root']} is a folder", ds_file=str(world["root"]))
    _fails_at_start(world, tmp_path, capsys, "holds zsRE records, not CounterFact; read it with --ds_name=zsre",
                    ds_file=str(world["zsre"]))
    _fails_at_start(world, tmp_path, capsys, "holds CounterFact records, not zsRE; read it with --ds_name=mcf or cf",
                    ds_name="zsre")
    glue = ROOT / "experiments" / "downstream" / "data" / "sst2.json"
    _fails_at_start(world, tmp_path, capsys, "does not hold CounterFact records", ds_file=str(glue))


# -- prompts longer than the model's context -------------------------------------------------------------

def test_prompt_longer_than_the_context_is_refused_before_any_edit(world, tmp_path, capsys):
    records = json.loads(world["cf"].read_text())
    records[1]["neighborhood_prompts"] = ["the city of " * 50 + "Rome is the capital of"]  # 154 words
    long = tmp_path / "long.json"
    long.write_text(json.dumps(records))
    line = _fails_at_start(world, tmp_path, capsys, f"do not fit the model's context of {CONTEXT} tokens",
                           ds_file=str(long))
    assert "case_id=1: neighborhood_prompts[0] with the target (1 tokens) is 156 tokens" in line


def test_generation_length_counts_against_the_context(world, tmp_path, capsys):
    """Texts grow to 100 tokens beside the widest prompt: a 40-token and a 2-token generation prompt
    need 40 + 98 > 128 positions; without generation tests the same records run."""
    records = json.loads(world["cf"].read_text())
    records[0]["generation_prompts"] = ["the city of " * 13 + "Paris is", "Paris is"]
    long = tmp_path / "gen.json"
    long.write_text(json.dumps(records))
    line = _fails_at_start(world, tmp_path, capsys, "case_id=0: generation_prompts grown to their length",
                           ds_file=str(long), skip_generation_tests=False, generation_test_interval="1")
    assert "--skip_generation_tests" in line
    assert evaluate(_argv(world, tmp_path, ds_file=str(long))) == 0


# -- the results folder ------------------------------------------------------------------------------------

def test_results_folder_is_a_file_or_not_writable(world, tmp_path, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    _fails_at_start(world, afile, capsys, f"{afile} is a file, not a folder")
    import experiments.setting_checks

    monkeypatch.setattr(experiments.setting_checks.os, "access", lambda path, mode: False)  # root ignores chmod
    _fails_at_start(world, tmp_path, capsys, f"{tmp_path} is not writable")


def test_full_disk_mid_run(world, tmp_path, capsys, monkeypatch):
    import util.atomic_files

    real = util.atomic_files.os.fsync
    calls = []

    def fsync(fd):  # the disk fills up after the first few files
        calls.append(fd)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(util.atomic_files.os, "fsync", fsync)
    line = _fails(world, tmp_path, capsys, "the disk is full")
    assert re.search(r"cannot write \S+/FT/run_000/\S+ \(No space left on device\)", line), line
    [run] = _runs(tmp_path)
    assert not list(run.rglob(".*.tmp"))  # the failed write left no temporary behind


# -- resuming ------------------------------------------------------------------------------------------------

@pytest.fixture()
def stopped_run(world, tmp_path) -> Path:
    assert evaluate(_argv(world, tmp_path, stop_after_batches="1")) == 0
    return tmp_path / "FT" / "run_000"


@pytest.mark.parametrize("flag, value, shown", [
    ("downstream_eval_steps", "1", "downstream_eval_steps=1 differs from the run's 0"),
    ("downstream_n_per_task", "5", "downstream_n_per_task=5 differs from the run's 100"),
    ("skip_generation_tests", False, "skip_generation_tests=False differs from the run's True"),
    ("generation_test_interval", "2", "generation_test_interval=2 differs from the run's 1"),
    ("eval_pre_edit", True, "eval_pre_edit=True differs from the run's False"),
    ("curve_every", "1", "curve_every=1 differs from the run's 0"),
    ("metric_departures", "stop_at_eos", "metric_departures=['stop_at_eos'] differs from the run's []"),
    ("glue_dir", "elsewhere", "glue_dir='elsewhere' differs from the run's None"),
])
def test_resume_refuses_flags_that_change_the_results(world, tmp_path, capsys, stopped_run, flag, value, shown):
    before = sorted(p.name for p in stopped_run.iterdir())
    line = _fails(world, tmp_path, capsys, shown, continue_from_run="run_000", **{flag: value})
    assert "resume with the run's flags" in line
    assert sorted(p.name for p in stopped_run.iterdir()) == before  # nothing touched


def test_resume_names_the_hyperparameters_that_differ(world, tmp_path, capsys, stopped_run):
    other = tmp_path / "ft_other.json"
    other.write_text(json.dumps({**json.loads(world["hparams"].read_text()), "num_steps": 5}))
    line = _fails(world, tmp_path, capsys, "the hyperparameters differ", continue_from_run="run_000",
                  hparams_fname=str(other))
    assert "num_steps: run 2, now 5" in line


def test_resuming_a_complete_run_changes_nothing(world, tmp_path, capsys):
    assert evaluate(_argv(world, tmp_path)) == 0
    run = tmp_path / "FT" / "run_000"
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert evaluate(_argv(world, tmp_path, continue_from_run="run_000")) == 0
    assert "is complete (run_complete.json): nothing to resume" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files


def test_resume_records_the_flags_it_may_change(world, tmp_path, stopped_run):
    assert evaluate(_argv(world, tmp_path, continue_from_run="run_000", device="cpu", conserve_memory=True)) == 0
    config = json.loads((stopped_run / "config.json").read_text())
    assert config["args"]["device"] is None  # the run's own flags stay as started
    [resumed] = config["resumed"]
    assert resumed["changed"] == {"device": "cpu", "conserve_memory": True, "stop_after_batches": None}
    assert (stopped_run / "run_complete.json").is_file() and not (stopped_run / "run.lock").exists()


def test_a_run_folder_in_use_is_refused(world, tmp_path, capsys, stopped_run):
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": "now"}  # this test process: alive
    (stopped_run / "run.lock").write_text(json.dumps(holder))
    _fails(world, tmp_path, capsys, f"{stopped_run} is in use by process {os.getpid()}", continue_from_run="run_000")
    assert json.loads((stopped_run / "run.lock").read_text()) == holder  # not taken


def test_a_dead_process_lock_and_its_temporaries_are_cleaned_on_resume(world, tmp_path, stopped_run):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (stopped_run / "run.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    (stopped_run / ".edit_reports.json.k1ll3d.tmp").write_text("[{")
    (stopped_run / "downstream").mkdir()
    (stopped_run / "downstream" / ".edits_000001.json.k1ll3d.tmp").write_text("{")
    assert evaluate(_argv(world, tmp_path, continue_from_run="run_000")) == 0
    assert not list(stopped_run.rglob("*.tmp")) and not (stopped_run / "run.lock").exists()
    log = (stopped_run / "run.log").read_text()
    assert f"took over {stopped_run / 'run.lock'} from process {dead.pid}, which no longer runs" in log
    assert "removed 2 temporary file(s) a killed save left" in log


# -- long work is visible ----------------------------------------------------------------------------------------

def test_downstream_pass_logs_start_progress_and_end(world, tmp_path):
    assert evaluate(_argv(world, tmp_path, dataset_size_limit="1", downstream_eval_steps="1",
                          downstream_n_per_task="2")) == 0
    log = (tmp_path / "FT" / "run_000" / "run.log").read_text()
    for point in (0, 1):
        assert f"downstream after {point} edits: starting" in log
    assert log.count("general-capability tasks: 6 tasks, 12 examples") == 2
    assert "general-capability task 1/6 sst2: accuracy" in log and "task 6/6 nli" in log
    assert log.count("general-capability tasks done in") == 2


def test_log_lines_do_not_run_into_progress_bars(world, tmp_path):
    """Every log line on the console starts a line of its own, even while the editing bar is drawn."""
    argv = _argv(world, tmp_path, dataset_size_limit="3")
    out = subprocess.run([sys.executable, "-m", "experiments.evaluate", *argv], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    pieces = re.split(r"[\r\n]", out.stderr)
    batch_lines = [p for p in pieces if "baselines.ft.editor" in p]
    assert len(batch_lines) == 3
    assert all(re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ baselines\.ft\.editor batch", p) for p in batch_lines), \
        batch_lines


def test_no_sequence_too_long_warning_where_the_harness_truncates(world):
    """The downstream prompts are cut to the context by fit_prompt; the tokenizer's warning about
    the uncut text cannot apply and is not shown."""
    import logging

    from experiments.downstream.scoring import build_pairs
    from util.model_loading import load_model_and_tokenizer

    _, tok = load_model_and_tokenizer(str(world["model"]), "cpu")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("transformers.tokenization_utils_base")
    logger.addHandler(handler)
    try:
        [(prompt, _)] = build_pairs(tok, ["the city " * 200 + "Answer :"], [[3]], CONTEXT)
    finally:
        logger.removeHandler(handler)
    assert len(prompt) == CONTEXT - 1
    assert not [m for m in seen if "sequence length is longer" in m]


def test_torch_save_on_a_full_disk_names_the_file(tmp_path, monkeypatch):
    """torch.save reports a failed write as a RuntimeError; the atomic save restates it as the disk error."""
    import io

    import util.atomic_files
    from util.atomic_files import WriteError, save_torch_atomic

    class FullDisk(io.BytesIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(util.atomic_files, "open", lambda path, mode: FullDisk(), raising=False)
    with pytest.raises(WriteError, match=r"cannot write .*state\.pt \(No space left on device\); the disk is full"):
        save_torch_atomic({"w": torch.zeros(1000)}, tmp_path / "state.pt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, content, shown", [
    ("edit_reports.json", "[{\"batch_ind", "edit_reports.json is damaged (JSONDecodeError"),
    ("edit_reports.json", "", "edit_reports.json is damaged (JSONDecodeError"),
    ("edit_reports.json", "{\"a\": 1}", "edit_reports.json does not hold what this harness writes there"),
    ("config.json", "{\"args\": {\"alg_na", "config.json is damaged (JSONDecodeError"),
    ("config.json", "[1, 2]", "config.json does not hold what this harness writes there"),
    ("params.json", "", "params.json is damaged (JSONDecodeError"),
])
def test_a_damaged_run_file_stops_the_resume_before_any_work(world, tmp_path, capsys, stopped_run, name, content, shown):
    """Named with the fix before a batch is edited (a damaged edit_reports.json used to fail after the
    next batch, losing its work); the run folder is left as it was."""
    (stopped_run / name).write_text(content)
    before = {p: p.read_bytes() for p in stopped_run.rglob("*") if p.is_file()}
    line = _fails(world, tmp_path, capsys, shown, continue_from_run="run_000")
    assert "restore it from a copy, or start a new run" in line
    assert {p: p.read_bytes() for p in stopped_run.rglob("*") if p.is_file()} == before


def test_run_files_with_a_byte_order_mark_are_read(world, tmp_path, stopped_run):
    for name in ("config.json", "params.json", "edit_reports.json"):
        path = stopped_run / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert evaluate(_argv(world, tmp_path, continue_from_run="run_000")) == 0
    assert (stopped_run / "run_complete.json").is_file()


def test_a_damaged_timings_file_is_written_anew(world, tmp_path, stopped_run, caplog):
    (stopped_run / "timings.json").write_text("{\"segm")
    assert evaluate(_argv(world, tmp_path, continue_from_run="run_000")) == 0
    timings = json.loads((stopped_run / "timings.json").read_text())
    assert len(timings["segments"]) == 1 and "timings.json is damaged" in caplog.text


# -- hyperparameter values -------------------------------------------------------------------------

def _hparams_file(world, tmp_path, text: str) -> str:
    path = tmp_path / "hp_bad.json"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("edit, shown", [
    (lambda t: t.replace('"lr": ', '"lr": NaN, "lr_": ', 1), "NaN is not a usable hyperparameter value"),
    (lambda t: t.replace('"lr": ', '"lr": Infinity, "lr_": ', 1), "Infinity is not a usable hyperparameter value"),
    (lambda t: t.replace('"lr": ', '"lr": 1.0, "lr": ', 1), "key 'lr' is given twice"),
    (lambda t: re.sub(r'"layers": \[[^\]]*\]', '"layers": [1, "2"]', t), "must be a list of int, but element 1 is '2'"),
    (lambda t: re.sub(r'"layers": \[[^\]]*\]', '"layers": [true]', t), "must be a list of int, but element 0 is True"),
    (lambda t: t.replace("{", '{"rewrite_module_tmp": "model.layers.mlp", ', 1),
     "must hold the layer's place as one empty {}"),
    (lambda t: t.replace("{", '{"rewrite_module_tmp": "model.layers.{layer}.mlp", ', 1),
     "must hold the layer's place as one empty {}"),
])
def test_bad_hyperparameter_values_are_refused_at_load(world, tmp_path, capsys, edit, shown):
    text = edit(world["hparams"].read_text())
    line = _fails_at_start(world, tmp_path, capsys, shown, hparams_fname=_hparams_file(world, tmp_path, text))
    assert "hp_bad.json" in line


def test_a_file_of_another_method_names_that_method(world, tmp_path, capsys):
    nse = ROOT / "hparams" / "NSE" / "tinystories-260k.json"
    line = _fails_at_start(world, tmp_path, capsys, "reads as NSE's hyperparameters", hparams_fname=str(nse))
    assert "--alg_name=NSE" in line


@pytest.mark.parametrize("name", ["../FT/run_000", "/tmp/run_000", "run_000/..", "run_1"])
def test_continue_from_run_takes_a_run_name_only(world, tmp_path, capsys, stopped_run, name):
    line = _fails(world, tmp_path, capsys, "is not a run folder name", continue_from_run=name)
    assert "(run_NNN)" in line


def test_a_smaller_last_batch_is_announced(world, tmp_path, caplog):
    assert evaluate(_argv(world, tmp_path, num_edits="2", dataset_size_limit="3")) == 0
    assert "the last batch holds 1 edit(s), not --num_edits=2 (3 records)" in caplog.text


# -- a run you can watch -----------------------------------------------------------------------------

def test_run_log_names_the_folder_the_final_scoring_and_the_end(world, tmp_path):
    assert evaluate(_argv(world, tmp_path)) == 0
    text = (tmp_path / "FT" / "run_000" / "run.log").read_text()
    lines = [l for l in text.splitlines() if "experiments INFO" in l]
    assert f"new run folder {tmp_path / 'FT' / 'run_000'}: 2 records in batches of 1" in lines[0]
    assert "final scoring: 2 cases (0 with generation)" in text
    assert "run complete: 2 edits in 2 batches, 2 cases scored" in lines[-1]


def test_console_warnings_are_marked():
    import logging

    from experiments.evaluate import _MarkedFormatter

    fmt = _MarkedFormatter("%(name)s %(message)s")
    record = lambda level: logging.LogRecord("x", level, __file__, 1, "text", None, None)  # noqa: E731
    assert fmt.format(record(logging.WARNING)) == "WARNING: x text"
    assert fmt.format(record(logging.INFO)) == "x text"
