"""The emit step: a solved edit written in the spec's ``output.format``, and the one table of formats.

``BACKENDS`` maps each format name to its options class and its writer, as xDSL's
``available_targets`` maps a target name to its printer; ``erasec build`` (and ``compose``, which
builds) and ``erasec retarget`` all emit through ``emit``. A LoRA format (kohya, PEFT) writes its
tensors and the manifest (``patch_manifest``, the one place a ``Manifest`` is assembled); the merged
checkpoint writes the base in its own layout; ONNX patches the model's UNet graph. Every writer
writes atomically and returns ``(bytes written, rank)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from erasec.backends.checkpoint import write_checkpoint
from erasec.backends.kohya import KohyaOptions, build_kohya
from erasec.backends.peft import PeftOptions, build_peft
from erasec.ir import ModelTarget, Solution
from erasec.patches.manifest import Manifest, write_patch

from .errors import SpecError
from .frontend.spec import Spec
from .models.families import FAMILIES
from .models.protocol import TextModel
from .version import erasec_version


@dataclass(frozen=True, slots=True, kw_only=True)
class PatchRecord:
    """What a LoRA patch's manifest says beyond its tensors: the edited spaces, the scores, the pins
    and the shared/linked forms (``patches/manifest.py`` documents each key)."""

    pipeline: str
    spaces: tuple[dict, ...]
    report: dict
    base_pin: dict
    text_encoder: dict | None
    shared: str | None
    link: str | None
    extra: tuple[tuple[str, str], ...] = ()
    device: dict | None = None  # erasec.device: the encoders' placement (models/placement.py)


@dataclass(frozen=True, slots=True, kw_only=True)
class Emit:
    """One emit: the solution on ``target`` (base K/V ``weights``) for ``spec``, into ``output``.
    ``rank`` is the LoRA rank to store (None: the solved one); ``record`` is the LoRA manifest's
    content, ``model`` the opened model (the merged checkpoint copies its layout; a LoRA's manifest
    records its ``sequence_length``)."""

    spec: Spec
    solution: Solution
    target: ModelTarget
    weights: Mapping
    output: Path
    rank: int | None = None
    record: PatchRecord | None = None
    model: TextModel | None = None


@dataclass(frozen=True, slots=True)
class Backend:
    options: type | None  # the backend's options class, built from the spec's output settings
    write: Callable[[Emit], tuple[int, int]]
    lora: bool  # kohya/PEFT: a LoRA file with a manifest (the shared kind retarget and compose read)


def _solved_rank(job: Emit) -> int:
    return max(s.rank for s in job.solution.spaces)


def check_rank(spec: Spec, target) -> None:
    """``output.rank`` at most the full rank min(out, in) of every edited layer: past it, zero
    padding only makes the patch bigger than the dense ΔW it encodes."""
    if spec.output.rank == "auto" or spec.output.format not in ("kohya", "peft"):
        return
    site = min(target.sites, key=lambda s: (min(s.out_features, s.in_features), s.module_path))
    full = min(site.out_features, site.in_features)
    if spec.output.rank > full:
        what = f"{spec.output.rank} is above the full rank {full} of {site.module_path} ({site.out_features}×{site.in_features})"
        raise SpecError(f"{spec.where('output.rank')}: {what}; use 'auto' or at most {full}")


def patch_manifest(job: Emit, rank: int) -> Manifest:
    """The manifest of a LoRA patch: the spec's identity and canonical text, and ``job.record``."""
    spec, record = job.spec, job.record
    return Manifest(
        name=spec.name,
        version=spec.version,
        compiler=erasec_version(),
        family=job.target.family,
        model=spec.model,
        spec_json=spec.canonical_json(),
        pipeline=record.pipeline,
        rank=rank,
        spaces=record.spaces,
        report=record.report,
        base_pin=record.base_pin,
        text_encoder=record.text_encoder,
        shared=record.shared,
        link=record.link,
        extra=record.extra,
        layout=spec.output.format,
        device=record.device,
        # the T5 padding the rows were computed at (None for SD): the opened model's, defaulted or not
        sequence_length=job.model.sequence_length if job.model is not None else None,
        component=recorded_component(job.model),
    )


def recorded_component(model: TextModel | None) -> str | None:
    """The denoiser a patch records it edits (``erasec.base.component``): for a family with several
    (Wan 2.2's ``transformer``/``transformer_2``) the opened model's, else none (the one there is)."""
    if model is None or not FAMILIES[model.family].experts:
        return None
    return model.component


def _write_lora(job: Emit) -> tuple[int, int]:
    """kohya or PEFT LoRA tensors plus the manifest, written atomically."""
    spec = job.spec
    solved = _solved_rank(job)
    if job.rank is not None and job.rank < solved:
        what = f"{job.rank} is below the solved rank {solved}; use 'auto' or a rank of at least {solved}"
        raise SpecError(f"{spec.where('output.rank')}: {what}")
    options = BACKENDS[spec.output.format].options(dtype=spec.output.dtype, rank=job.rank)
    format_metadata: dict[str, str] = {}
    if spec.output.format == "peft":
        tensors, rank, format_metadata = build_peft(job.solution, job.target, job.weights, options)
    else:
        tensors, rank = build_kohya(job.solution, job.target, job.weights, options)
    manifest = patch_manifest(job, rank)
    return write_patch(job.output, tensors, {**manifest.metadata(), **format_metadata}), rank


def _write_merged(job: Emit) -> tuple[int, int]:
    """``output.format: checkpoint``: the base model in its own layout with W0 + ΔW (backends/checkpoint.py)."""
    source = job.model.checkpoint_source()
    return write_checkpoint(job.solution, job.target, job.weights, source, job.output), _solved_rank(job)


def _write_onnx(job: Emit) -> tuple[int, int]:
    """``output.format: onnx``: the model's UNet graph (``output.graph``, or exported now) with the edit."""
    from .onnx_graphs.build import build_onnx

    spec = job.spec
    identity = {"erasec.name": spec.name, "erasec.version": spec.version, "erasec.compiler": erasec_version()}
    metadata = {**identity, "erasec.spec": spec.canonical_json(), "erasec.pipeline": job.record.pipeline}
    size = build_onnx(
        job.solution, job.target, job.weights, job.output, graph=spec.output.graph, mode=spec.output.mode,
        metadata=metadata,
    )
    return size, _solved_rank(job)


BACKENDS: dict[str, Backend] = {
    "kohya": Backend(KohyaOptions, _write_lora, lora=True),
    "peft": Backend(PeftOptions, _write_lora, lora=True),
    "checkpoint": Backend(None, _write_merged, lora=False),
    "onnx": Backend(None, _write_onnx, lora=False),
}


def emit(job: Emit) -> tuple[int, int]:
    """Write ``job`` in its spec's ``output.format``; ``(bytes written, rank)``."""
    return BACKENDS[job.spec.output.format].write(job)
