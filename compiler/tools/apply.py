"""``erasec apply PATCH --model M -o OUT [--scale S]``: a merged checkpoint, ``W0 + S·ΔW``.

The output has the model's layout — a diffusers folder gives a folder, a single ``.safetensors``
checkpoint a single file — written by the merged-checkpoint backend (``backends/checkpoint.py``):
only the bytes of the edited K/V tensors change, each ``cast(W0 + S·ΔW)`` computed in float64,
header and every other tensor byte-identical, written under a temporary name and renamed.

ΔW is read from the patch's own LoRA factors (kohya ``alpha/r · up @ down`` or PEFT ``B @ A``), so what is merged is
exactly what a LoRA loader would add. A positive scale requires the model to match the base pin
(``--force`` skips the check); a negative one undoes a merge — ``--scale -1`` on a model merged
with this patch restores the base within the storage dtype's rounding — and so is not checked
against the pin, which a merged model no longer matches.
"""

from __future__ import annotations

import math

from erasec.backends.checkpoint import write_checkpoint
from erasec.patches.pin import pin_difference
from erasec.patches.read import read_patch
from erasec.patches.solution import patch_solution, patch_target

from ..errors import BuildError
from ..models.patch_model import open_patch_model


def apply_patch(
    patch_path: str, model_location: str, output: str, *, scale: float = 1.0, force: bool = False,
    allow_pickle: bool = False,
) -> dict:
    if not math.isfinite(scale) or scale == 0:
        raise BuildError(f"--scale: {scale} must be a finite, non-zero number")
    patch = read_patch(patch_path)
    model = open_patch_model(patch, model_location, allow_pickle=allow_pickle, need_text=False)  # weights only
    if patch.base["family"] != model.target.family:
        raise BuildError(f"{patch.path}: the patch is for {patch.base['family']}, the model is {model.target.family}")
    target = patch_target(patch, model.target, model.location)
    if scale > 0 and not force:
        differ = pin_difference(patch.base, model.base_pin(patch.layers()))
        if differ:
            raise BuildError(
                f"{model_location}: not this patch's base ({len(differ)} touched tensors differ, first "
                f"{differ[0].removesuffix('.weight')}); use 'erasec retarget' for a fine-tune, or --force"
            )
    source = model.checkpoint_source()
    size = write_checkpoint(patch_solution(patch, scale), target, model.kv_weights(), source, output)
    return {
        "output": str(output),
        "model": model_location,
        "layout": source.layout,
        "patch": str(patch.path),
        "scale": scale,
        "tensors_changed": len(target.sites),
        "size_bytes": size,
    }
