"""``output.format: onnx`` in the spec: ``mode`` and ``graph``, their errors, the canonical form."""

from __future__ import annotations

from pathlib import Path

import pytest

from erasec.compiler.errors import SpecError
from erasec.compiler.frontend.reader import parse_spec
from erasec.compiler.frontend.spec import dump_spec

HEAD = "erasec: 1\nname: n\nversion: 1.0.0\nerase: [{concept: Van Gogh}]\n"


def _parse(output: str):
    return parse_spec(HEAD + output, source="s.yaml", base_dir=Path("/specs"), methods=("erasec", "uce"))


def test_onnx_output_with_mode_and_relative_graph():
    spec = _parse("output: {format: onnx, mode: adapter, graph: exported/unet/model.onnx}\n")
    assert (spec.output.format, spec.output.mode, spec.output.graph) == ("onnx", "adapter", "/specs/exported/unet/model.onnx")
    assert spec.canonical()["output"]["mode"] == "adapter"
    assert parse_spec(dump_spec(spec), source="s.yaml", base_dir=Path("/specs"), methods=("erasec", "uce")) == spec


def test_onnx_defaults_and_other_formats_keep_their_canonical_output():
    spec = _parse("output: {format: onnx}\n")
    assert (spec.output.mode, spec.output.graph) == ("bake", None)
    assert spec.canonical()["output"] == {"format": "onnx", "dtype": "fp32", "rank": "auto", "mode": "bake"}
    assert "mode" not in _parse("output: {format: kohya}\n").canonical()["output"]


def test_onnx_keys_are_refused_elsewhere_and_checked():
    with pytest.raises(SpecError, match=r"^s.yaml:5: output.mode: applies to format onnx only$"):
        _parse("output: {format: kohya, mode: bake}\n")
    with pytest.raises(SpecError, match=r"^s.yaml:5: output.mode: 'merged' is not one of 'bake', 'switchable', 'adapter'"):
        _parse("output: {format: onnx, mode: merged}\n")
    with pytest.raises(SpecError, match=r"^s.yaml:5: output.graph: expected a string"):
        _parse("output: {format: onnx, graph: 3}\n")
