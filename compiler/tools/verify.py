"""``erasec verify PATCH --model M``: does this patch belong to this model, and is it intact?

Checks, in order, each reported (docs/patch-format.md, "What verify checks"); the first that fails
ends the run:

1. integrity — the sha256 of the tensor bytes equals ``sshs_model_hash`` and the digest of the
   metadata, tensor index and tensor bytes equals ``erasec.digest`` (a checksum, not a signature);
2. layers — re-derived from the tensors: exactly the declared layers of ``erasec.spaces``, each at
   rank ``ss_network_dim`` (PEFT: the config's ``r``) with alpha = rank (``read_patch`` refuses any other file outright);
3. finite — every stored factor is finite (a NaN or inf would poison every merged weight);
4. sites — every module the patch edits exists in the model with the patch's shapes;
5. base pin — the model's touched tensors hash to the recorded pin (``patches/pin.py``: exact, or
   fp16-rounded when either side is stored in fp16); on a mismatch, which tensors differ;
6. ΔW — for the shared form, ``W0_l L Rᵀ`` from the model and the recorded factors equals the
   stored ``up @ down`` to the storage dtype's rounding (relative Frobenius error per module; a
   NaN error fails);
7. efficacy — the claimed per-concept efficacy of ``erasec.report``, re-measured with the stored
   LoRA on the spec's erase rows, encoded by the model's text encoder (only those prompts: the
   preserve rows and specificity would need the full lowering of a build and are not re-derived).

The answer is yes only when every check passes; the CLI exits 1 otherwise.
"""

from __future__ import annotations

import math

import numpy as np

from erasec.patches.pin import pin_difference
from erasec.patches.errors import PatchError
from erasec.patches.read import PatchFile, checked, read_raw

from ..errors import ModelError
from ..models.patch_model import open_patch_model
from ..models.protocol import TextModel

# relative Frobenius error a stored ΔW may have against the recorded factors, per storage dtype:
# a few units of each format's rounding (fp32 2^-24, fp16 2^-11, bf16 2^-8) on products of two factors
DELTA_TOLERANCE = {"fp32": 1e-5, "fp16": 5e-3, "bf16": 4e-2}


def _check(name: str, ok: bool, detail: str) -> dict:
    return {"check": name, "ok": ok, "detail": detail}


def _site_check(patch: PatchFile, model: TextModel, layers: list[str]) -> dict:
    sites = {site.module_path: site for site in model.target.sites}
    for layer in layers:
        site = sites.get(layer)
        if site is None:
            return _check("sites", False, f"the model has no module {layer}")
        try:
            up, down = patch.layer_factors(layer)
        except PatchError as error:
            return _check("sites", False, str(error).split(": ", 1)[1])
        width = site.full_in_features or site.in_features  # the pooled site's LoRA spans the whole weight
        if up.shape[0] != site.out_features or down.shape[1] != width:
            return _check(
                "sites",
                False,
                f"{layer}: the patch is ({up.shape[0]}, {down.shape[1]}), the model ({site.out_features}, {width})",
            )
    return _check("sites", True, f"{len(layers)} modules present with matching shapes")


def _tolerance(table: dict, patch_dtype: str, model_dtype: str | None) -> tuple[float, str]:
    """The looser limit of the patch's and the model's storage dtype, and which one set it."""
    tolerance = max(table.get(kind, table["bf16"]) for kind in (patch_dtype, model_dtype or "fp32"))
    return tolerance, patch_dtype if tolerance == table.get(patch_dtype) else f"a {model_dtype} model"


def _delta_check(patch: PatchFile, weights: dict, model_dtype: str | None) -> dict:
    """The stored ΔW against W0·L·Rᵀ; the limit is the looser of the patch's and the model's storage
    dtype (an fp16 release of the base has W0 rounded to fp16, which moves W0·L·Rᵀ by as much)."""
    solution = patch.shared_solution()
    if solution is None:
        return _check("delta", True, "not recorded (per-layer form); skipped")
    tolerance, limit_dtype = _tolerance(DELTA_TOLERANCE, patch.dtype, model_dtype)
    worst, worst_layer = 0.0, ""
    for space in patch.spaces:
        factors = solution.space(space["space"])
        for layer in space["layers"]:
            expected = factors.delta(layer, weights[layer])
            stored = patch.layer_delta(layer)
            if stored.shape[1] > expected.shape[1]:  # the pooled site: its size/crop columns keep W0
                expected = np.pad(expected, ((0, 0), (0, stored.shape[1] - expected.shape[1])))
            norm = max(np.linalg.norm(expected), np.finfo(float).tiny)
            error = float(np.linalg.norm(stored - expected) / norm)
            if math.isnan(error) or error > worst:  # NaN never compares greater: test it by name
                worst, worst_layer = error, layer
            if math.isnan(worst):
                break
    ok = worst <= tolerance  # False for NaN
    where = f" at {worst_layer}" if worst_layer else ""
    return _check("delta", ok, f"stored ΔW vs W0·L·Rᵀ: max relative error {worst:.2e}{where} (limit {tolerance:.0e} for {limit_dtype})")


