"""The dependency rule of DESIGN.md §2, checked on every module's imports."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "ir": set(),
    "passes": {"ir"},
    "patches": {"ir"},
    "backends": {"ir", "patches"},
    "compiler": {"ir", "passes", "patches", "backends"},
}
# ir/ and passes/ are plain numpy/scipy math: no deep-learning stacks.
FORBIDDEN_THIRD_PARTY = {"ir": {"torch", "diffusers", "transformers", "onnx"}, "passes": {"torch", "diffusers", "transformers", "onnx"}}


def _imports(path: Path, package: str):
    tree = ast.parse(path.read_text(), filename=str(path))
    depth = len(path.relative_to(ROOT).parts) - 1  # folders between the root and the module
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: fine while it stays inside the top-level package
                if node.level > depth:
                    yield "erasec.<above>"
                continue
            yield node.module or ""


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_follow_the_layering(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in _imports(path, package):
            parts = name.split(".")
            if parts[0] == "erasec":
                target = parts[1] if len(parts) > 1 else ""
                if target != package and target not in ALLOWED[package]:
                    bad.append(f"{path.relative_to(ROOT)}: imports {name}")
            elif parts[0] in FORBIDDEN_THIRD_PARTY.get(package, ()):
                bad.append(f"{path.relative_to(ROOT)}: imports {name}")
    assert not bad, "\n".join(bad)


# --- inside compiler/: which sub-package (or top-level module) may import which ----------------------
# Lowest first. The leaves (errors, version, extras, hub_cache) import only errors; frontend (text →
# Spec) and models (a location → an opened model) know nothing of each other; the driver's steps sit
# above them, and only the CLI sees everything. A module may always import inside its own room.
_LEAVES = {"errors", "version", "extras", "hub_cache"}
COMPILER_ALLOWED = {
    "errors": set(),
    "version": set(),
    "extras": {"errors"},
    "hub_cache": {"errors"},
    "frontend": _LEAVES,
    "models": _LEAVES,
    "lowering": _LEAVES | {"frontend", "models"},
    "eval": _LEAVES | {"frontend", "models", "lowering"},
    "outputs": _LEAVES | {"models"},
    "onnx_graphs": _LEAVES | {"models", "outputs"},
    "emit": _LEAVES | {"frontend", "models", "onnx_graphs"},
    "build": _LEAVES | {"frontend", "models", "lowering", "eval", "outputs", "emit"},
    "tools": _LEAVES | {"frontend", "models", "lowering", "eval", "outputs", "emit", "build"},
    "build_many": _LEAVES | {"build", "models"},  # models: the encoder placement (--device) it passes to each build
    "cli": _LEAVES | {"frontend", "models", "lowering", "eval", "outputs", "onnx_graphs", "emit", "build", "tools",
                      "build_many"},
}


def _room(module: str) -> str:
    """``erasec.compiler.models.sd`` → ``models``; ``erasec.compiler.build`` → ``build``."""
    return module.split(".")[2]


def _compiler_imports(path: Path, root: Path = ROOT) -> list[str]:
    """The erasec.compiler modules ``path`` (under ``root``) imports, relative imports resolved."""
    package = ["erasec", *path.relative_to(root).parts[:-1]]  # the package its relative imports start from
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (package[: len(package) - node.level + 1] if node.level else [])
            module = ".".join(base + ([node.module] if node.module else []))
            found += [module] if node.module else [f"{module}.{alias.name}" for alias in node.names]
    return [name for name in found if name.startswith("erasec.compiler.")]


def upward_imports(edges: dict[str, list[str]], allowed: dict[str, set[str]]) -> list[str]:
    """``module: imports target`` for each edge from a room to one its row of ``allowed`` does not list."""
    bad = []
    for module, targets in sorted(edges.items()):
        room = _room(module)
        for target in targets:
            if _room(target) != room and _room(target) not in allowed[room]:
                bad.append(f"{module}: imports {target}")
    return bad


def _compiler_edges() -> dict[str, list[str]]:
    edges = {}
    for path in sorted((ROOT / "compiler").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts == ("compiler", "__init__"):
            continue
        module = ".".join(("erasec",) + (parts[:-1] if parts[-1] == "__init__" else parts))
        edges[module] = _compiler_imports(path)
    return edges


def test_every_compiler_room_is_in_the_table():
    rooms = {_room(module) for module in _compiler_edges()}
    assert rooms == set(COMPILER_ALLOWED), rooms ^ set(COMPILER_ALLOWED)


def test_compiler_rooms_import_only_downward():
    assert upward_imports(_compiler_edges(), COMPILER_ALLOWED) == []


def test_an_upward_import_inside_compiler_is_caught(tmp_path):
    """The checker on a synthetic map: models importing the lowering, frontend importing the CLI."""
    edges = _compiler_edges()
    edges["erasec.compiler.models.sd"] = [*edges["erasec.compiler.models.sd"], "erasec.compiler.lowering.lower"]
    edges["erasec.compiler.frontend.spec"] = ["erasec.compiler.cli.common"]
    assert upward_imports(edges, COMPILER_ALLOWED) == [
        "erasec.compiler.frontend.spec: imports erasec.compiler.cli.common",
        "erasec.compiler.models.sd: imports erasec.compiler.lowering.lower",
    ]
    # and through the file reader: a relative import two levels up resolves to its room
    module = tmp_path / "compiler" / "models" / "fake.py"
    module.parent.mkdir(parents=True)
    module.write_text("from ..eval.metrics import score\nfrom . import layout\n")
    assert _compiler_imports(module, tmp_path) == ["erasec.compiler.eval.metrics", "erasec.compiler.models.layout"]


def test_the_backend_table_names_every_output_format():
    from erasec.compiler.emit import BACKENDS
    from erasec.compiler.frontend.spec import OUTPUT_FORMATS

    assert tuple(BACKENDS) == OUTPUT_FORMATS


def _module_names() -> dict[str, Path]:
    """Every erasec module: ``erasec.compiler.models.sd`` → its file (a package → its __init__.py)."""
    names = {}
    for top in ALLOWED:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            names[".".join(("erasec",) + (parts[:-1] if parts[-1] == "__init__" else parts))] = path
    return names


def _all_edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module → the erasec modules it imports anywhere (top level, functions, TYPE_CHECKING blocks):
    ``from X import n`` counts X, or X.n where that is a module."""
    edges = {}
    for module, path in modules.items():
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                source = ".".join(base + ([node.module] if node.module else []))
                submodules = {f"{source}.{alias.name}" for alias in node.names} & modules.keys()
                found |= submodules or {source}
        edges[module] = {name for name in found if name in modules and name != module}
    return edges


def import_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return cycles


def test_no_import_cycles():
    """No module imports one that imports it back, by any path, even from inside a function: a cycle
    hidden behind a function-level import still ties two modules into one."""
    assert import_cycles(_all_edges(_module_names())) == []


def test_a_cycle_is_caught():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
