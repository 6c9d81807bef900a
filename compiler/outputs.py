"""The output-path policy (``patches/outputs.py``) applied to the compiler's commands: which inputs
each output is compared with, and what counts as the same artifact, decided before any work.

A model is named by location; its path is found without opening or building it
(``builtin.builtin_location``), so the check costs no model load.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from erasec.backends.errors import BackendError
from erasec.patches.outputs import check_output, check_output_folder, erasec_patch_named

from .models.builtin import builtin_location


def model_inputs(location: str | None, cache_dir: Path | None = None) -> tuple[Path, ...]:
    """The path a model location reads (none for an unknown or absent model: its own error comes later)."""
    if not location:
        return ()
    if location.startswith("builtin:"):
        path = builtin_location(location.removeprefix("builtin:"), cache_dir)
        return () if path is None else (path,)
    return (Path(location).expanduser(),)


def _is_folder_model(location: str | None, cache_dir: Path | None) -> bool:
    if location and location.startswith("builtin:"):
        return not location.endswith(".safetensors")
    return any(path.is_dir() for path in model_inputs(location, cache_dir))


def check_build_output(
    spec, output: str | os.PathLike, *, inputs: Iterable = (), force: bool = False, cache_dir: Path | None = None
) -> Path:
    """``build``/``build-many``/``compose``/``retarget``: ``output`` for ``spec`` (its model, its
    ``output.graph``, its separate text encoders and tokenizers, and ``inputs``, such as the spec file
    and the patches read, are its inputs)."""
    return check_merge_output(
        spec.model, output, inputs=(*inputs, spec.output.graph, *(path for _, path in (*spec.text_encoders, *spec.tokenizers))),
        force=force, cache_dir=cache_dir, spec_format=spec.output.format,
        name=spec.name,
    )


def check_merge_output(
    model: str | None,
    output: str | os.PathLike,
    *,
    inputs: Iterable = (),
    force: bool = False,
    cache_dir: Path | None = None,
    spec_format: str = "checkpoint",
    name: str | None = None,
) -> Path:
    """A patch (``kohya``/``peft``: an erasec patch of the same name may be replaced), a merged
    checkpoint (a folder for a folder model, never existing; a file needs ``--force`` to replace)
    or an ONNX graph (``--force`` to replace)."""
    sources = (*inputs, *model_inputs(model, cache_dir))
    if spec_format == "checkpoint" and _is_folder_model(model, cache_dir):
        if os.path.lexists(output):  # the backend's own rule and message, now before the work
            check_output_folder(output, inputs=sources)  # an input is named as one first
            raise BackendError(f"checkpoint: {output} exists; a merged folder is written to a new path")
        return check_output_folder(
            output, inputs=sources, exist_ok=False, exists_hint="a merged folder is written to a new path"
        )
    if spec_format in ("kohya", "peft") and name is not None:
        return check_output(output, inputs=sources, force=force, same_artifact=erasec_patch_named(name))
    example = "unet.onnx" if spec_format == "onnx" else "merged.safetensors"
    return check_output(output, inputs=sources, force=force, example=example)
