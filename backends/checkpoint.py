"""The merged-checkpoint backend (``output.format: checkpoint``): the base model with W0 + ΔW baked in.

The output has the input's layout: a diffusers folder gives a folder (every file copied, the UNet
file edited), a single ``.safetensors`` file gives a single file. Editing changes neither a tensor's
name, dtype nor shape, so the safetensors header — tensor table and ``__metadata__`` — stays byte for
byte the same, and so do all other tensors: only the bytes of the edited K/V tensors are rewritten, in
a copy, at the offsets the header gives. The UNet is never loaded whole, so memory stays at one
tensor at a time.

Each edited tensor is ``cast(W0 + ΔW)`` with W0 the stored values widened to float64, ΔW the solution's
float64 delta and ``cast`` the stored dtype (round-to-nearest, as torch casts), checked finite.
The copy is written beside the output under a temporary name and renamed into place.
"""

from __future__ import annotations

import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Mapping

import numpy as np

from erasec.ir import LinearSite, ModelTarget, Solution
from erasec.patches.atomic import write_files_atomically
from erasec.patches.errors import PatchError
from erasec.patches.safetensors_io import read_header

from .errors import BackendError
from .factors import edited_sites, full_width

_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointSource:
    """Where the base model's K/V tensors live and what they are called there."""

    layout: Literal["diffusers", "single-file"]
    root: Path  # the folder or the single file
    weights_file: Path  # the file holding the K/V tensors (``root`` itself for a single file)
    weight_name: Callable[[LinearSite], str]


def _merged_bytes(entry: dict, stored: bytes, delta: np.ndarray, name: str) -> bytes:
    """``cast(W0 + ΔW)`` in the stored dtype, W0 being the stored values themselves."""
    import torch

    dtype = _DTYPES.get(entry["dtype"])
    if dtype is None:
        raise BackendError(f"checkpoint: {name} is stored as {entry['dtype']}; only F32, F16, BF16, F64 can be edited")
    if tuple(entry["shape"]) != delta.shape:
        raise BackendError(f"checkpoint: {name} has shape {tuple(entry['shape'])} in the file, {delta.shape} in the solution")
    base = torch.frombuffer(bytearray(stored), dtype=getattr(torch, dtype)).reshape(delta.shape)
    merged = base.to(torch.float64).numpy() + delta
    if not np.isfinite(merged).all():
        raise BackendError(f"checkpoint: W0 + ΔW of {name} is not finite; the solve is unusable")
    tensor = torch.from_numpy(np.ascontiguousarray(merged)).to(getattr(torch, dtype)).contiguous()
    return tensor.view(torch.uint8).numpy().tobytes()


def _patch_file(path: Path, edits: Mapping[str, np.ndarray]) -> None:
    """Add ``name → ΔW`` to the stored tensors of the safetensors file at ``path``, in place."""
    try:
        header, _ = read_header(path)
    except PatchError as error:
        raise BackendError(f"checkpoint: {error}") from None
    with open(path, "r+b") as stream:
        (length,) = struct.unpack("<Q", stream.read(8))
        for name, delta in edits.items():
            if name not in header:
                raise BackendError(f"checkpoint: {path} has no tensor {name}")
            entry = header[name]
            start, stop = entry["data_offsets"]
            stream.seek(8 + length + start)
            raw = _merged_bytes(entry, stream.read(stop - start), delta, name)
            if len(raw) != stop - start:
                raise BackendError(f"checkpoint: {name} would change size ({len(raw)} vs {stop - start} bytes)")
            stream.seek(8 + length + start)
            stream.write(raw)


def _header_bytes(path: Path) -> bytes:
    with open(path, "rb") as stream:
        (length,) = struct.unpack("<Q", stream.read(8))
        return stream.read(length)


def merged_edits(
    solution: Solution, target: ModelTarget, base_weights: Mapping[str, np.ndarray], source: CheckpointSource
) -> dict[str, np.ndarray]:
    """tensor name in the weights file → float64 ΔW of the tensor's full shape, for every edited site."""
    edits = {}
    for space_solution, site in edited_sites(solution, target, base_weights, "checkpoint"):
        delta = space_solution.delta(site.module_path, base_weights[site.module_path])
        edits[source.weight_name(site)] = full_width(site, delta)
    return edits


def write_checkpoint(
    solution: Solution,
    target: ModelTarget,
    base_weights: Mapping[str, np.ndarray],
    source: CheckpointSource,
    output: Path,
) -> int:
    """Write the merged model to ``output`` (a folder for a folder input, else a file); returns bytes written."""
    output = Path(output)
    if source.weights_file.suffix != ".safetensors":
        raise BackendError(
            f"checkpoint: {source.weights_file} is not a safetensors file; convert the model to .safetensors "
            "to write a merged checkpoint"
        )
    if source.layout == "diffusers" and output.exists():
        raise BackendError(f"checkpoint: {output} exists; a merged folder is written to a new path")
    if source.layout == "single-file" and output.is_dir():
        raise BackendError(f"checkpoint: {output} is a folder; give a file name such as {output / 'merged.safetensors'}")
    edits = merged_edits(solution, target, base_weights, source)
    before = _header_bytes(source.weights_file)

    def write(staging: Path) -> None:
        copy = staging / output.name
        if source.layout == "diffusers":
            shutil.copytree(source.root, copy, symlinks=False)
            edited = copy / source.weights_file.relative_to(source.root)
        else:
            shutil.copyfile(source.weights_file, copy)
            edited = copy
        _patch_file(edited, edits)
        if _header_bytes(edited) != before:
            raise BackendError(f"checkpoint: {output}: the header changed while editing; nothing written")

    write_files_atomically([output], write)
    if output.is_dir():
        return sum(p.stat().st_size for p in output.rglob("*") if p.is_file())
    return output.stat().st_size

