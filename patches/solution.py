"""A patch as the IR the backends take: its LoRA factors as a ``Solution`` (``patch_solution``), and
the model target restricted to the sites it edits (``patch_target``). Pure: no model is opened here;
``erasec apply``, ``verify``, ``eval``, ``retarget`` and ONNX apply call these with an opened model's target."""

from __future__ import annotations

import dataclasses

from erasec.ir import LayerFactors, ModelTarget, Solution, SolveReport, SpaceSolution

from .errors import PatchError
from .manifest_checks import layer_role
from .read import PatchFile


def patch_target(patch: PatchFile, target: ModelTarget, where: str) -> ModelTarget:
    """``target`` (the model at ``where``) restricted to the sites the patch edits, shapes checked."""
    wanted = set(patch.layers())
    spaces = []
    for space in target.spaces:
        sites = tuple(site for site in space.sites if site.module_path in wanted)
        if sites:
            spaces.append(dataclasses.replace(space, sites=sites))
    found = {site.module_path for space in spaces for site in space.sites}
    if found != wanted:
        missing = sorted(wanted - found)[0]
        raise PatchError(f"{where}: has no module {missing}; not a model of this patch's family and shape")
    return dataclasses.replace(target, spaces=tuple(spaces))


def patch_solution(patch: PatchFile, scale: float) -> Solution:
    """The patch's LoRA as a per-layer ``Solution`` of ``scale·ΔW`` (float64 from the stored factors);
    each space edits exactly the roles of its declared layers (SPEED: to_v only; SDXL's pooled space)."""
    spaces = []
    for space in patch.spaces:
        layers = []
        for layer in space["layers"]:
            up, down = patch.layer_factors(layer)
            layers.append(LayerFactors(module_path=layer, up=up * scale, down=down))
        spaces.append(
            SpaceSolution(
                space=space["space"],
                form="per-layer",
                rank=patch.rank,
                layers=tuple(layers),
                report=SolveReport(condition=float(space.get("condition", 0.0)), residual=0.0, hard_rank=0),
                roles=tuple(sorted({layer_role(layer) for layer in space["layers"]})),
            )
        )
    return Solution(spaces=tuple(spaces))
