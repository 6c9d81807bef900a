"""The ONNX step of ``erasec build`` (``output.format: onnx``): the model's UNet graph (a diffusion
transformer's transformer graph) — the spec's ``output.graph``, or exported now — with the solution
applied by the ONNX backend. It stays in the compiler because exporting needs the model loaders;
applying a patch file to a graph needs none (``backends/onnx/apply.py``)."""

from __future__ import annotations

from pathlib import Path

from erasec.backends.onnx import OnnxOptions, deltas_from_solution, patch_graph, write_graph
from erasec.backends.onnx.apply import checked_graph
from erasec.ir.dit_naming import is_dit


def build_onnx(
    solution, target, base_weights, output: Path, *, graph: str | None, mode: str, metadata: dict[str, str]
) -> int:
    """``output.format: onnx`` in ``erasec build``: the model's UNet or transformer graph (``graph``, or
    exported now with the default settings) with the solution applied; returns the bytes written."""
    import tempfile

    from .export import ExportOptions
    from .export_model import export_onnx

    deltas = deltas_from_solution(
        solution, source="build", target=target, base_weights=base_weights, metadata=metadata
    )
    denoiser = "transformer" if is_dit(target.family) else "unet"
    with tempfile.TemporaryDirectory(prefix="erasec-onnx-") as scratch:
        if graph is None:
            graph = str(export_onnx(target.name, scratch, ExportOptions(components=(denoiser,))).files[denoiser])
        model = checked_graph(graph)
        result = patch_graph(model, deltas, OnnxOptions(mode=mode), base_weights=base_weights, where=graph)
        files = write_graph(result.model, output, adapter=result.adapter)
    return sum(path.stat().st_size for path in files)

