"""pyproject.toml: the console scripts resolve, every package ships, dependencies come from requirements.txt."""
from __future__ import annotations

import importlib
import importlib.metadata
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_console_scripts_resolve_to_the_two_entry_points():
    scripts = PYPROJECT["project"]["scripts"]
    assert scripts == {"nse-evaluate": "experiments.evaluate:main", "nse-summarize": "summarize:main"}
    for target in scripts.values():
        module, _, attr = target.partition(":")
        func = getattr(importlib.import_module(module), attr)
        assert callable(func)
        with pytest.raises(SystemExit) as done:  # the console script calls main(); --help exits 0
            func(["--help"])
        assert done.value.code == 0


def test_every_package_and_summarize_ship():
    setuptools = pytest.importorskip("setuptools")
    find = PYPROJECT["tool"]["setuptools"]["packages"]["find"]
    assert find.get("namespaces") is False  # else data/, results/, hparams/ folders would count as packages
    found = set(setuptools.find_packages(where=str(ROOT / find["where"][0]), include=find["include"],
                                         exclude=find["exclude"]))
    on_disk = {p.parent.relative_to(ROOT).as_posix().replace("/", ".") for p in ROOT.glob("*/**/__init__.py")
               if ".venv" not in p.parts}
    shipped = {p for p in on_disk if p.split(".")[0] not in ("tests", "bench")}
    assert {"experiments", "experiments.metrics", "experiments.downstream", "nse", "util", "dsets"} <= found
    assert found == shipped, "a package is missing from the install, or tests/bench would be installed"
    assert PYPROJECT["tool"]["setuptools"]["py-modules"] == ["summarize"] and (ROOT / "summarize.py").is_file()


def test_dependencies_are_requirements_txt():
    assert PYPROJECT["project"]["dynamic"] == ["dependencies"]
    files = PYPROJECT["tool"]["setuptools"]["dynamic"]["dependencies"]["file"]
    assert files == ["requirements.txt"]
    names = [line.split("==")[0].strip() for line in (ROOT / files[0]).read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert "torch" in names and "matplotlib" in names


def test_installed_scripts_match_when_installed():
    try:
        dist = importlib.metadata.distribution(PYPROJECT["project"]["name"])
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("not installed (pip install -e .)")
    installed = {e.name: e.value for e in dist.entry_points if e.group == "console_scripts"}
    assert installed == PYPROJECT["project"]["scripts"]
    for name, flag in (("nse-summarize", "--plot"), ("nse-evaluate", "--save_model")):
        script = shutil.which(name, path=str(Path(sys.executable).parent))
        if script is None:
            pytest.skip(f"{name} is not in this interpreter's bin folder")
        done = subprocess.run([script, "--help"], capture_output=True, text=True, cwd="/")  # away from the checkout
        assert done.returncode == 0 and flag in done.stdout, (
            f"{name} --help failed (a top-level package added since the install? run pip install -e . again):\n"
            + done.stderr[-2000:])
