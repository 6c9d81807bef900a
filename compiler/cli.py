"""The ``erasec`` command line: the only place that prints errors and picks exit codes.

Exit codes: 0 success; 2 anything the user can fix (spec, flags, pipeline, options, model or
output path, a system the numbers refuse); 1 when a checking command answers no. Anything else is
a bug and shows its traceback.
"""

from __future__ import annotations

import json
import os
import sys

import click

from erasec.ir.errors import ErasecError

from .version import erasec_version

EXIT_USER_ERROR = 2


def _quiet_libraries() -> None:
    """transformers and diffusers draw progress bars on stderr while loading; a compiler's output
    should be its own summary. Set through their environment variables, so neither is imported
    here (a spec error exits before torch loads; docs/performance.md, start-up); a library that is
    already imported is told directly."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    for name in ("diffusers.utils.logging", "transformers.utils.logging"):
        module = sys.modules.get(name)
        if module is not None:
            module.disable_progress_bar()
            module.set_verbosity_error()


def _use_all_cores() -> None:
    """torch's intra-op threads = the CPUs this process may use (affinity/cgroup aware), set before
    torch is imported; an explicit OMP_NUM_THREADS wins."""
    from .build_many import cores

    os.environ.setdefault("OMP_NUM_THREADS", str(cores()))
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def _return_freed_memory() -> None:
    """Make glibc hand large freed blocks back to the OS.

    glibc raises its mmap threshold as blocks are freed (up to 32 MiB), after which tens-of-MB
    tensors come from the heap, where fragmentation keeps them resident: an SDXL build that reads
    its weights one at a time then holds about 1 GiB more than it uses (measured; docs/performance.md).
    A fixed 1 MiB threshold (``M_MMAP_THRESHOLD`` = -3) keeps the peak at what is live. No-op off glibc.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "mallopt"):
            libc.mallopt(-3, 1 << 20)
    except OSError:
        pass


def _json_option(function):
    return click.option("--json", "as_json", is_flag=True, help="print the result as JSON")(function)


def _fail(error: ErasecError) -> None:
    click.echo(f"erasec: error: {error}", err=True)
    sys.exit(EXIT_USER_ERROR)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


_FORMAT_NAMES = {"kohya": "kohya LoRA", "peft": "PEFT/diffusers LoRA", "checkpoint": "merged checkpoint", "onnx": "ONNX UNet"}


def _summary(result) -> str:
    seconds = result.seconds
    lines = [
        f"built {result.output} ({_size(result.size_bytes)}, {_FORMAT_NAMES.get(result.format, result.format)}, "
        f"{result.dtype})",
        f"  model    {result.model} ({result.family})",
        f"  method   {result.method}   pipeline {result.pipeline}",
        f"  rows     {result.erase_rows} erase, {result.preserve_rows} preserve, {result.hard_rows} hard"
        f"   condition {result.condition:.3g}",
        f"  rank     {result.rank} in each of {result.layers} layers",
        *(
            [f"  prompts  {result.prompts['encoded']} encoded, {result.prompts['cached']} from the embedding cache"]
            if any((getattr(result, "prompts", None) or {}).values())
            else []
        ),
        *([f"  paths    {'; '.join(result.paths)}"] if result.paths else []),
        "  time     "
        + ", ".join(f"{k} {seconds[k]:.2f}s" for k in ("load", "encode", "solve", "evaluate", "emit", "total")),
        "",
        "  erased concept                       rows   efficacy",
    ]
    scores = result.scores
    for request in scores.requests:
        lines.append(f"  {request.request[:34]:<34} {request.rows:>6}   {request.efficacy:8.4f}")
    if scores.specificity is None:
        lines.append("  (no preserved prompts: specificity not measured)")
    else:
        lines.append(
            f"  preserved prompts ({scores.preserve_rows} rows)          specificity {scores.specificity:.4f}"
        )
        prompt, value = scores.worst_preserve
        lines.append(f"  least preserved: {prompt!r} {value:.4f}")
    lines.append("  (text pathway, all edited K/V layers; 1 = fully erased / fully kept)")
    for diagnostic in result.diagnostics:
        lines.append(f"  {diagnostic}")
    pooled = getattr(result, "pooled_scores", None)
    if pooled is not None:
        lines.append("  pooled path (add_embedding.linear_1):")
        for request in pooled.requests:
            lines.append(f"  {request.request[:34]:<34} {request.rows:>6}   {request.efficacy:8.4f}")
        if pooled.specificity is not None:
            lines.append(f"  preserved prompts ({pooled.preserve_rows} rows)          specificity {pooled.specificity:.4f}")
    return "\n".join(lines)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(erasec_version(), "--version", prog_name="erasec", message="%(prog)s %(version)s")
