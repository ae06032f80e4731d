"""The package's layer order (documentation/architecture.md), read from every import, and what it buys.

A package imports only from its own layer or a lower one; training and inference are siblings that never import
each other; the core (operators, networks, diffusion) imports only the foundation. The diffens_evaluate command
does not load torch. Modules stay under 400 lines, functions take at most 5 positional parameters.
"""
import ast
import json
import pathlib
import subprocess
import sys

import pytest

import diffens_auto

PACKAGE = pathlib.Path(diffens_auto.__file__).parent

# low to high; a unit imports only from its own layer or below (the root modules are named by file)
LAYERS = [
    ["__init__", "paths", "atomic", "errors", "devices", "foreground", "hashing", "intensity", "workers"],
    ["operators", "networks", "diffusion"],
    ["imageio"],
    ["dataset"],
    ["fingerprint"],
    ["planning"],
    ["preprocessing"],
    ["model_folder", "tasks"],
    ["training", "inference", "adaptation"],
    ["evaluation", "model_sharing"],
    ["workflows"],
    ["demo"],
    ["benchmarking"],
    ["run"],
]
LAYER = {unit: index for index, units in enumerate(LAYERS) for unit in units}
# siblings of one layer that must not import each other (adaptation may be used by inference)
FORBIDDEN = {("training", "inference"), ("inference", "training"), ("training", "adaptation"),
             ("adaptation", "training"), ("adaptation", "inference"), ("model_sharing", "training"),
             ("evaluation", "model_sharing"), ("model_sharing", "evaluation"), ("model_folder", "tasks"),
             ("tasks", "model_folder")}
CORE = {"operators", "networks", "diffusion"}
MAX_LINES, MAX_POSITIONAL = 400, 5


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    """The layer unit of a module: its sub-package, or the root module's name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: pathlib.Path) -> list[tuple[str, int]]:
    """(imported diffens_auto module, line) for every import of a file, at module level or inside functions."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from diffens_auto import paths` imports the module diffens_auto.paths
            names = [f"{target}.{a.name}" for a in node.names] if target == "diffens_auto" else [target]
            found += [(name, node.lineno) for name in names]
    return [(name, line) for name, line in found if name == "diffens_auto" or name.startswith("diffens_auto.")]


def _all_imports() -> list[tuple[str, str, str, int]]:
    rows = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _unit(_module_name(path))
        for target, line in _imports(path):
            rows.append((str(path.relative_to(PACKAGE.parent)), source, _unit(target), line))
    return rows


def test_every_unit_of_the_package_has_a_layer():
    units = {_unit(_module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert units - set(LAYER) == set(), "give these packages/modules a layer here and in architecture.md"


def test_imports_follow_the_layer_order():
    problems = [f"{file}:{line} ({source}, layer {LAYER[source]}) imports {target} (layer {LAYER[target]})"
                for file, source, target, line in _all_imports() if LAYER[target] > LAYER[source]]
    assert problems == []


def test_siblings_do_not_import_each_other():
    problems = [f"{file}:{line}: {source} imports {target}"
                for file, source, target, line in _all_imports() if (source, target) in FORBIDDEN]
    assert problems == []


def test_the_core_imports_only_the_foundation():
    problems = [f"{file}:{line}: {source} imports {target}" for file, source, target, line in _all_imports()
                if source in CORE and target not in CORE and LAYER[target] > 0]
    assert problems == []


def test_the_layer_check_sees_imports_inside_functions(tmp_path):
    path = PACKAGE / "run" / "train.py"
    assert any(target.startswith("diffens_auto.workflows") for target, _ in _imports(path))


def test_modules_are_short_and_functions_take_few_positional_parameters():
    long_modules, long_signatures = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        if len(source.splitlines()) >= MAX_LINES:
            long_modules.append(f"{path.relative_to(PACKAGE.parent)}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names = [a.arg for a in node.args.posonlyargs + node.args.args]
                names = names[1:] if names and names[0] in ("self", "cls") else names
                if len(names) > MAX_POSITIONAL:
                    long_signatures.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}: "
                                           f"{len(names)} positional parameters")
    assert long_modules == []
    assert long_signatures == []


EVALUATE_WITHOUT_TORCH = """
import sys
import numpy as np
import SimpleITK as sitk
import diffens_auto.run.evaluate as evaluate
ref, pred = sys.argv[1], sys.argv[2]
for folder, value in ((ref, 1.0), (pred, 0.9)):
    image = sitk.GetImageFromArray(np.full((12, 12, 12), value, dtype=np.float32))
    sitk.WriteImage(image, folder + "/case_001.nii.gz")
sys.argv = ["diffens_evaluate", "-ref", ref, "-pred", pred, "-o", sys.argv[3], "--no_mmd"]
try:
    evaluate.evaluate_entry()
except SystemExit as e:
    assert not e.code, e.code
print("torch loaded:", "torch" in sys.modules)
"""


def test_diffens_evaluate_runs_without_importing_torch(tmp_path):
    import_only = subprocess.run([sys.executable, "-c", "import sys, diffens_auto.run.evaluate; "
                                  "print('torch loaded:', 'torch' in sys.modules)"], capture_output=True, text=True)
    assert import_only.returncode == 0, import_only.stderr
    assert import_only.stdout.strip() == "torch loaded: False"
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    output = tmp_path / "metrics.json"
    run = subprocess.run([sys.executable, "-c", EVALUATE_WITHOUT_TORCH, str(ref), str(pred), str(output)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("torch loaded: False")
    assert json.loads(output.read_text())["per_case"][0]["case"] == "case_001"


@pytest.mark.parametrize("sibling, other", [("inference", "training"), ("model_sharing", "training")])
def test_inference_and_model_sharing_never_import_training(sibling, other):
    problems = [f"{file}:{line}" for file, source, target, line in _all_imports()
                if source == sibling and target == other]
    assert problems == []


def test_prediction_and_model_sharing_load_nothing_of_training():
    script = ("import sys, diffens_auto.inference.predictor, diffens_auto.model_sharing; "
              "print(sorted(m for m in sys.modules if m.startswith('diffens_auto.training') "
              "or m.startswith('batchgenerators')))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
