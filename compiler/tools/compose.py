"""``erasec compose`` and ``erasec retarget``: new patches from existing ones, without their specs'
files and without running the text encoder.

**compose A B … -o C** links patches of one base. Adding LoRAs (ΔW_A + ΔW_B) lets each erase
undo the other's preserve constraints and double-counts shared rows; composing instead solves the
*union* spec — A's erase entries, then B's, the union of the preserve lists — from the text
encodings each linked patch recorded (``output.link: true``, ``compiler/models/recording.py``). The
result is the patch a build of the union spec gives (tested to 1e-8 on ΔW in float64). Refused,
with the reason: a patch without recorded encodings, different bases or text encoders, different
method/options/output, or a concept erased by two patches.

**retarget PATCH --model OTHER -o NEW** re-lowers a shared-form patch onto another model: each
edit is ``ΔW_l = W0_l (T − I) = W0_l L Rᵀ`` and T depends only on text embeddings (DESIGN.md §4),
so with OTHER's ``W0_l`` and the recorded L, R (``erasec.shared``) the result is exactly what
compiling the spec against OTHER gives — provided OTHER's text encoder is the patch's (pinned).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path


from erasec.passes.filter_preserve import drop_named
from erasec.passes.pipeline import Pipeline
from erasec.compiler.frontend.presets import PRESETS
from erasec.patches.outputs import check_output, erasec_patch_named
from erasec.patches.pin import pins_match
from erasec.patches.solution import patch_target
from erasec.patches.read import PatchFile, read_patch

from ..build import BuildOptions, BuildResult, build_spec
from ..models.recording import ReplayModel
from ..errors import BuildError
from ..eval.metrics import score
from ..lowering.lower import Lowering
from ..outputs import model_inputs
from ..frontend.from_patch import spec_from_dict
from ..emit import Emit, PatchRecord, emit


def _derived_from(patches: list[PatchFile]) -> tuple[tuple[str, str], ...]:
    record = [{"name": p.name, "version": p.version, "sha256": p.data_sha256} for p in patches]
    return (("erasec.derived_from", json.dumps(record, sort_keys=True, separators=(",", ":"))),)


def _check_composable(patches: list[PatchFile]) -> None:
    first = patches[0]
    for patch in patches:
        if "erasec.link" not in patch.metadata:
            raise BuildError(
                f"{patch.path}: records no text encodings (built without output.link: true); "
                "rebuild it with 'output: {link: true}' to compose it"
            )
    for other in patches[1:]:
        a, b = first.base, other.base
        if a.get("family") != b.get("family") or not pins_match(a, b):
            raise BuildError(
                f"{other.path}: pins another base than {first.path} (sha256 {str(b.get('sha256'))[:12]}… vs "
                f"{str(a.get('sha256'))[:12]}…); only patches of one base can be composed"
            )
        if (a.get("text_encoder") or {}).get("sha256") != (b.get("text_encoder") or {}).get("sha256"):
            raise BuildError(f"{other.path}: pins another text encoder than {first.path}; compose refuses")
        if first.sequence_length != other.sequence_length:  # a DiT's recorded rows differ with the padding
            raise BuildError(
                f"{other.path}: was built at a T5 padding of {other.sequence_length} rows, {first.path} at "
                f"{first.sequence_length}; rebuild one with options.sequence_length so that they agree"
            )
        spec_a, spec_b = first.spec, other.spec
        for key in ("method", "options", "output"):
            if spec_a.get(key) != spec_b.get(key):
                old, new = spec_a.get(key), spec_b.get(key)
                if isinstance(old, dict) and isinstance(new, dict):
                    sub = next(k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
                    key, old, new = f"{key}.{sub}", old.get(sub), new.get(sub)
                raise BuildError(
                    f"{other.path}: {key} is {new!r}, {first.path} has {old!r}; rebuild one so that they agree"
                )
    seen: dict[str, Path] = {}
    for patch in patches:
        for entry in patch.spec.get("erase", []):
            folded = entry["concept"].casefold()
            if folded in seen:
                raise BuildError(
                    f"{patch.path}: erases {entry['concept']!r}, which {seen[folded]} erases too; "
                    "compose concepts once (rebuild one patch without it)"
                )
            seen[folded] = patch.path


def union_spec_data(patches: list[PatchFile], *, name: str, version: str, model: str) -> dict:
    """The spec whose build ``compose`` reproduces: erase entries in order, preserve lists merged."""
    data = dict(patches[0].spec)
    preserve: dict[str, str] = {}
    erase = []
    for patch in patches:
        spec = patch.spec
        erase.extend(spec.get("erase", []))
        for prompt in spec.get("preserve", []):
            preserve.setdefault(prompt.casefold(), prompt)
    data.update(name=name, version=version, model=model, erase=erase, preserve=list(preserve.values()))
    return data


def compose_patches(
    paths: list[str],
    output: str,
    *,
    model: str | None = None,
    name: str | None = None,
    version: str | None = None,
    force: bool = False,
) -> BuildResult:
    from ..models.patch_model import open_patch_model

    if len(paths) < 2:
        raise BuildError("compose: give at least two patches")
    patches = [read_patch(path) for path in paths]
    first = patches[0]
    location = model or first.base.get("model")
    # the output-path policy before anything else (compiler/outputs.py); build_spec checks it again
    check_output(
        output, inputs=(*paths, *model_inputs(location)), force=force, same_artifact=erasec_patch_named(name or first.name)
    )
    _check_composable(patches)
    data = union_spec_data(patches, name=name or first.name, version=version or first.version, model=location)
    spec = spec_from_dict(data, source="compose")
    opened = open_patch_model(first, spec.model)  # at the patches' recorded T5 padding (a DiT's)
    if not pins_match(first.base, opened.base_pin(first.layers())):
        raise BuildError(f"{location}: not the base these patches pin; give the base with --model")
    encoder = (first.base.get("text_encoder") or {}).get("sha256")
    actual = opened.text_encoder_pin()
    if encoder and actual and actual["sha256"] != encoder:
        raise BuildError(f"{location}: its text encoder is not the one these patches pin; give the base with --model")
    encodings = {}
    for patch in patches:
        for key, rows in patch.encodings().items():
            encodings.setdefault(key, rows)
    replay = ReplayModel(opened, encodings, where="compose")
    return build_spec(
        spec, output, BuildOptions(force=force), model=replay, extra_metadata=_derived_from(patches), inputs=tuple(paths)
    )


def retarget_patch(path: str, model_location: str, output: str, *, force: bool = False) -> dict:
    from ..models.patch_model import open_patch_model

    patch = read_patch(path)
    if "erasec.shared" not in patch.metadata:
        raise BuildError(
            f"{patch.path}: not of the shared kind (no erasec.shared factors: its edits depend on the base's "
            "weights); rebuild its spec against the other model instead"
        )
    pinned = (patch.base.get("text_encoder") or {}).get("sha256")
    if not pinned:
        raise BuildError(f"{patch.path}: records no text-encoder pin; rebuild it with this erasec to retarget it")
    check_output(
        output, inputs=(path, *model_inputs(model_location)), force=force, same_artifact=erasec_patch_named(patch.name)
    )
    model = open_patch_model(patch, model_location)  # a DiT at the patch's T5 padding: its rows are T's
    if model.target.family != patch.base.get("family"):
        raise BuildError(f"{model_location}: is {model.target.family}, the patch is for {patch.base.get('family')}")
    encoder = model.text_encoder_pin()
    if encoder is None or encoder["sha256"] != pinned:
        raise BuildError(
            f"{model_location}: its text encoder differs from the patch's (sha256 "
            f"{(encoder or {}).get('sha256', '?')[:12]}… vs {pinned[:12]}…); T holds only for the same encoder, "
            "so rebuild the spec against this model"
        )
    solution = patch.shared_solution()
    target = patch_target(patch, model.target, model.location)
    weights = model.kv_weights()
    spec = spec_from_dict({**patch.spec, "model": model_location}, source=f"{patch.path}:erasec.spec")
    if "erasec.link" in patch.metadata:
        replay = ReplayModel(model, patch.encodings(), where="retarget")
        pipeline = Pipeline.parse(patch.metadata.get("erasec.pipeline") or PRESETS[spec.method].pipeline)
        lowered = Lowering.for_pipeline(replay, pipeline).lower(spec, PRESETS[spec.method])
        # what the patch was solved for: without the preserve prompts filter-preserve dropped, as build
        scored, dropped = drop_named(lowered) if "filter-preserve" in pipeline.names() else (lowered, {})
        # scored on the sequence space alone, as build reports it (a pooled space's efficacy is its own)
        scored = replace(scored, spaces=scored.spaces[:1])
        report = replace(score(scored, solution, weights), dropped_preserve=tuple(dropped)).as_dict()
    else:
        report = {"note": "not measured on this model: the patch records no encodings (output.link)"}
    spaces = tuple(
        {**space, "layers": sorted(site.module_path for site in target.space(space["space"]).sites)}
        for space in patch.spaces
    )
    record = PatchRecord(
        pipeline=patch.metadata.get("erasec.pipeline", ""),
        spaces=spaces,
        report=report,
        base_pin=model.base_pin([site.module_path for site in target.sites]),
        text_encoder=encoder,
        shared=patch.metadata["erasec.shared"],
        link=patch.metadata.get("erasec.link"),
        extra=_derived_from([patch]),
    )
    job = Emit(  # the patch's padded rank, kept
        spec=spec, solution=solution, target=target, weights=weights, output=Path(output), rank=patch.rank, record=record,
        model=model,
    )
    size, rank = emit(job)
    return {
        "output": str(output),
        "model": model_location,
        "patch": str(patch.path),
        "rank": rank,
        "layers": len(target.sites),
        "size_bytes": size,
        "report": report,
    }

