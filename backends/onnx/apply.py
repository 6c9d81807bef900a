"""``erasec apply PATCH --onnx unet.onnx -o out.onnx --mode bake|switchable|adapter``: a patch file
applied to a UNet graph (or a diffusion transformer's), with no model (the ONNX step of ``erasec build``, which may export the graph
first, is ``compiler/onnx_graphs/build.py``).

The patch is read and hash-checked by ``erasec.patches.read``; its LoRA factors, with
``alpha / r`` folded in, come from ``patches/solution.py`` — exactly what a LoRA loader
would add. The graph is rewritten by the ONNX backend (``backends/onnx``), which confirms the
located site tensors against the patch's base pin before touching anything.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from erasec.patches.outputs import check_output
from erasec.patches.read import read_patch
from erasec.patches.solution import patch_solution

from ..errors import BackendError
from . import MODES, OnnxOptions, deltas_from_solution, load_graph, patch_graph, write_graph
from .checks import check_external_data, check_graph
from .files import external_data_files, output_files


def _carried_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """The patch's identity in the graph's ``metadata_props``: name, version, base, spec, pipeline."""
    keys = ("erasec.format", "erasec.name", "erasec.version", "erasec.compiler", "erasec.base", "erasec.pipeline")
    return {key: metadata[key] for key in keys if key in metadata}


def checked_graph(path):
    """The graph at ``path``, refused before any tensor is read when it is no readable graph, the ONNX
    checker finds it invalid (a crafted external-data path included) or its external data lies outside
    its folder or is truncated (backends/onnx/checks.py)."""
    if Path(path).is_file():  # before onnx_ir parses it: that logs about an invalid graph, then goes on
        check_graph(path)
    model = load_graph(path)
    check_external_data(model, path)
    return model


def apply_onnx(
    patch_path: str | os.PathLike,
    onnx_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    mode: str = "bake",
    scale: float = 1.0,
    erase_scale: float = 1.0,
    verify_base: bool = True,
    external_data: bool | None = None,
    force: bool = False,
) -> dict:
    """Write ``output`` (and, for ``adapter``, ``output``'s ``.onnx_adapter``); returns a summary.

    ``scale`` multiplies ΔW (as in a merged checkpoint); ``erase_scale`` is the default of the
    switchable graph's ``erase_scale`` input.
    """
    if not math.isfinite(scale) or scale <= 0:
        raise BackendError(f"--scale: {scale} must be a finite number > 0 for an ONNX graph")
    if mode not in MODES:
        raise BackendError(f"--mode: {mode!r} is not one of {', '.join(MODES)}")
    given, onnx_path, output = os.fspath(output), Path(onnx_path), Path(output)
    if output.resolve() == onnx_path.resolve():
        raise BackendError(f"{output}: is the input graph; write the patched graph to a new path")
    written = output_files(output, adapter=mode == "adapter")
    # before any work (compiler/outputs.py); the graph's external data only matters when a file is replaced
    replaced = force and any(os.path.lexists(path) for path in written)
    inputs = (patch_path, onnx_path, *(external_data_files(onnx_path) if replaced else ()))
    for path in (given, *written[1:]):  # the raw -o first: a trailing '/' names a folder
        check_output(path, inputs=inputs, force=force, example="unet.onnx")
    patch = read_patch(patch_path)
    deltas = deltas_from_solution(
        patch_solution(patch, scale),
        source=str(patch.path),
        base_pin=patch.base,
        metadata=_carried_metadata(patch.metadata),
    )
    model = checked_graph(onnx_path)
    result = patch_graph(
        model, deltas, OnnxOptions(mode=mode, erase_scale=erase_scale, verify_base=verify_base), where=str(onnx_path)
    )
    files = write_graph(result.model, output, adapter=result.adapter, external_data=external_data)
    return {
        "output": str(output),
        "files": [str(path) for path in files],
        "graph": str(onnx_path),
        "patch": str(patch.path),
        "mode": mode,
        "sites": len(result.sites),
        "found_by": sorted({match.found_by for match in result.sites}),
        "confirmed_by": result.confirmed_by,
        "size_bytes": sum(path.stat().st_size for path in files),
    }