def cli() -> None:
    """erasec — compile concept erasure for Stable Diffusion into portable weight patches."""


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(), help="the patch file to write (.safetensors)")
@click.option("--model", default=None, help="model folder or builtin:NAME; overrides the spec's model")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
@click.option(
    "--print-ir-after", default=None, help="print the IR to stderr after these passes (comma list, or 'all')"
)
@click.option("--verify-each", is_flag=True, help="verify the IR after every pass")
@click.option(
    "--allow-pickle", is_flag=True, help="open a .ckpt/.pt model (read with torch.load(weights_only=True))"
)
@click.option("--no-cache", is_flag=True, help="encode every prompt; neither read nor write the embedding cache")
def build(spec, output, model, as_json, print_ir_after, verify_each, allow_pickle, no_cache) -> None:
    """Compile SPEC into a LoRA patch."""
    from .build import BuildOptions, build as run_build

    _quiet_libraries()
    _use_all_cores()
    _return_freed_memory()
    wanted = tuple(p.strip() for p in print_ir_after.split(",")) if print_ir_after else ()
    options = BuildOptions(
        model=model, print_ir_after=wanted, verify_each=verify_each, allow_pickle=allow_pickle, cache=not no_cache
    )
    from .build import BUILD_STAGES

    show = sys.stderr.isatty() and not as_json  # progress only on a terminal, never in --json mode
    try:
        with click.progressbar(length=len(BUILD_STAGES), label="erasec build", file=sys.stderr) if show else _NoBar() as bar:
            result = run_build(
                spec, output, options, emit_ir=lambda text: click.echo(text, err=True), progress=lambda stage: bar.update(1)
            )
    except ErasecError as error:
        _fail(error)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2, sort_keys=True))
    else:
        click.echo(_summary(result))


@cli.command("build-many")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="the folder for the patches")
@click.option("--model", default=None, help="model folder or builtin:NAME; overrides every spec's model")
@click.option("-j", "--jobs", default=None, type=int, help="parallel processes (default: one per CPU)")
@click.option("--ray", "ray_address", default=None, help="run on a Ray cluster at ADDRESS ('auto', ray://…, 'local')")
@click.option("--no-cache", is_flag=True, help="do not use the embedding cache")
@_json_option
def build_many(folder, output, model, jobs, ray_address, no_cache, as_json) -> None:
    """Compile every *.yaml spec in FOLDER into OUTPUT/<name>.safetensors, in parallel."""
    from pathlib import Path

    from .build_many import build_many as run_many

    _quiet_libraries()
    _return_freed_memory()
    results = _run_patch_command(
        lambda: run_many(Path(folder), Path(output), jobs=jobs, model=model, cache=not no_cache, ray_address=ray_address),
        loads_models=False,
    )
    lines = [
        f"{'built ' if r.ok else 'FAILED'} {r.output if r.ok else r.spec}  ({r.seconds:.1f}s)"
        + ("" if r.ok else f"\n  erasec: error: {r.error}")
        for r in results
    ]
    failed = sum(not r.ok for r in results)
    lines.append(f"{len(results) - failed} built, {failed} failed")
    _emit({"results": [r.as_dict() for r in results], "failed": failed}, as_json, "\n".join(lines))
    if failed:
        sys.exit(EXIT_USER_ERROR)


