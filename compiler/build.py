"""The driver of ``erasec build``: spec → IR → passes → backend → patch file.

Each step is one call; the driver only sequences them, times them and collects the summary.
Nothing is written until every step has succeeded, and then atomically (``erasec.patches``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from erasec.backends.checkpoint import CheckpointSource, write_checkpoint
from erasec.backends.kohya import KohyaOptions, build_kohya
from erasec.backends.peft import PeftOptions, build_peft
from erasec.ir import EditProgram
from erasec.ir.errors import ErasecError
from erasec.ir.printer import print_program
from erasec.ir.threads import one_blas_thread
from erasec.passes.base import EditPass
from erasec.passes.check_conflicts import CheckConflictsPass
from erasec.passes.filter_preserve import drop_named
from erasec.passes.pipeline import Pipeline
from erasec.passes.presets import PRESETS
from erasec.patches.link import encode_encodings, encode_shared
from erasec.patches.manifest import Manifest, write_patch

from .encodings import RecordingModel
from .errors import BuildError, SpecError
from .efficacy_check import low_efficacy_warning
from .evaluate import Scores, score
from .extras import require_extra
from .lowering import Lowering
from .outputs import check_build_output
from .pins import model_base_pin, model_text_encoder_pin
from .spec import Spec, load_spec
from .version import erasec_version


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildOptions:
    model: str | None = None  # overrides the spec's model
    print_ir_after: tuple[str, ...] = ()  # pass names, or ("all",)
    verify_each: bool = False
    allow_pickle: bool = False  # open .ckpt/.pt models with torch.load(weights_only=True)
    allow_outside_spec: bool = False  # let the spec name files outside its folder (compiler/spec_parts.py)
    cache: bool = True  # reuse text-encoder rows from the embedding cache (compiler/embedding_cache.py)
    cache_dir: Path | None = None  # the erasec cache dir (default: builtin.cache_root)
    force: bool = False  # replace an existing output that is not this spec's patch (compiler/outputs.py)


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
        }


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


def pipeline_text(spec: Spec) -> str:
    """The method's pipeline (or the spec's), with ``compress{dtype=…}`` appended when it has none and
    ``options.on_conflict`` applied to its ``check-conflicts`` (added in front when it has none)."""
    text = spec.options.pipeline or PRESETS[spec.method].pipeline
    names = [part.split("{")[0].strip() for part in text.split(",")]
    if "compress" not in names:
        text = f"{text},compress{{dtype={spec.output.dtype}}}"
    if spec.options.on_conflict is not None:
        passes = Pipeline.parse(text).passes
        if not any(p.name == "check-conflicts" for p in passes):
            passes = (CheckConflictsPass(),) + passes
        passes = tuple(
            dataclasses.replace(p, on_conflict=spec.options.on_conflict) if p.name == "check-conflicts" else p
            for p in passes
        )
        text = str(Pipeline(passes))
    if spec.options.rece is not None:
        text = _with_rece_schedule(spec, text)
    return text


def _with_rece_schedule(spec: Spec, text: str) -> str:
    """``options.rece`` applied to the pipeline's ``rece`` pass: the named recipe's settings, then
    the spec's own rounds, attack_lambda, retain (the pass fills what is left from the recipe)."""
    from erasec.passes.rece import RecePass

    passes = Pipeline.parse(text).passes
    if not any(p.name == "rece" for p in passes):
        raise SpecError(f"{spec.where('options.rece')}: the pipeline has no rece pass; use method: rece")
    schedule = dict(spec.options.rece)
    passes = tuple(
        RecePass(
            recipe=schedule.get("recipe", p.recipe),
            rounds=schedule.get("rounds", -1),
            attack_lambda=schedule.get("attack_lambda", -1.0),
            retain=schedule.get("retain", "recipe"),
            lambda_=p.lambda_,
            preserve_scale=p.preserve_scale,
            max_condition=p.max_condition,
        )
        if p.name == "rece"
        else p
        for p in passes
    )
    return str(Pipeline(passes))


def _check_print_ir_after(names: tuple[str, ...]) -> None:
    """``--print-ir-after`` names registered passes or ``all``; a misspelt one is refused as the
    pipeline parser refuses it (did-you-mean), before any work, instead of printing nothing."""
    from erasec.passes.registry import pass_names, unknown_pass_hint

    for name in names:
        if name != "all" and name not in pass_names():
            raise BuildError(f"--print-ir-after: unknown pass {name!r}{unknown_pass_hint(name, ('all',))}")


