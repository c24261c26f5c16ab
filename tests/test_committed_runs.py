"""The committed protocol runs (bench/results/stream and bench/results/frontier) summarize to the
numbers they did before the run folder got an owner and the reporter its own package.

``tests/data/committed_run_summaries.json`` holds what ``summarize_run`` gave for each of these
folders at commit 72677c7 (written by this file's ``main``, run once on that commit; the complete bf16 run, archived after, at 8e8ce35): counts,
every metric's mean and std (post and pre), the run's label, norm-anchoring counts, downstream
points and the final counts of ``run_complete.json``. These folders are the old layout (written
before the folder's owner existed, case files archived in ``case_files.tar.gz``), so the test also
shows that old folders still read.
"""
from __future__ import annotations

import json
import shutil
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "data" / "committed_run_summaries.json"
GROUPS = ("stream", "frontier")  # bench/results/<group>/<ALG>_run_<NNN>[_partial]


def committed_runs() -> list[Path]:
    return sorted(p for group in GROUPS for p in (ROOT / "bench" / "results" / group).glob("*_run_*") if p.is_dir())


def name_of(archived: Path) -> str:
    return f"{archived.parent.name}/{archived.name}"


def stage(archived: Path, results: Path) -> Path:
    """The archived folder as ``<results>/<ALG>/run_NNN``, its case files unpacked beside the rest."""
    alg, _, rest = archived.name.rpartition("_run_")
    run_dir = results / archived.parent.name / alg / f"run_{rest.split('_')[0]}"
    shutil.copytree(archived, run_dir)
    archive = run_dir / "case_files.tar.gz"
    if archive.is_file():
        with tarfile.open(archive) as tar:
            tar.extractall(run_dir, filter="data")
        archive.unlink()
    return run_dir


def record(summary) -> dict[str, Any]:
    """What the comparison pins: the summary's JSON without the folder's path, and what the figures use."""
    out = {k: v for k, v in summary.to_json().items() if k != "path"}
    out.update(label=summary.label, final_total_edits=summary.final_total_edits,
               final_num_batches=summary.final_num_batches)
    return json.loads(json.dumps(out))  # tuples as lists, as the fixture holds them


def _summaries(results: Path) -> dict[str, dict[str, Any]]:
    from reporting.summary import summarize_run

    return {name_of(p): record(summarize_run(stage(p, results))) for p in committed_runs()}


@pytest.fixture(scope="module")
def summaries(tmp_path_factory) -> dict[str, dict[str, Any]]:
    return _summaries(tmp_path_factory.mktemp("committed"))


def test_every_committed_run_is_pinned(summaries):
    assert set(summaries) == set(json.loads(FIXTURE.read_text()))


@pytest.mark.parametrize("name", [name_of(p) for p in committed_runs()])
def test_a_committed_run_summarizes_to_the_same_numbers(summaries, name):
    expected = json.loads(FIXTURE.read_text())[name]
    got = summaries[name]
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == expected[key], key


def main() -> None:
    """Write the fixture from the checkout's code (done once, before the refactor it guards)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        FIXTURE.parent.mkdir(exist_ok=True)
        FIXTURE.write_text(json.dumps(_summaries(Path(tmp)), indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