@cli.group()
def cache() -> None:
    """The embedding cache: text-encoder rows reused between builds."""


@cache.command("info")
@_json_option
def cache_info(as_json) -> None:
    """Where the cache is, and how many entries and bytes it holds."""
    from .embedding_cache import EmbeddingCache

    info = EmbeddingCache.at().info()
    _emit(info.as_dict(), as_json, f"{info.root}: {info.entries} entries, {_size(info.bytes)}")


@cache.command("clear")
@_json_option
def cache_clear(as_json) -> None:
    """Remove every entry of the embedding cache."""
    from .embedding_cache import EmbeddingCache

    info = EmbeddingCache.at().clear()
    _emit(info.as_dict(), as_json, f"{info.root}: removed {info.entries} entries, {_size(info.bytes)}")


@cli.command()
def methods() -> None:
    """List the methods (presets) a spec's ``method:`` can name."""
    from erasec.passes.presets import PRESETS

    for preset in PRESETS.values():
        scale = "max(0.1, 1/|retain|)" if preset.preserve_scale == "legacy" else preset.preserve_scale
        click.echo(f"{preset.name}\n  {preset.summary}")
        click.echo(f"  pipeline: {preset.pipeline}")
        click.echo(f"  lambda={preset.lam} erase_scale={preset.erase_scale} preserve_scale={scale}")
        click.echo(f"  reference: {preset.reference}\n")


@cli.command()
def passes() -> None:
    """List the passes a pipeline can name, with their options."""
    from erasec.passes.registry import get_pass_class, pass_names

    for name in pass_names():
        cls = get_pass_class(name)
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        click.echo(doc)
        for option, kind, default in cls.option_help():
            click.echo(f"    {option}: {kind} = {default}")


@cli.command("export-single-file")
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="the .safetensors file to write")
def export_single_file(model, output) -> None:
    """Write MODEL (builtin:NAME or a diffusers folder) as one LDM/SGM single-file checkpoint."""
    from pathlib import Path

    from .builtin import builtin_model_path, write_single_file

    _quiet_libraries()
    try:
        folder = builtin_model_path(model.removeprefix("builtin:")) if model.startswith("builtin:") else Path(model)
        if not (folder / "model_index.json").is_file():
            from .errors import ModelError

            raise ModelError(f"{model}: not a diffusers folder (no model_index.json); give builtin:NAME or a folder")
        size = write_single_file(folder, Path(output))
    except ErasecError as error:
        _fail(error)
    click.echo(f"wrote {output} ({_size(size)}, single-file checkpoint of {model})")


# --- patches as artifacts (docs/patch-format.md) --------------------------------------------------

EXIT_CHECK_FAILED = 1


def _emit(data: dict, as_json: bool, text: str | None) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) if as_json else text)


def _run_patch_command(action, *, loads_models: bool = True):
    """Run ``action()``; a user-fixable ``ErasecError`` is one line on stderr and exit 2."""
    if loads_models:  # commands reading only patch files skip importing diffusers/transformers
        _quiet_libraries()
    try:
        return action()
    except ErasecError as error:
        _fail(error)


@cli.command()
@click.argument("patch")
@_json_option
def inspect(patch, as_json) -> None:
    """What PATCH erases and keeps, its base pin, rank, layers, size and version."""
    from erasec.patches.inspect import describe, render
    from erasec.patches.read import read_patch

    facts = _run_patch_command(lambda: describe(read_patch(patch)), loads_models=False)
    _emit(facts, as_json, None if as_json else render(facts))


