"""A family joins by one module (issue 13 item 2): compiler code asks the registry
(``compiler/models/families``) for a family's facts and never compares family names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from erasec.compiler.models.families import FAMILIES, SingleFileEncoder

COMPILER = Path(__file__).resolve().parents[2] / "compiler"
# where a family's name may be written: its own module, the spec's list of names (kept equal to the
# registry by test_family_override) and the built-in models' table (each model names its family)
NAMED_IN = {"models/families/sd.py", "models/families/dit.py", "frontend/spec.py", "models/builtin/listing.py"}


def _family_literals(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [
        f"{path.relative_to(COMPILER)}:{node.lineno} {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in FAMILIES
    ]


def test_no_compiler_module_branches_on_a_family_name():
    found = [
        hit
        for path in sorted(COMPILER.rglob("*.py"))
        if path.relative_to(COMPILER).as_posix() not in NAMED_IN
        for hit in _family_literals(path)
    ]
    assert found == []


@pytest.mark.parametrize("name", sorted(name for name, family in FAMILIES.items() if not family.transformer))
def test_each_family_places_every_encoder_in_a_single_file(name):
    """Every encoder of a UNet family has exactly one single-file place, and the pooled encoder is one of them."""
    family = FAMILIES[name]
    components = [encoder.component for encoder in family.encoders]
    assert [place.component for place in family.single_file] == components
    assert all(isinstance(place, SingleFileEncoder) for place in family.single_file)
    assert family.pooled_encoder is None or family.pooled_encoder in components
    assert family.pooled == (family.pooled_encoder is not None)
    assert family.unet_name and family.unet_config
