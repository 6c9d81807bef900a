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
