"""Imports go down the layers, never up or round: read from the source with ``ast`` (every import,
deferred and TYPE_CHECKING ones too).

A module may import its own layer and the layers below. Besides: a method does not read datasets
(``dsets``: the experiment gives an editor what it needs, e.g. the norm-anchor pool); the metrics
and the dataset kinds import each other in one direction only; and no module imports another's
private name (a leading underscore). ``tests/`` and ``bench/`` read internals on purpose and are
left out of that last rule. The tests are no layer, but they test the product only: no test imports
``bench/`` (reading its files as data, e.g. ``bench/configs``, is no import).
"""
from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("memit", "nse", "alphaedit", "encore", "rome", "baselines")
LAYERS: tuple[tuple[str, ...], ...] = (  # bottom first; a top-level package or module per name
    ("util",),
    ("dsets", *METHODS),
    ("experiments",),
    ("reporting",),  # the reporting side, once it has its own package
    ("summarize", "bench"),
)
ACYCLIC = ("experiments.metrics", "experiments.ds_kinds")  # no import cycle among the modules under these
PRIVATE_NAMES_ALLOWED_IN = ("tests", "bench")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def product_sources() -> dict[str, str]:
    """Module name -> source of every file of the layers (tests are no layer)."""
    tops = [name for layer in LAYERS for name in layer]
    files = [p for top in tops for p in (sorted((ROOT / top).rglob("*.py")) + [ROOT / f"{top}.py"]) if p.is_file()]
    return {module_name(p): p.read_text() for p in files}


def _package_of(module: str, is_package: bool) -> str:
    return module if is_package else module.rpartition(".")[0]


