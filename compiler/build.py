"""The driver of ``erasec build``: spec → IR → passes → backend → patch file.

Each step is one call; the driver only sequences them, times them and collects the summary.
Nothing is written until every step has succeeded, and then atomically (``erasec.patches``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from erasec.ir import EditProgram
from erasec.ir.errors import ErasecError
from erasec.ir.threads import one_blas_thread
from erasec.passes.filter_preserve import drop_named
from erasec.passes.pipeline import Pipeline, ir_callback
from erasec.compiler.frontend.presets import PRESETS
from erasec.patches.link import encode_encodings, encode_shared

from .emit import BACKENDS, Emit, PatchRecord, check_rank, emit, recorded_component
from .errors import BuildError, SpecError
from .eval.efficacy_check import low_efficacy_warning
from .eval.metrics import Scores, score
from .extras import require_extra
from .frontend.methods import pipeline_text
from .frontend.reader import load_spec
from .frontend.spec import Spec
from .lowering.lower import Lowering
from .models.families import FAMILIES
from .models.protocol import TextModel
from .models.recording import RecordingModel
from .outputs import check_build_output

if TYPE_CHECKING:
    from .models.embedding_cache import CachingModel


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildOptions:
    model: str | None = None  # overrides the spec's model
    print_ir_after: tuple[str, ...] = ()  # pass names, or ("all",)
    verify_each: bool = False
    print_ir_changed: bool = False  # print the IR after each pass that changed it
    allow_pickle: bool = False  # open .ckpt/.pt models with torch.load(weights_only=True)
    allow_outside_spec: bool = False  # let the spec name files outside its folder (compiler/frontend/parts.py)
    cache: bool = True  # reuse text-encoder rows from the embedding cache (compiler/models/embedding_cache.py)
    cache_dir: Path | None = None  # the erasec cache dir (default: models/cache_dir.cache_root)
    force: bool = False  # replace an existing output that is not this spec's patch (compiler/outputs.py)
    device: str = "auto"  # where the text encoders run: auto | cpu | cuda (compiler/models/placement.py)
    encoder_dtype: str = "fp32"  # fp32 | bf16 (the device path)
    encode_batch: int | None = None  # prompts per encoder pass (None: 1 on the CPU, 32 on CUDA)
    # --text-encoder / --tokenizer SLOT=PATH: a DiT's encoders given apart, over the spec's (docs/models.md)
    text_encoders: tuple[tuple[str, str], ...] = ()
    tokenizers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildResult:
    output: Path
    name: str
    version: str
    family: str
    model: str
    method: str
    pipeline: str
    erase_rows: int
    preserve_rows: int
    hard_rows: int
    rank: int
    layers: int
    dtype: str
    size_bytes: int
    seconds: dict[str, float] = field(default_factory=dict)
    scores: Scores | None = None
    pooled_scores: Scores | None = None  # SDXL options.pooled: the same measures on add_embedding.linear_1
    paths: tuple[str, ...] = ()  # the edited paths, in words (the build summary's "paths" line)
    condition: float = 0.0
    diagnostics: tuple[str, ...] = ()  # what passes reported: "<severity> [<pass>] <message>"
    format: str = "kohya"  # output.format: kohya | peft | checkpoint | onnx
    prompts: dict[str, int] = field(default_factory=dict)  # {"cached": n, "encoded": m} distinct prompts
    device: dict | None = None  # where the encoders ran (erasec.device; None: no model opened, as compose)
    drift: dict[str, dict] = field(default_factory=dict)  # options.max_drift: key space -> where its budget landed
    # Wan 2.2: the denoiser this patch edits (erasec.base.component; None: a family with one), and the
    # results of the further experts' patches the same build wrote (transformer_2's, beside -o)
    component: str | None = None
    experts: tuple[BuildResult, ...] = ()

    def as_dict(self) -> dict:
        return {
            "output": str(self.output),
            "name": self.name,
            "version": self.version,
            "family": self.family,
            "model": self.model,
            "method": self.method,
            "pipeline": self.pipeline,
            "rows": {"erase": self.erase_rows, "preserve": self.preserve_rows, "hard": self.hard_rows},
            "rank": self.rank,
            "layers": self.layers,
            "dtype": self.dtype,
            "format": self.format,
            "size_bytes": self.size_bytes,
            "condition": float(f"{self.condition:.3g}"),
            "diagnostics": list(self.diagnostics),
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "scores": None if self.scores is None else self.scores.as_dict(),
            "pooled_scores": None if self.pooled_scores is None else self.pooled_scores.as_dict(),
            "paths": list(self.paths),
            "prompts": dict(self.prompts),
            "device": self.device,
            **({"drift": dict(self.drift)} if self.drift else {}),  # absent without options.max_drift
            **({"component": self.component} if self.component is not None else {}),  # Wan only
            **({"experts": [expert.as_dict() for expert in self.experts]} if self.experts else {}),
        }


def _check_print_ir_after(names: tuple[str, ...]) -> None:
    """``--print-ir-after`` names registered passes or ``all``; a misspelt one is refused as the
    pipeline parser refuses it (did-you-mean), before any work, instead of printing nothing."""
    from erasec.passes.registry import pass_names, unknown_pass_hint

    for name in names:
        if name != "all" and name not in pass_names():
            raise BuildError(f"--print-ir-after: unknown pass {name!r}{unknown_pass_hint(name, ('all',))}")


def _ir_callback(options: BuildOptions, emit: Callable[[str], None]):
    return ir_callback(
        emit, print_after=options.print_ir_after, print_changed=options.print_ir_changed, verify_each=options.verify_each
    )


BUILD_STAGES = ("load", "encode", "solve", "evaluate", "emit")


def build(
    spec_path: str | os.PathLike,
    output: str | os.PathLike,
    options: BuildOptions = BuildOptions(),
    *,
    emit_ir: Callable[[str], None] = lambda text: None,
    progress: Callable[[str], None] = lambda stage: None,
) -> BuildResult:
    clock = time.perf_counter()
    _check_print_ir_after(options.print_ir_after)
    spec = load_spec(spec_path, methods=tuple(PRESETS), model=options.model, allow_outside=options.allow_outside_spec)
    if options.text_encoders or options.tokenizers:
        spec = spec.with_text_inputs(dict(options.text_encoders), dict(options.tokenizers))
    if not spec.model:
        raise SpecError(f"{spec_path}: model: no model given; set 'model:' in the spec or pass --model")
    return build_spec(spec, output, options, emit_ir=emit_ir, clock=clock, progress=progress, inputs=(spec_path,))


@one_blas_thread()  # the same bytes at any thread count (issue 16 item 9)
def build_spec(
    spec: Spec,
    output: str | os.PathLike,
    options: BuildOptions = BuildOptions(),
    *,
    emit_ir: Callable[[str], None] = lambda text: None,
    model: TextModel | None = None,
    extra_metadata: tuple[tuple[str, str], ...] = (),
    clock: float | None = None,
    progress: Callable[[str], None] = lambda stage: None,
    inputs: tuple = (),
) -> BuildResult:
    """Build a checked spec; ``model`` replaces opening ``spec.model`` (compose passes a model that
    replays recorded encodings), ``extra_metadata`` adds ``erasec.*`` keys to the manifest;
    ``progress(stage)`` is called as each of ``BUILD_STAGES`` begins (the CLI's progress bar)."""
    from .models.dit_inputs import TextInputs
    from .models.open import open_model  # torch and transformers load here, not at CLI start-up

    clock = time.perf_counter() if clock is None else clock
    seconds: dict[str, float] = {}
    # the output-path policy, before any work; ``inputs``: the spec file, the patches composed
    output = check_build_output(spec, output, inputs=inputs, force=options.force, cache_dir=options.cache_dir)
    if spec.output.format == "onnx":
        require_extra("onnx", spec.where("output.format"))
    preset = PRESETS[spec.method]
    pipeline = Pipeline.parse(pipeline_text(spec), _ir_callback(options, emit_ir))

    progress("load")
    experts: list[_Expert] = []  # the patch of transformer/ first, then each further expert's (Wan 2.2)
    placement = None  # where its encoders run (erasec.device)
    if model is None:
        from .models.embedding_cache import CachingModel, EmbeddingCache
        from .models.placement import EncodeOptions, placed

        placement = EncodeOptions(device=options.device, dtype=options.encoder_dtype, batch=options.encode_batch).resolve()
        cache = EmbeddingCache.at(options.cache_dir) if options.cache else None
        opened = _open(spec, options, open_model, TextInputs)
        spec = format_for_family(spec, opened)
        outputs = [(opened, output)]
        for component, path in expert_outputs(spec, opened, output, inputs=inputs, options=options):
            outputs.append((_open(spec, options, open_model, TextInputs, component=component), path))
        for each, path in outputs:
            caching = CachingModel(placed(each, placement), cache)
            experts.append(_Expert(model=caching, caching=caching, output=path))
        if len(outputs) == 1:  # a merged checkpoint or ONNX graph of a Wan 2.2 folder: transformer/ alone
            experts[0].unwritten = opened.other_experts
    else:
        spec = format_for_family(spec, model)
        experts.append(_Expert(model=model, caching=None, output=output))
    for expert in experts:
        if spec.output.link:  # what output.link records
            expert.model = expert.recording = RecordingModel(expert.model)
        expert.base_weights = expert.model.kv_weights()
        check_rank(spec, expert.model.target)
    seconds["load"] = time.perf_counter() - clock

    progress("encode")
    mark = time.perf_counter()
    for expert in experts:
        expert.lowered = Lowering.for_pipeline(expert.model, pipeline).lower(spec, preset)
        expert.model.release_text_encoders()  # every row is encoded: free SDXL's 1.6 GB of encoders (docs/performance.md)
    seconds["encode"] = time.perf_counter() - mark

    progress("solve")
    mark = time.perf_counter()
    for expert in experts:
        try:
            expert.program = pipeline.apply(expert.lowered)
        except ErasecError as error:  # a system this spec's rows make: name the spec (the pass is named)
            raise type(error)(f"{spec.source}{_expert_words(expert, experts)}: {error}") from None
    seconds["solve"] = time.perf_counter() - mark

    progress("evaluate")
    mark = time.perf_counter()
    for expert in experts:
        # the text-pathway K/V scores, and the pooled path's on their own (one space each), on what the
        # patch was solved for: without the preserve prompts filter-preserve dropped (issue 12 item 6)
        lowered, program = expert.lowered, expert.program
        scored, dropped = drop_named(lowered) if "filter-preserve" in pipeline.names() else (lowered, {})
        scores = score(replace(scored, spaces=scored.spaces[:1]), program.solution, expert.base_weights)
        expert.scores = replace(scores, dropped_preserve=tuple(dropped))
        if len(scored.spaces) > 1:
            expert.pooled_scores = score(replace(scored, spaces=scored.spaces[1:]), program.solution, expert.base_weights)
    seconds["evaluate"] = time.perf_counter() - mark

    progress("emit")
    mark = time.perf_counter()
    jobs = []
    for expert in experts:  # every expert solved before any file is written
        encodings = expert.recording.encodings if expert.recording is not None else None
        job = _emit_job(spec, pipeline, expert.program, expert.model, encodings, expert.scores, expert.base_weights,
                        expert.output, extra_metadata)
        if placement is not None and job.record is not None:
            job = replace(job, record=replace(job.record, device=placement.as_dict()))
        jobs.append(job)
    for expert, job in zip(experts, jobs):
        expert.size, expert.rank = emit(job)
    seconds["emit"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - clock

    first, *others = (_result(spec, pipeline, expert, seconds, placement) for expert in experts)
    return replace(first, experts=tuple(others)) if others else first


@dataclass(slots=True)
class _Expert:
    """One patch a build writes: the model's ``transformer/`` (or UNet), or a further expert of a Wan 2.2
    folder (``transformer_2``), each with its own rows, solve, scores and file; filled stage by stage."""

    model: TextModel
    caching: CachingModel | None  # the cache wrapper of a model the build opened: its counts go to the summary
    output: Path
    unwritten: tuple[str, ...] = ()  # the folder's further experts this build's output leaves unedited
    recording: RecordingModel | None = None
    base_weights: Mapping | None = None
    lowered: EditProgram | None = None
    program: EditProgram | None = None
    scores: Scores | None = None
    pooled_scores: Scores | None = None
    size: int = 0
    rank: int = 0


def _open(spec: Spec, options: BuildOptions, open_model, text_inputs, component: str | None = None) -> TextModel:
    try:
        return open_model(
            spec.model, allow_pickle=options.allow_pickle, pooled=spec.options.pooled, family=spec.family,
            sequence_length=spec.options.sequence_length,
            text_inputs=text_inputs(spec.text_encoders, spec.tokenizers), component=component,
        )
    except ErasecError as error:  # the spec's line that named the model; --model needs none
        if options.model is not None:
            raise
        raise type(error)(f"{spec.where('model')}: {error}") from None


def expert_output(output: str | os.PathLike, component: str) -> Path:
    """Where a further expert's patch goes: ``-o``'s name with ``.<component>`` before its suffix
    (``wan.safetensors`` → ``wan.transformer_2.safetensors``), in the same folder."""
    path = Path(output)
    return path.with_name(f"{path.stem}.{component}{path.suffix}")


def expert_outputs(spec: Spec, model: TextModel, output: Path, *, inputs: tuple, options: BuildOptions):
    """(component, path) of each further expert of the opened folder (Wan 2.2's ``transformer_2``) whose
    patch this build also writes, each path checked by the output policy before any work; none for a
    merged checkpoint or ONNX output (one artifact: the model's ``transformer/``, the summary says so)."""
    others = model.other_experts
    if not others or not BACKENDS[spec.output.format].lora:
        return ()
    pairs = tuple((component, expert_output(output, component)) for component in others)
    for _, path in pairs:
        check_build_output(spec, path, inputs=(*inputs, output), force=options.force, cache_dir=options.cache_dir)
    return pairs


def _expert_words(expert: _Expert, experts: list[_Expert]) -> str:
    """`` (transformer_2)`` in a message about one expert of several; nothing for a single model."""
    return f" ({expert.model.component})" if len(experts) > 1 else ""


def _result(spec: Spec, pipeline, expert: _Expert, seconds: dict, placement) -> BuildResult:
    program, scores, caching = expert.program, expert.scores, expert.caching
    spaces = program.spaces
    return BuildResult(
        output=expert.output,
        name=spec.name,
        version=spec.version,
        family=program.target.family,
        model=spec.model,
        method=spec.method,
        pipeline=str(pipeline),
        erase_rows=sum(s.erase.total for s in spaces),
        preserve_rows=sum(s.preserve.total for s in spaces),
        hard_rows=sum(s.hard.count for s in spaces),
        rank=expert.rank,
        layers=len(program.target.sites),
        dtype=spec.output.dtype,
        size_bytes=expert.size,
        seconds=seconds,
        scores=scores,
        pooled_scores=expert.pooled_scores,
        paths=edited_paths(program),
        condition=max(s.report.condition for s in program.solution.spaces),
        format=spec.output.format,
        diagnostics=tuple(f"{d.severity} [{d.origin}] {d.message}" for d in program.diagnostics)
        + low_efficacy_warning(spec, scores)  # a concept erased far less than its method normally does
        + format_warning(spec, program)
        + expert_warning(spec, expert),
        prompts={"cached": caching.hits if caching else 0, "encoded": len(caching.encoded) if caching else 0},
        device=placement.as_dict() if placement is not None else None,
        drift=drift_report(program),
        component=recorded_component(expert.model),
    )


def expert_warning(spec: Spec, expert: _Expert) -> tuple[str, ...]:
    """A merged checkpoint or ONNX output of a Wan 2.2 folder edits ``transformer/`` alone: say that the
    low-noise expert keeps the concept and how to edit it too (docs/models.md, "Wan 2.2's two experts")."""
    if not expert.unwritten:
        return ()
    warning = (
        f"warning [experts] output.format {spec.output.format} edits {expert.model.component}/ only; "
        f"{', '.join(expert.unwritten)} still renders the concept: build with output.format peft or kohya (a "
        "patch per expert), then erasec apply each (docs/models.md)"
    )
    return (warning,)


def drift_report(program: EditProgram) -> dict[str, dict]:
    """Per key space, where ``drift-budget`` put the erase weights (empty without a budget): the build
    summary's and ``erasec.report.drift``'s record (docs/patch-format.md)."""
    return {space.space: space.drift.as_dict() for space in program.spaces if space.drift is not None}


def format_for_family(spec: Spec, model: TextModel) -> Spec:
    """A spec that leaves ``output.format`` to erasec gets the layout its model's runtimes load: kohya
    for SD (every SD runtime reads it), PEFT for a diffusion transformer — diffusers drops kohya names
    on a DiT without an error, and ComfyUI loads PEFT ones for FLUX, Chroma and SD3 (docs/models.md,
    "DiT patches: which file loads where")."""
    if spec.output.format_chosen or not FAMILIES[model.family].transformer:
        return spec
    return replace(spec, output=replace(spec.output, format="peft"))


def format_warning(spec: Spec, program: EditProgram) -> tuple[str, ...]:
    """A DiT patch in kohya's names loads in kohya's tools and ComfyUI, but diffusers drops those names
    without an error (docs/models.md, "DiT patches: which file loads where"): say so at build time."""
    family = FAMILIES[program.target.family]
    if family.transformer and family.text_projection is not None and spec.output.format == "peft":
        return (  # Wan: ComfyUI maps no transformer.* names (docs/models.md)
            f"note [format] this PEFT file loads in diffusers' {family.pipeline}; ComfyUI applies no PEFT names "
            "to Wan: for ComfyUI build with output.format: kohya (docs/models.md)",
        )
    if not family.transformer or spec.output.format != "kohya":
        return ()
    return (
        f"warning [format] diffusers' {family.pipeline} does not apply kohya names (it drops them without an "
        "error); for diffusers build with output.format: peft (docs/models.md)",
    )


def edited_paths(program: EditProgram) -> tuple[str, ...]:
    """What the build edits, in words; for a family with a pooled path (SDXL) it says whether that path is edited."""
    paths = []
    for solved in program.solution.spaces:
        space = program.target.space(solved.space)
        for role in ("k", "v", "pooled", "context"):
            sites = [s for s in space.sites if s.role == role and solved.edits(role)]
            if role == "pooled" and sites:
                paths.extend(f"pooled {s.module_path}[:, :{s.in_features}]" for s in sites)
            elif role == "context" and sites:
                paths.extend(f"text entry {s.module_path} (weight only, bias kept)" for s in sites)
            elif sites:
                paths.append(f"cross-attention to_{role} ({len(sites)} layers)")
    family = FAMILIES[program.target.family]
    if family.pooled and not any(p.startswith("pooled") for p in paths):
        module = "time_text_embed.text_embedder.linear_1" if family.transformer else "add_embedding.linear_1"
        paths.append(f"not the pooled path (options.pooled: true edits {module})")
    return tuple(paths)


def _emit_job(
    spec: Spec, pipeline, program: EditProgram, model: TextModel, encodings, scores, base_weights, output, extra_metadata
) -> Emit:
    """What ``emit`` writes for this build; a LoRA format's manifest records the edited layers, the
    scores, the pins of the touched tensors and text encoder, and the shared and linked forms
    (``encodings``: what a ``RecordingModel`` recorded, for ``output.link``)."""
    touched = [  # the sites the LoRA edits (SPEED: to_v only), as erasec.spaces lists them
        site.module_path for s in program.solution.spaces for site in program.target.space(s.space).sites if s.edits(site.role)
    ]
    lora = BACKENDS[spec.output.format].lora
    record = PatchRecord(
        pipeline=str(pipeline),
        spaces=tuple(
            {
                "space": s.space,
                "form": s.form,
                "rank": s.rank,
                "layers": sorted(site.module_path for site in program.target.space(s.space).sites if s.edits(site.role)),
                "condition": float(f"{s.report.condition:.3g}"),
            }
            for s in program.solution.spaces
        ),
        report={**scores.as_dict(), **({"drift": drift_report(program)} if drift_report(program) else {})},
        base_pin=model.base_pin(touched) if lora else {},
        text_encoder=model.text_encoder_pin() if lora else None,
        shared=encode_shared(program.solution) if lora else None,
        link=encode_encodings(encodings) if lora and spec.output.link else None,
        extra=extra_metadata,
    )
    return Emit(
        spec=spec, solution=program.solution, target=program.target, weights=base_weights, output=output,
        rank=None if spec.output.rank == "auto" else int(spec.output.rank), record=record, model=model,
    )