@cli.command()
@click.argument("patch")
@click.option("--model", required=True, help="model folder, single file or builtin:NAME")
@_json_option
def verify(patch, model, as_json) -> None:
    """Check that PATCH is intact and belongs to MODEL; exit 1 with the reason when not."""
    from .patch_verify import verify_patch

    result = _run_patch_command(lambda: verify_patch(patch, model))
    lines = [f"{'ok  ' if c['ok'] else 'FAIL'} {c['check']:<9} {c['detail']}" for c in result["checks"]]
    lines.append(f"{patch}: {'verified against ' + model if result['ok'] else 'does NOT verify: ' + result['reason']}")
    _emit(result, as_json, "\n".join(lines))
    if not result["ok"]:
        sys.exit(EXIT_CHECK_FAILED)


@cli.command()
@click.argument("patch")
@click.option("--model", default=None, help="model folder, single file or builtin:NAME")
@click.option("--onnx", "onnx_graph", default=None, type=click.Path(dir_okay=False), help="a UNet ONNX graph, instead of --model")
@click.option("--mode", default="bake", type=click.Choice(["bake", "switchable", "adapter"]), show_default=True,
              help="with --onnx: bake ΔW into the weights, add a branch switched by erase_scale, or an .onnx_adapter")
@click.option("-o", "--output", required=True, type=click.Path(), help="the merged model to write (new path)")
@click.option("--scale", default=1.0, type=float, show_default=True, help="W0 + scale·ΔW; -1 undoes a merge")
@click.option("--force", is_flag=True, help="merge even if the model does not match the patch's base pin")
@_json_option
def apply(patch, model, onnx_graph, mode, output, scale, force, as_json) -> None:
    """Merge PATCH into MODEL (a checkpoint in the model's own layout) or into an ONNX UNet graph."""
    from .patch_apply import apply_patch

    if onnx_graph is not None:
        from .onnx_apply import apply_onnx

        result = _run_patch_command(
            lambda: apply_onnx(patch, onnx_graph, output, mode=mode, scale=scale, verify_base=not force)
        )
        text = f"wrote {', '.join(result['files'])} ({mode}, {result['sites']} sites, confirmed by {result['confirmed_by']})"
        _emit(result, as_json, text)
        return
    if model is None:
        _fail(ErasecError("apply: give --model (a merged checkpoint) or --onnx (a patched ONNX graph)"))
    result = _run_patch_command(lambda: apply_patch(patch, model, output, scale=scale, force=force))
    sign = "+" if scale > 0 else "−"
    text = f"wrote {output} ({result['layout']}, {result['tensors_changed']} tensors = W0 {sign} {abs(scale):g}·ΔW)"
    _emit(result, as_json, text)


@cli.command()
@click.argument("patches", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(), help="the composed patch to write")
@click.option("--model", default=None, help="the base model (default: where the first patch was built)")
@click.option("--name", default=None, help="the composed patch's name (default: the first patch's)")
@click.option("--version", "version_", default=None, help="its version (default: the first patch's)")
@_json_option
def compose(patches, output, model, name, version_, as_json) -> None:
    """Link PATCHES of one base into one patch by solving the union of their specs jointly."""
    from .patch_compose import compose_patches

    result = _run_patch_command(
        lambda: compose_patches(list(patches), output, model=model, name=name, version=version_)
    )
    _emit(result.as_dict(), as_json, None if as_json else _summary(result))


@cli.command()
@click.argument("old")
@click.argument("new")
@_json_option
def diff(old, new, as_json) -> None:
    """What changed from patch OLD to patch NEW, and whether NEW's version bump says so."""
    from erasec.patches.diff import diff_patches, render
    from erasec.patches.read import read_patch

    result = _run_patch_command(lambda: diff_patches(read_patch(old), read_patch(new)), loads_models=False)
    _emit(result, as_json, None if as_json else render(result))


