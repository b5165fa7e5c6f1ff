"""The package's shape: size, layers, no cycles, and nothing that goes around the libraries.

Read statically (ast), so these checks are fast and see lazy imports inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
#: every Python file outside tests/ and benchmarks/: the package, the entry points, scripts/
COUNTED = sorted([*SRC.rglob("*.py"), *ROOT.glob("*.py"), *(ROOT / "scripts").rglob("*.py")])
#: issue 19's limit: 5,000 lines (a ratchet: lower it when the count drops)
MAX_LINES_TOTAL = 5000
MAX_LINES_FILE = 300

#: layers, top to bottom: a module may import its own layer or a lower one, never a higher one
LAYERS = [
    # `imgcls` itself (the public names it re-exports) and the Hydra sweeper plugin
    ("entry points", ["imgcls.cli", "imgcls", "hydra_plugins"]),
    ("tasks", ["imgcls.train", "imgcls.eval", "imgcls.predict", "imgcls.export", "imgcls.tune",
               "imgcls.api", "imgcls.report", "imgcls.report_stats",
               "imgcls.sweeps"]),
    ("run life cycle", ["imgcls.lifecycle"]),
    ("models, data, callbacks", ["imgcls.models", "imgcls.data", "imgcls.callbacks",
                                 "imgcls.evaluation"]),
    ("utilities", ["imgcls.utils", "imgcls.config", "imgcls.provenance", "imgcls.imaging"]),
]  # fmt: skip
LIBRARIES = ("pytorch_lightning", "lightning", "lightning_fabric", "hydra", "omegaconf", "torch",
             "torchvision", "torchmetrics", "timm", "optuna", "mlflow", "wandb")  # fmt: skip


#: private attributes our subclasses inherit from Lightning (``self._trainer``): not ours either
INHERITED_PRIVATE = {"_trainer", "_fabric", "_device", "_dtype", "_current_fx_name", "_results"}
HYDRA_KEYS = {"_target_", "_partial_", "_args_", "_recursive_", "_convert_"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


PACKAGE = {module_name(p): p for p in SRC.rglob("*.py")}


def layer_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or (p != "imgcls" and module.startswith(p + ".")) for p in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layout.py")


def imgcls_imports(module: str) -> set[str]:
    """Every imgcls module ``module`` imports, at the top or inside a function."""
    tree = ast.parse(PACKAGE[module].read_text())
    found: set[str] = set()
    package = module if PACKAGE[module].name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in PACKAGE:
                name = name.rpartition(".")[0]
            # a package's own modules import from it: the package runs first anyway, no cycle
            if name and name != module and name != "imgcls" and not module.startswith(name + "."):
                found.add(name)
    return found


GRAPH = {module: imgcls_imports(module) for module in PACKAGE}


LINES = {p: len(p.read_text().splitlines()) for p in COUNTED}


def test_size_of_the_project() -> None:
    total = sum(LINES.values())
    assert total <= MAX_LINES_TOTAL, f"{total} lines of Python outside tests/ and benchmarks/"


def test_no_file_over_300_lines() -> None:
    lines = LINES
    too_long = {str(p.relative_to(ROOT)): n for p, n in lines.items() if n > MAX_LINES_FILE}
    assert not too_long, f"files over {MAX_LINES_FILE} lines: {too_long}"


def test_no_import_cycles_lazy_imports_included() -> None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_imports_point_down_the_layers() -> None:
    upward = [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in GRAPH.items()
        for target in targets
        if layer_of(target) < layer_of(module)
    ]
    assert not upward, "\n".join(upward)


def library_private_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            if root in LIBRARIES and (
                any(part.startswith("_") for part in node.module.split("."))
                or any(a.name.startswith("_") and not a.name.startswith("__") for a in node.names)
            ):
                found.append(f"line {node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in LIBRARIES and "._" in alias.name:
                    found.append(f"line {node.lineno}: import {alias.name}")
        elif (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            base = node.value
            # our own objects' private attributes are ours (self._x, cls._x); a library's are not
            if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                if node.attr in INHERITED_PRIVATE:  # a LightningModule's/Callback's own internals
                    found.append(f"line {node.lineno}: self.{node.attr}")
                continue
            if node.attr in HYDRA_KEYS:  # config keys such as cfg._target_, not attributes
                continue
            found.append(f"line {node.lineno}: .{node.attr}")
    return found


def test_no_private_attributes_of_the_libraries() -> None:
    uses = {str(p.relative_to(ROOT)): library_private_uses(p) for p in COUNTED}
    uses = {p: u for p, u in uses.items() if u}
    assert not uses, uses


def test_no_sys_argv_assignment_and_no_process_wide_warning_filters() -> None:
    problems = []
    for path in COUNTED:
        tree = ast.parse(path.read_text())
        guarded: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.With) and any(
                "catch_warnings" in ast.unparse(item.context_expr) for item in node.items
            ):
                guarded.update(id(n) for n in ast.walk(node))
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            for target in targets:
                if "sys.argv" in ast.unparse(target):
                    problems.append(f"{path.name}:{node.lineno}: assigns sys.argv")
            if (
                isinstance(node, ast.Call)
                and ast.unparse(node.func).endswith(("filterwarnings", "simplefilter"))
                and id(node) not in guarded
            ):
                problems.append(f"{path.name}:{node.lineno}: process-wide warning filter")
    assert not problems, problems