def imports_of(module: str, source: str, is_package: bool = False) -> Iterator[tuple[str, str | None, int]]:
    """``(imported module, imported name or None, line)`` for every import in ``source``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                package = _package_of(module, is_package).split(".")
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                yield base, alias.name, node.lineno


def layer_of(module: str) -> int | None:
    top = module.split(".")[0]
    return next((i for i, layer in enumerate(LAYERS) if top in layer), None)


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _targets(module: str, imported: str, name: str | None, known: Mapping[str, str]) -> list[str]:
    """The product modules an import by ``module`` runs: the module, each package above it that
    does not hold ``module`` (those are already running), and a submodule imported by name."""
    parts = imported.split(".")
    found = [".".join(parts[:i]) for i in range(1, len(parts)) if not _within(module, (".".join(parts[:i]),))]
    found += [imported] + ([f"{imported}.{name}"] if name and f"{imported}.{name}" in known else [])
    return [m for m in found if m in known]


def _cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as its modules in order, or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        for nxt in sorted(graph.get(node, ())):
            found = visit(nxt, path + [node])
            if found:
                return found
        done.add(node)
        return None

    return next((c for c in (visit(n, []) for n in sorted(graph)) if c), None)


def problems(sources: Mapping[str, str], packages: frozenset[str] = frozenset()) -> list[str]:
    """Every import that breaks a rule of this file, in words (``packages``: the names that are
    packages, for relative imports; real packages are also found as prefixes of other names)."""
    packages = packages | {m.rpartition(".")[0] for m in sources if "." in m}
    found, graph = [], {}
    for module, source in sorted(sources.items()):
        own = layer_of(module)
        for imported, name, line in imports_of(module, source, module in packages):
            where = f"{module}:{line} imports {imported}{'.' + name if name else ''}"
            target = layer_of(imported)
            if own is not None and target is not None and target > own:
                found.append(f"{where}: climbs from {LAYERS[own]} to {LAYERS[target]}")
            if _within(module, METHODS) and _within(imported, ("dsets",)):
                found.append(f"{where}: a method reads datasets (the experiment gives the editor what it needs)")
            if (name and name.startswith("_") and not name.startswith("__") and imported != module
                    and layer_of(imported) is not None and not _within(module, PRIVATE_NAMES_ALLOWED_IN)):
                found.append(f"{where}: a private name of another module")
            if _within(module, ACYCLIC):
                graph.setdefault(module, set()).update(
                    t for t in _targets(module, imported, name, sources) if _within(t, ACYCLIC) and t != module)
    cycle = _cycle(graph)
    if cycle:
        found.append("import cycle: " + " -> ".join(cycle))
    return found


# -- the product ---------------------------------------------------------------------------------
def test_no_import_climbs_a_layer_or_goes_round():
    sources = product_sources()
    assert "util.values" in sources and "experiments.ds_kinds" in sources and "summarize" in sources
    assert not problems(sources), "\n".join(problems(sources))


# -- the tests test the product, not bench/ ------------------------------------------------------------
BENCH_SCRIPTS = frozenset(p.stem for p in (ROOT / "bench").glob("*.py")) - {"__init__"}


def _is_sys_path_change(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("insert", "append", "extend") and ast.unparse(node.func.value) == "sys.path")


def bench_reaches(module: str, source: str) -> list[str]:
    """Where ``source`` reaches into bench/: an import of ``bench`` or of a bench script by its bare
    name (as the scripts import each other once bench/ is on sys.path), or a sys.path entry naming
    bench."""
    found = [f"{module}:{line} imports {imported}{'.' + name if name else ''}"
             for imported, name, line in imports_of(module, source)
             if imported.split(".")[0] == "bench" or imported.split(".")[0] in BENCH_SCRIPTS]
    found += [f"{module}:{node.lineno} puts bench/ on sys.path" for node in ast.walk(ast.parse(source))
              if _is_sys_path_change(node) and any("bench" in ast.unparse(arg) for arg in node.args)]
    return found


def test_no_test_imports_bench():
    tests = {module_name(p): p.read_text() for p in sorted((ROOT / "tests").rglob("*.py"))}
    assert "tests.test_real_model" in tests and "smollm2" in BENCH_SCRIPTS
    found = [problem for module, source in tests.items() for problem in bench_reaches(module, source)]
    assert not found, "\n".join(found)


def test_a_test_reaching_into_bench_is_found():
    assert bench_reaches("tests.t", "def f():\n    from bench.smollm2 import load_smollm2\n") == [
        "tests.t:2 imports bench.smollm2.load_smollm2"]
    assert bench_reaches("tests.t", "import sys\nsys.path.insert(0, str(ROOT / 'bench'))\nfrom smollm2 import x\n") == [
        "tests.t:3 imports smollm2.x", "tests.t:2 puts bench/ on sys.path"]
    assert not bench_reaches("tests.t", "import sys\nsys.path.insert(0, str(ROOT))\nfrom util.bundled_models import x\n"
                                        "CONFIG = ROOT / 'bench/configs/a.json'\n")


# -- the checks find what they are for -----------------------------------------------------------------
def test_an_import_that_climbs_a_layer_is_found():
    found = problems({"util.values": "def f():\n    from experiments.runner import run\n"})
    assert found == ["util.values:2 imports experiments.runner.run: climbs from ('util',) to ('experiments',)"]
    assert problems({"memit.editor": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import reporting.tables\n"})
    assert not problems({"experiments.runner": "from util.values import compute_values\nimport torch\n"})


def test_a_method_reading_datasets_is_found():
    found = problems({"nse.editor": "def pool():\n    from dsets import CounterFactDataset\n"})
    assert len(found) == 1 and "a method reads datasets" in found[0]
    assert not problems({"experiments.anchor_pool": "from dsets import CounterFactDataset\n"})


def test_a_private_name_of_another_module_is_found():
    found = problems({"util.norm_anchor": "from util.values import ValueSpec, _build_batch\n"})
    assert found == ["util.norm_anchor:1 imports util.values._build_batch: a private name of another module"]
    assert not problems({"util.values": "from torch.nn.functional import _canonical_mask\n"})  # not ours
    assert not problems({"bench.bench_values": "from util.values import _FullForward\n"})


def test_a_cycle_between_the_metrics_and_the_dataset_kinds_is_found():
    sources = {
        "experiments.ds_kinds": "from experiments.metrics.per_case import Row\n",
        "experiments.metrics": "from experiments.metrics.summary import summarize_cases\n",
        "experiments.metrics.per_case": "Row = dict\n",
        "experiments.metrics.summary": "def f():\n    from experiments.ds_kinds import kind_named\n",
    }
    [found] = problems(sources)
    assert found.startswith("import cycle: ") and "experiments.ds_kinds" in found and "experiments.metrics" in found
    assert not problems({**sources, "experiments.metrics.summary": "from experiments.metrics.per_case import Row\n"})


def test_relative_imports_resolve_from_their_package():
    assert list(imports_of("experiments.downstream.scoring", "from .tasks import ANSWER_CUE\n")) == [
        ("experiments.downstream.tasks", "ANSWER_CUE", 1)]
    assert list(imports_of("experiments.downstream", "from .tasks import X\n", is_package=True)) == [
        ("experiments.downstream.tasks", "X", 1)]