@cli.command()
@click.argument("patch")
@click.option("--to", "folder", required=True, type=click.Path(file_okay=False), help="the hub folder")
@click.option("--base-model", default=None, help="the base's hub id for the card's base_model (e.g. org/name)")
@click.option("--license", "license_id", default=None, help="card license (default: as before, else creativeml-openrail-m)")
@_json_option
def publish(patch, folder, base_model, license_id, as_json) -> None:
    """Add PATCH to a hub-ready folder: versioned file, manifest.json and a README.md model card."""
    from pathlib import Path

    from erasec.patches.publish import publish as run_publish
    from erasec.patches.read import read_patch

    result = _run_patch_command(
        lambda: run_publish(read_patch(patch), Path(folder), base_model=base_model, license_id=license_id),
        loads_models=False,
    )
    text = f"{result['status']} {result['folder']}/{result['file']} (latest {result['latest']})"
    _emit(result, as_json, text)


@cli.command()
@click.argument("patch")
@click.option("--model", required=True, help="the other model (same text encoder)")
@click.option("-o", "--output", required=True, type=click.Path(), help="the retargeted patch to write")
@_json_option
def retarget(patch, model, output, as_json) -> None:
    """Re-lower a shared-form PATCH exactly onto another model with the same text encoder."""
    from .patch_compose import retarget_patch

    result = _run_patch_command(lambda: retarget_patch(patch, model, output))
    _emit(result, as_json, f"wrote {output} ({result['layers']} layers, rank {result['rank']}, for {model})")


@cli.command("eval")
@click.argument("patch")
@click.option("--model", required=True, help="model folder, single file or builtin:NAME")
@click.option("--suite", "suites", multiple=True, help="a shipped prompt suite (repeatable; default: artists and coco): "
              "artists, coco, i2p-nudity, imagenette, ring-a-bell-nudity, ring-a-bell-van-gogh")
@click.option("--prompts", default=None, type=click.Path(dir_okay=False), help="your prompts: .txt (one a line) or .csv "
              "(prompt[,counterpart][,concept])")
@click.option("-o", "--output", default=None, type=click.Path(file_okay=False), help="a folder for report.json, report.html "
              "and the image grids")
@click.option("--images", default=0, type=int, help="N images per erased concept, with and without the patch (needs -o)")
@click.option("--steps", default=25, type=int, show_default=True, help="denoising steps for --images")
@click.option("--clip-model", default=None, type=click.Path(file_okay=False), help="a local CLIP folder: adds a CLIP score "
              "to --images")
@click.option("--attack-lambda", default=0.1, type=float, show_default=True, help="λ of the recoverability attack")
@click.option("--interference-max", default=12, type=int, show_default=True, help="re-solve concepts alone up to this many")
@click.option("--max-unrelated", default=200, type=int, show_default=True, help="unrelated prompts per suite (0: all)")
@_json_option
def eval_command(patch, model, suites, prompts, output, images, steps, clip_model, attack_lambda, interference_max,
                 max_unrelated, as_json) -> None:
    """Measure what PATCH erases, keeps and leaves recoverable on MODEL (exact, text pathway)."""
    from pathlib import Path

    from .eval_report import render_table, write_report
    from .evaluation import STAGES, EvalOptions, evaluate_patch

    if images and output is None:
        _fail(ErasecError("eval: --images writes grids; give -o FOLDER"))
    options = _run_patch_command(lambda: EvalOptions(
        suites=tuple(suites) or EvalOptions().suites, prompts=prompts, attack_lambda=attack_lambda,
        interference_max=interference_max, max_unrelated=max_unrelated,
    ), loads_models=False)
    show = sys.stderr.isatty() and not as_json  # progress only on a terminal, never in --json mode
    steps_total = len(STAGES) + (1 if images else 0)

    def action():
        with click.progressbar(length=steps_total, label="erasec eval", file=sys.stderr) if show else _NoBar() as bar:
            result = evaluate_patch(patch, model, options, progress=lambda stage: bar.update(1))
            written = {}
            if output is not None:
                written = write_report(result, Path(output))
            if images:
                from .eval_images import ImageOptions, image_grids
                from .model import open_model

                own = {c.concept: list(c.prompts) for c in result.concepts}
                grids = image_grids(patch, open_model(model).path, own, Path(output) / "images",
                                    ImageOptions(count=images, steps=steps, clip_model=clip_model))
                bar.update(1)
                written["images"] = grids
        return result, written

    result, written = _run_patch_command(action)
    data = {**result.as_dict(), "written": written}
    text = render_table(result)
    if written:
        text += "\n" + "\n".join(f"wrote {v}" for k, v in written.items() if k != "images")
        text += "".join(f"\nwrote {g['file']}" for g in written.get("images", []))
    _emit(data, as_json, text)


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int) -> None:
        pass