def _ir_callback(options: BuildOptions, emit: Callable[[str], None]):
    wanted = set(options.print_ir_after)

    def callback(previous: EditPass | None, program: EditProgram, following: EditPass | None) -> None:
        if previous is None:
            return
        if options.verify_each:
            program.verify()
        if "all" in wanted or previous.name in wanted:
            emit(f"// ----- IR after {previous} ----- //\n{print_program(program)}")

    return callback


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
    model=None,
    extra_metadata: tuple[tuple[str, str], ...] = (),
    clock: float | None = None,
    progress: Callable[[str], None] = lambda stage: None,
    inputs: tuple = (),
) -> BuildResult:
    """Build a checked spec; ``model`` replaces opening ``spec.model`` (compose passes a model that
    replays recorded encodings), ``extra_metadata`` adds ``erasec.*`` keys to the manifest;
    ``progress(stage)`` is called as each of ``BUILD_STAGES`` begins (the CLI's progress bar)."""
    from .model_open import open_model  # torch and transformers load here, not at CLI start-up

    clock = time.perf_counter() if clock is None else clock
    seconds: dict[str, float] = {}
    # the output-path policy, before any work; ``inputs``: the spec file, the patches composed
    output = check_build_output(spec, output, inputs=inputs, force=options.force, cache_dir=options.cache_dir)
    if spec.output.format == "onnx":
        require_extra("onnx", spec.where("output.format"))
    preset = PRESETS[spec.method]
    pipeline = Pipeline.parse(pipeline_text(spec), _ir_callback(options, emit_ir))

    progress("load")
    if model is None:
        from .embedding_cache import CachingModel, EmbeddingCache

        try:
            model = open_model(
                spec.model, allow_pickle=options.allow_pickle, pooled=spec.options.pooled, family=spec.family
            )
        except ErasecError as error:  # the spec's line that named the model; --model needs none
            if options.model is not None:
                raise
            raise type(error)(f"{spec.where('model')}: {error}") from None
        model = CachingModel(model, EmbeddingCache.at(options.cache_dir) if options.cache else None)
    if spec.output.link:
        model = RecordingModel(model)
    base_weights = model.kv_weights()
    check_rank(spec, model.target)
    seconds["load"] = time.perf_counter() - clock

    progress("encode")
    mark = time.perf_counter()
    lowered = Lowering.for_pipeline(model, pipeline).lower(spec, preset)
    release = getattr(model, "release_text_encoders", None)
    if release is not None:  # every row is encoded: free SDXL's 1.6 GB of encoders (docs/performance.md)
        release()
    seconds["encode"] = time.perf_counter() - mark

    progress("solve")
    mark = time.perf_counter()
    try:
        program = pipeline.apply(lowered)
    except ErasecError as error:  # a system this spec's rows make: name the spec (the pass is named)
        raise type(error)(f"{spec.source}: {error}") from None
    seconds["solve"] = time.perf_counter() - mark

    progress("evaluate")
    mark = time.perf_counter()
    # the text-pathway K/V scores, and the pooled path's on their own (one space each), on what the
    # patch was solved for: without the preserve prompts filter-preserve dropped (issue 12 item 6)
    scored, dropped = drop_named(lowered) if "filter-preserve" in pipeline.names() else (lowered, {})
    scores = score(replace(scored, spaces=scored.spaces[:1]), program.solution, base_weights)
    scores = replace(scores, dropped_preserve=tuple(dropped))
    pooled_scores = None
    if len(scored.spaces) > 1:
        pooled_scores = score(replace(scored, spaces=scored.spaces[1:]), program.solution, base_weights)
    seconds["evaluate"] = time.perf_counter() - mark

    progress("emit")
    mark = time.perf_counter()
    if spec.output.format == "checkpoint":
        size = _write_merged(program, model, base_weights, output)
        rank = max(s.rank for s in program.solution.spaces)
    elif spec.output.format == "onnx":
        from .onnx_apply import build_onnx

        identity = {"erasec.name": spec.name, "erasec.version": spec.version, "erasec.compiler": erasec_version()}
        metadata = {**identity, "erasec.spec": spec.canonical_json(), "erasec.pipeline": str(pipeline)}
        size = build_onnx(program, base_weights, output, graph=spec.output.graph, mode=spec.output.mode, metadata=metadata)
        rank = max(s.rank for s in program.solution.spaces)
    else:
        size, rank = _write_lora(spec, pipeline, program, model, scores, base_weights, output, extra_metadata)
    seconds["emit"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - clock

    spaces = program.spaces
    return BuildResult(
        output=output,
        name=spec.name,
        version=spec.version,
        family=program.target.family,
        model=spec.model,
        method=spec.method,
        pipeline=str(pipeline),
        erase_rows=sum(s.erase.total for s in spaces),
        preserve_rows=sum(s.preserve.total for s in spaces),
        hard_rows=sum(s.hard.count for s in spaces),
        rank=rank,
        layers=len(program.target.sites),
        dtype=spec.output.dtype,
        size_bytes=size,
        seconds=seconds,
        scores=scores,
        pooled_scores=pooled_scores,
        paths=edited_paths(program),
        condition=max(s.report.condition for s in program.solution.spaces),
        format=spec.output.format,
        diagnostics=tuple(f"{d.severity} [{d.origin}] {d.message}" for d in program.diagnostics)
        + low_efficacy_warning(spec, scores),  # a concept erased far less than its method normally does
        prompts={"cached": getattr(model, "hits", 0), "encoded": len(getattr(model, "encoded", ()))},
    )


def edited_paths(program: EditProgram) -> tuple[str, ...]:
    """What the build edits, in words; for SDXL it says whether the pooled path is edited."""
    paths = []
    for solved in program.solution.spaces:
        space = program.target.space(solved.space)
        for role in ("k", "v", "pooled"):
            sites = [s for s in space.sites if s.role == role and solved.edits(role)]
            if role == "pooled" and sites:
                paths.extend(f"pooled {s.module_path}[:, :{s.in_features}]" for s in sites)
            elif sites:
                paths.append(f"cross-attention to_{role} ({len(sites)} layers)")
    if program.target.family == "sdxl" and not any(p.startswith("pooled") for p in paths):
        paths.append("not the pooled path (options.pooled: true edits add_embedding.linear_1)")
    return tuple(paths)


def _write_merged(program: EditProgram, model, base_weights, output: Path) -> int:
    """``output.format: checkpoint``: the base model in its own layout with W0 + ΔW (backends/checkpoint.py)."""
    source = CheckpointSource(
        layout=model.layout, root=model.path, weights_file=model.unet_weights_file, weight_name=model.weight_name
    )
    return write_checkpoint(program.solution, program.target, base_weights, source, output)


def _write_lora(spec: Spec, pipeline, program: EditProgram, model, scores, base_weights, output, extra_metadata):
    """kohya or PEFT LoRA tensors plus the manifest, written atomically; (size, rank)."""
    rank_option = None if spec.output.rank == "auto" else int(spec.output.rank)
    solved = max(s.rank for s in program.solution.spaces)
    if rank_option is not None and rank_option < solved:
        what = f"{rank_option} is below the solved rank {solved}; use 'auto' or a rank of at least {solved}"
        raise SpecError(f"{spec.where('output.rank')}: {what}")
    format_metadata: dict[str, str] = {}
    if spec.output.format == "peft":
        tensors, rank, format_metadata = build_peft(
            program.solution, program.target, base_weights, PeftOptions(dtype=spec.output.dtype, rank=rank_option)
        )
    else:
        tensors, rank = build_kohya(
            program.solution, program.target, base_weights, KohyaOptions(dtype=spec.output.dtype, rank=rank_option)
        )
    touched = [  # the sites the LoRA edits (SPEED: to_v only), as erasec.spaces lists them
        site.module_path for s in program.solution.spaces for site in program.target.space(s.space).sites if s.edits(site.role)
    ]
    manifest = Manifest(
        name=spec.name,
        version=spec.version,
        compiler=erasec_version(),
        family=program.target.family,
        model=spec.model,
        spec_json=spec.canonical_json(),
        pipeline=str(pipeline),
        rank=rank,
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
        report=scores.as_dict(),
        base_pin=model.base_pin(touched) if hasattr(model, "base_pin") else model_base_pin(model, touched),
        text_encoder=model.text_encoder_pin() if hasattr(model, "text_encoder_pin") else model_text_encoder_pin(model),
        shared=encode_shared(program.solution),
        link=encode_encodings(model.encodings) if spec.output.link else None,
        extra=extra_metadata,
        layout=spec.output.format,
    )
    return write_patch(output, tensors, {**manifest.metadata(), **format_metadata}), rank
