"""Imports run one way, and the folders show it: cli -> sweeps -> app -> evals, methods -> harness (the core).
Nothing in harness/ reaches any folder above it; no two folders import each other."""

import ast
import json
import subprocess
import sys

from .conftest import REPO

ABOVE_CORE = ("methods", "evals", "sweeps", "app", "cli")
# Each folder's layer, top (the face a user types) to bottom (the core). A module may import its own folder
# and any folder on a lower layer, never one on its own layer or above.
LAYERS = {"cli": 4, "sweeps": 3, "app": 2, "evals": 1, "methods": 1, "harness": 0}
# The two doors up, both entry points rather than dependencies: DESIGN.md's `harness.train` (resolved
# lazily, on first use) and `python -m harness` (the CLI).
ENTRY_POINTS = {"harness/__init__.py", "harness/__main__.py"}


def _imported_modules(path) -> set[str]:
    """Every absolute module an `import` or `from ... import` names in a file, at any depth (function-level
    imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_importing_the_core_loads_nothing_above_it():
    code = ("import sys, json; import harness.config, harness.data, harness.logps, harness.trainer; "
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {ABOVE_CORE!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert json.loads(out.stdout) == []


def test_no_core_module_imports_upward_even_inside_a_function():
    offenders = {}
    for path in sorted((REPO / "harness").rglob("*.py")):
        relative = str(path.relative_to(REPO))
        upward = {m for m in _imported_modules(path) if m.split(".")[0] in ABOVE_CORE}
        if upward and relative not in ENTRY_POINTS:
            offenders[relative] = sorted(upward)
    assert offenders == {}


def test_methods_use_core_types_only_and_evals_never_run_anything():
    for package, forbidden in (("methods", {"evals", "sweeps", "app"}), ("evals", {"methods", "sweeps", "app"})):
        for path in sorted((REPO / package).rglob("*.py")):
            upward = {m for m in _imported_modules(path) if m.split(".")[0] in forbidden}
            assert not upward, f"{path.relative_to(REPO)} imports {sorted(upward)}"
    # and the check itself can see a function-level import
    probe = REPO / "tests" / "test_layers.py"
    assert "subprocess" in _imported_modules(probe)


def test_public_names_of_the_design_still_work():
    import evals
    import harness
    import methods

    assert callable(harness.train) and harness.train.__module__ == "app.pipeline"
    assert methods.get("dpo", beta=0.2).params.beta == 0.2
    assert evals.win_rate([1.0, 0.0], [0.0, 1.0], n_boot=10).rate == 0.5


def _folder_imports() -> dict[tuple[str, str], list[str]]:
    """(importing folder, imported folder) -> the files that make that edge, for every folder of LAYERS."""
    edges: dict[tuple[str, str], list[str]] = {}
    for folder in LAYERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            relative = str(path.relative_to(REPO))
            for module in _imported_modules(path):
                target = module.split(".")[0]
                if target in LAYERS and target != folder and relative not in ENTRY_POINTS:
                    edges.setdefault((folder, target), []).append(relative)
    return edges


def test_every_folder_imports_only_folders_below_it():
    edges = _folder_imports()
    upward = {f"{a} -> {b}": files for (a, b), files in edges.items() if LAYERS[b] >= LAYERS[a]}
    assert upward == {}
    mutual = {(a, b) for a, b in edges if (b, a) in edges}
    assert mutual == set()
    # the layering is real, not vacuous: the CLI drives the sweeps, which run the pipeline
    assert ("cli", "sweeps") in edges and ("sweeps", "app") in edges and ("app", "harness") in edges


def test_the_layer_check_sees_an_upward_import(tmp_path, monkeypatch):
    import tests.test_layers as layers

    fake = tmp_path / "repo"
    for folder in LAYERS:
        (fake / folder).mkdir(parents=True)
    (fake / "app" / "bad.py").write_text("def f():\n    from sweeps.runner import run_sweep\n")
    (fake / "sweeps" / "ok.py").write_text("from app import pipeline\n")
    monkeypatch.setattr(layers, "REPO", fake)
    edges = layers._folder_imports()
    assert edges == {("app", "sweeps"): ["app/bad.py"], ("sweeps", "app"): ["sweeps/ok.py"]}
