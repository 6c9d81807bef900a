"""``erasec verify PATCH --model M``: does this patch belong to this model, and is it intact?

Checks, in order, each reported (docs/patch-format.md):

1. integrity — the sha256 of the tensor bytes equals the ``sshs_model_hash`` the compiler wrote,
   so a single flipped bit anywhere in the LoRA is caught;
2. sites — every module the patch edits exists in the model with the patch's shapes;
3. base pin — the model's touched tensors hash to the recorded pin (``patches/pin.py``: exact, or
   fp16-rounded when either side is stored in fp16); on a mismatch, which tensors differ;
4. ΔW — for the shared form, ``W0_l L Rᵀ`` from the model and the recorded factors equals the
   stored ``up @ down`` to the storage dtype's rounding (relative Frobenius error per module).

The answer is yes only when every check passes; the CLI exits 1 otherwise.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from erasec.ir import ModelTarget
from erasec.patches.link import decode_shared
from erasec.patches.pin import pin_difference
from erasec.patches.errors import PatchError
from erasec.patches.read import PatchFile, read_patch

from .errors import BuildError
from .pins import model_base_pin

# relative Frobenius error a stored ΔW may have against the recorded factors, per storage dtype:
# a few units of each format's rounding (fp32 2^-24, fp16 2^-11, bf16 2^-8) on products of two factors
DELTA_TOLERANCE = {"fp32": 1e-5, "fp16": 5e-3, "bf16": 4e-2}


def patch_target(patch: PatchFile, model) -> ModelTarget:
    """A model's target restricted to the sites the patch edits, shapes checked."""
    wanted = set(patch.layers())
    spaces = []
    for space in model.target.spaces:
        sites = tuple(site for site in space.sites if site.module_path in wanted)
        if sites:
            spaces.append(dataclasses.replace(space, sites=sites))
    found = {site.module_path for space in spaces for site in space.sites}
    if found != wanted:
        missing = sorted(wanted - found)[0]
        raise BuildError(f"{model.location}: has no module {missing}; not a model of this patch's family and shape")
    return dataclasses.replace(model.target, spaces=tuple(spaces))


def _check(name: str, ok: bool, detail: str) -> dict:
    return {"check": name, "ok": ok, "detail": detail}


def _site_check(patch: PatchFile, model, layers: list[str]) -> dict:
    sites = {site.module_path: site for site in model.target.sites}
    for layer in layers:
        site = sites.get(layer)
        if site is None:
            return _check("sites", False, f"the model has no module {layer}")
        try:
            up, down = patch.layer_factors(layer)
        except PatchError as error:
            return _check("sites", False, str(error).split(": ", 1)[1])
        if up.shape[0] != site.out_features or down.shape[1] != site.in_features:
            return _check(
                "sites",
                False,
                f"{layer}: the patch is ({up.shape[0]}, {down.shape[1]}), the model ({site.out_features}, {site.in_features})",
            )
    return _check("sites", True, f"{len(layers)} modules present with matching shapes")


def _delta_check(patch: PatchFile, weights: dict, model_dtype: str | None) -> dict:
    """The stored ΔW against W0·L·Rᵀ; the limit is the looser of the patch's and the model's storage
    dtype (an fp16 release of the base has W0 rounded to fp16, which moves W0·L·Rᵀ by as much)."""
    if "erasec.shared" not in patch.metadata:
        return _check("delta", True, "not recorded (per-layer form); skipped")
    solution = decode_shared(patch.metadata["erasec.shared"])
    tolerance = max(DELTA_TOLERANCE.get(kind, DELTA_TOLERANCE["bf16"]) for kind in (patch.dtype, model_dtype or "fp32"))
    limit_dtype = patch.dtype if tolerance == DELTA_TOLERANCE.get(patch.dtype) else f"a {model_dtype} model"
    worst, worst_layer = 0.0, ""
    for space in patch.spaces:
        factors = solution.space(space["space"])
        for layer in space["layers"]:
            expected = factors.delta(layer, weights[layer])
            stored = patch.layer_delta(layer)
            norm = max(np.linalg.norm(expected), np.finfo(float).tiny)
            error = float(np.linalg.norm(stored - expected) / norm)
            if error > worst:
                worst, worst_layer = error, layer
    ok = worst <= tolerance
    where = f" at {worst_layer}" if worst_layer else ""
    return _check("delta", ok, f"stored ΔW vs W0·L·Rᵀ: max relative error {worst:.2e}{where} (limit {tolerance:.0e} for {limit_dtype})")


def verify_patch(patch_path: str, model_location: str) -> dict:
    """Every check's result and the overall answer, as JSON-able data."""
    from .model_open import open_model

    patch = read_patch(patch_path, check_hash=False)
    checks = [
        _check(
            "integrity",
            patch.hash_matches,
            "tensor bytes match sshs_model_hash"
            if patch.hash_matches
            else f"tensor bytes hash to {patch.data_sha256[:12]}…, the header records "
            f"{patch.metadata.get('sshs_model_hash', '(none)')[:12]}…: tampered or corrupted",
        )
    ]
    model = open_model(model_location)
    base = patch.base
    layers = patch.layers()
    if base.get("family") != model.target.family:
        checks.append(_check("family", False, f"the patch is for {base.get('family')}, the model is {model.target.family}"))
    else:
        checks.append(_site_check(patch, model, layers))
    if all(check["ok"] for check in checks):
        actual = model_base_pin(model, layers)
        differ = pin_difference(base, actual)
        shown = ", ".join(name.removesuffix(".weight") for name in differ[:3]) + (", …" if len(differ) > 3 else "")
        checks.append(
            _check(
                "base",
                not differ,
                f"the {len(layers)} touched tensors match the pin ({'exact' if base.get('sha256') == actual['sha256'] else 'fp16-rounded'})"
                if not differ
                else f"{len(differ)} of {len(layers)} touched tensors differ from the pin: {shown}",
            )
        )
        if all(check["ok"] for check in checks):
            checks.append(_delta_check(patch, model.kv_weights(), actual.get("dtype")))
    ok = all(check["ok"] for check in checks)
    failed = next((check for check in checks if not check["ok"]), None)
    return {
        "patch": str(patch.path),
        "model": model_location,
        "ok": ok,
        "reason": None if failed is None else f"{failed['check']}: {failed['detail']}",
        "checks": checks,
    }