# --- ONNX (docs/onnx.md) ----------------------------------------------------------------------------


@cli.command("export-onnx")
@click.option("--model", required=True, help="model folder, single-file .safetensors or builtin:NAME[.safetensors]")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="the folder to write")
@click.option("--exporter", default="dynamo", type=click.Choice(["dynamo", "legacy"]), show_default=True)
@click.option("--opset", default=None, type=int, help="ONNX opset (default 20 for dynamo, 17 for legacy)")
@click.option("--static", is_flag=True, help="fixed batch 2 and the model's sample size (faster to export)")
@click.option("--components", default=None,
              help="comma list of unet, text_encoder, text_encoder_2 (default: all the model has)")
@_json_option
def export_onnx(model, output, exporter, opset, static, components, as_json) -> None:
    """Export MODEL's UNet and text encoder(s) to ONNX graphs that erasec can patch."""
    from pathlib import Path

    from .onnx_export import ExportOptions, export_onnx as run_export

    def action():
        parts = tuple(part.strip() for part in components.split(",") if part.strip()) if components is not None else None
        options = ExportOptions(exporter=exporter, opset=opset, dynamic=not static, components=parts)
        return run_export(model, output, options)

    result = _run_patch_command(action)
    data = {
        "folder": str(result.folder),
        "files": {name: str(path) for name, path in result.files.items()},
        "exporter": result.exporter,
        "opset": result.opset,
        "seconds": {name: round(value, 2) for name, value in result.seconds.items()},
    }
    text = "\n".join(
        f"wrote {path} ({_size(Path(path).stat().st_size)}, {result.exporter} exporter, opset {result.opset}, "
        f"{result.seconds[name]:.1f}s)"
        for name, path in data["files"].items()
    )
    _emit(data, as_json, text)


@cli.command("run-onnx")
@click.argument("graph", type=click.Path())
@click.option("--provider", "providers", multiple=True, help="execution provider(s) to try, in order "
              "(default: TensorrtExecutionProvider, CUDAExecutionProvider, CPUExecutionProvider, where installed)")
@click.option("--erase-scale", default=None, type=float, help="feed the switchable graph's erase_scale (0 = base)")
@click.option("--adapter", default=None, type=click.Path(dir_okay=False), help="an .onnx_adapter to activate")
@click.option("--seed", default=0, type=int, show_default=True, help="seed of the example latents and states")
@click.option("--size", default=None, type=int, help="latent height and width (default: the graph's, else 64)")
@click.option("--repeat", default=1, type=int, show_default=True, help="runs to time (median reported)")
@_json_option
def run_onnx(graph, providers, erase_scale, adapter, seed, size, repeat, as_json) -> None:
    """Run one denoising step of a UNet GRAPH (or export folder) in ONNX Runtime; say which provider ran."""
    from .onnx_runtime import run_onnx as run

    result = _run_patch_command(
        lambda: run(graph, providers=providers or None, erase_scale=erase_scale, adapter=adapter, seed=seed,
                    size=size, repeat=repeat)
    )
    text = (
        f"ran {result['graph']} on {result['provider']} (session providers: {', '.join(result['providers'])})\n"
        f"  out_sample {result['output_shape']}  mean |x| {result['output_mean_abs']:.4g}  "
        f"finite {result['finite']}  median {result['median_ms']:.1f} ms over {result['runs']} run(s)"
    )
    _emit(result, as_json, text)


def main() -> None:
    cli(prog_name="erasec")