def _finite_check(patch: PatchFile) -> dict:
    for layer in patch.layers():
        for which, array in zip(("up", "down"), patch.layer_factors(layer)):
            if not np.all(np.isfinite(array)):
                return _check("finite", False, f"{layer}: its {which} factor holds NaN or infinity")
    return _check("finite", True, f"all {2 * len(patch.modules)} factors are finite")


_RANK_SOURCE = {"kohya": "ss_network_dim", "peft": "the PEFT config's r"}


def _layers_check(patch: PatchFile) -> dict:
    """What ``read_patch`` re-derived from the tensors (it refuses a patch where these disagree)."""
    spaces = ", ".join(f"{s['space']}: {len(s['layers'])}" for s in patch.spaces)
    return _check(
        "layers", True,
        f"{len(patch.modules)} LoRA modules at rank {patch.rank} ({_RANK_SOURCE[patch.declared.layout]}), "
        f"exactly the declared layers ({spaces})",
    )


def verify_patch(
    patch_path: str, model_location: str, *, allow_pickle: bool = False, text_encoders=(), tokenizers=()
) -> dict:
    """Every check's result and the overall answer, as JSON-able data. ``text_encoders``/``tokenizers``:
    (slot, path) pairs for a diffusion transformer whose encoders lie apart from it (``--text-encoder``)."""
    from ..eval.efficacy import efficacy_check
    from ..models.dit_inputs import TextInputs

    for option, pairs in (("--text-encoder", text_encoders), ("--tokenizer", tokenizers)):
        for slot, path in pairs:
            if path is None:
                raise ModelError(f"{option} {slot}: expected SLOT=PATH (t5, clip_l or clip_g = a file or folder)")
    text_inputs = TextInputs(encoders=tuple(sorted(text_encoders)), tokenizers=tuple(sorted(tokenizers)))

    raw = read_raw(patch_path)
    checks = [
        _check(
            "integrity",
            raw.problem is None,
            "tensor bytes match sshs_model_hash; metadata, tensor index and bytes match erasec.digest"
            if raw.problem is None
            else f"{raw.problem}: tampered or corrupted",
        )
    ]
    if raw.problem is None:
        patch = checked(raw)
        checks += [_layers_check(patch), _finite_check(patch)]
    if all(check["ok"] for check in checks):
        model = open_patch_model(patch, model_location, allow_pickle=allow_pickle, text_inputs=text_inputs or None)
        checks += _model_checks(patch, model)
        if all(check["ok"] for check in checks):
            checks.append(efficacy_check(patch, model, _tolerance))
    failed = next((check for check in checks if not check["ok"]), None)
    return {
        "patch": str(raw.path),
        "model": model_location,
        "ok": failed is None,
        "reason": None if failed is None else f"{failed['check']}: {failed['detail']}",
        "checks": checks,
    }


def _model_checks(patch: PatchFile, model: TextModel) -> list[dict]:
    """sites (or family), base pin and ΔW, each run only when the ones before passed."""
    base, layers = patch.base, patch.layers()
    if base["family"] != model.target.family:
        return [_check("family", False, f"the patch is for {base['family']}, the model is {model.target.family}")]
    checks = [_site_check(patch, model, layers)]
    if not checks[0]["ok"]:
        return checks
    actual = model.base_pin(layers)
    differ = pin_difference(base, actual)
    shown = ", ".join(name.removesuffix(".weight") for name in differ[:3]) + (", …" if len(differ) > 3 else "")
    checks.append(
        _check(
            "base",
            not differ,
            f"the {len(layers)} touched tensors match the pin ({'exact' if base['sha256'] == actual['sha256'] else 'fp16-rounded'})"
            if not differ
            else f"{len(differ)} of {len(layers)} touched tensors differ from the pin: {shown}"
            + (f" (the patch edits {base['component']}/: give the folder holding it, or that expert's own file)"
               if base.get("component") else ""),
        )
    )
    if not differ:
        checks.append(_delta_check(patch, model.kv_weights(), actual.get("dtype")))
    return checks
