"""``erasec verify``'s last check: the efficacy a patch claims, re-measured on the model.

``erasec.report`` records, per erased concept, the text-pathway efficacy the build measured
(``metrics.score``: ``1 − ‖W'k − W0 g‖ / ‖W0 k − W0 g‖`` over the concept's erase rows). Those rows
depend only on the spec's erase entries and the text encoder, so they are re-encoded here — the
spec lowered with its preserve list and prior removed, a handful of prompts — and scored with the
patch's own stored LoRA (``W' = W0 + up @ down``) and the model's ``W0``. A patch whose spec was
edited to claim another concept ("Mickey Mouse" over untouched tensors) measures near 0 for it and
fails. Specificity is not re-derived: it needs every preserve row (and the prior), the full
lowering of a build (docs/patch-format.md, "What verify checks").
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from erasec.ir import LayerFactors, Solution, SolveReport, SpaceSolution
from erasec.ir.errors import ErasecError
from erasec.patches.errors import PatchError
from erasec.patches.read import PatchFile

from ..models.protocol import TextModel


# |claimed − measured| a per-concept efficacy may show, per storage dtype (of the patch or the model,
# the looser): the stored factors' rounding moves W'k by about that fraction of ‖W0 k − W0 g‖
EFFICACY_TOLERANCE = {"fp32": 1e-4, "fp16": 5e-3, "bf16": 4e-2}


def _stored_solution(patch: PatchFile, space) -> Solution:
    """The patch's LoRA as a per-layer solution over every site of ``space`` (zero where it adds nothing)."""
    layers, declared = [], set(patch.layers())
    for site in space.sites:
        if site.module_path in declared:
            up, down = patch.layer_factors(site.module_path)
            down = down[:, : site.in_features]
        else:
            up, down = np.zeros((site.out_features, patch.rank)), np.zeros((patch.rank, site.in_features))
        layers.append(LayerFactors(module_path=site.module_path, up=up, down=down))
    solved = SpaceSolution(
        space=space.name, form="per-layer", rank=patch.rank, layers=tuple(layers),
        report=SolveReport(condition=0.0, residual=0.0, hard_rank=0), roles=tuple(sorted({s.role for s in space.sites})),
    )
    return Solution(spaces=(solved,))


def efficacy_check(patch: PatchFile, model: TextModel, tolerance_of: Callable) -> dict:
    from erasec.passes.pipeline import Pipeline
    from erasec.compiler.frontend.presets import PRESETS

    from .metrics import score
    from ..lowering.lower import Lowering
    from ..frontend.from_patch import spec_from_dict

    claimed = patch.report.get("efficacy") or {}
    if not claimed:
        return {"check": "efficacy", "ok": True, "detail": "no efficacy recorded; skipped"}
    options = {**patch.spec.get("options", {}), "prior_scale": 0.0}
    data = {**patch.spec, "model": None, "preserve": [], "options": options}  # the model is open already
    spec = spec_from_dict(data, source=f"{patch.path}:erasec.spec")
    preset = PRESETS[spec.method]
    try:
        pipeline = Pipeline.parse(patch.metadata["erasec.pipeline"] or preset.pipeline)
    except ErasecError as error:
        raise PatchError(f"{patch.path}: erasec.pipeline: {error}") from None
    lowered = Lowering.for_pipeline(model, pipeline).lower(spec, preset)
    kv = dataclasses.replace(lowered, spaces=lowered.spaces[:1])
    space = lowered.target.space(kv.spaces[0].space)
    measured = score(kv, _stored_solution(patch, space), model.kv_weights()).as_dict()["efficacy"]
    if set(measured) != set(claimed):
        return {
            "check": "efficacy", "ok": False,
            "detail": f"the report claims {sorted(claimed)}, the spec erases {sorted(measured)}",
        }
    tolerance, limit = tolerance_of(EFFICACY_TOLERANCE, patch.dtype, model.storage_dtype())
    gaps = {name: abs(float(claimed[name]) - measured[name]) if claimed[name] is not None else float("inf")
            for name in measured}
    worst = max(sorted(gaps), key=lambda name: gaps[name])
    ok = gaps[worst] <= tolerance
    shown = "none" if claimed[worst] is None else f"{float(claimed[worst]):.4f}"
    return {
        "check": "efficacy", "ok": ok,
        "detail": f"{len(measured)} concepts re-measured; largest gap at {worst!r}: claimed {shown}, "
        f"measured {measured[worst]:.4f} (limit {tolerance:.0e} for {limit})",
    }
