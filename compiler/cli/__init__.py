"""The ``erasec`` command line: the ``cli`` group, ``main`` and the build-side commands (build,
build-many, cache, methods, passes).

The commands on patch files live in ``patch.py`` and those writing or running whole models in
``onnx.py``, registered on ``cli`` below; ``common.py`` holds the exit-code table and the
helpers they share. These modules are the only ones that print errors and pick exit codes. Heavy
imports stay inside command bodies: ``erasec --version`` and a spec error never import torch.
"""

from __future__ import annotations

import json
import sys

import click

from erasec.ir.errors import ErasecError

from . import onnx as cli_onnx
from . import patch as cli_patch
from .common import (
    EXIT_USER_ERROR,
    NoBar,
    build_summary,
    emit,
    encoder_options,
    fail,
    human_size,
    json_option,
    quiet_libraries,
    return_freed_memory,
    run_command,
    text_input_options,
    use_all_cores,
)
from ..version import erasec_version


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(erasec_version(), "--version", prog_name="erasec", message="%(prog)s %(version)s")
def cli() -> None:
    """erasec — compile concept erasure for Stable Diffusion into portable weight patches."""


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(), help="the patch file to write (.safetensors)")
@click.option("--model", default=None, help="a diffusers folder, a single-file .safetensors checkpoint, "
              "builtin:NAME[.safetensors] (erasec models lists them) or a hub id ORG/NAME[@REVISION] already in the "
              "local Hugging Face cache; overrides the spec's model")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
@click.option(
    "--print-ir-after", default=None, help="print the IR to stderr after these passes (comma list, or 'all')"
)
@click.option("--print-ir-changed", is_flag=True, help="print the IR to stderr after each pass that changed it")
@click.option("--verify-each", is_flag=True, help="verify the IR after every pass")
@click.option(
    "--allow-pickle", is_flag=True, help="open a .ckpt/.pt model (read with torch.load(weights_only=True))"
)
@click.option("--no-cache", is_flag=True, help="encode every prompt; neither read nor write the embedding cache")
@click.option("--force", is_flag=True, help="replace an existing -o file that is not an erasec patch of the spec's name "
              "(never an input, a link or a device)")
@click.option("--allow-outside-spec", is_flag=True, help="let the spec name files outside its folder (trusted specs only)")
@text_input_options
@encoder_options
def build(spec, output, model, as_json, print_ir_after, print_ir_changed, verify_each, allow_pickle, no_cache, force,
          allow_outside_spec, text_encoders, tokenizers, device, encoder_dtype, encode_batch) -> None:
    """Compile SPEC into a LoRA patch.

    -o is checked before any work: a rebuild replaces an erasec patch of the same name; any other
    existing file needs --force; an input, a folder, a symbolic link or a device is refused. A Wan 2.2
    folder's second expert gets its own patch beside -o, named with .transformer_2 before the suffix
    (checked the same way).
    """
    from ..build import BuildOptions, build as run_build

    quiet_libraries()
    use_all_cores()
    return_freed_memory()
    wanted = tuple(p.strip() for p in print_ir_after.split(",")) if print_ir_after else ()
    options = BuildOptions(
        model=model, print_ir_after=wanted, print_ir_changed=print_ir_changed, verify_each=verify_each,
        allow_pickle=allow_pickle, cache=not no_cache, force=force, allow_outside_spec=allow_outside_spec,
        text_encoders=text_encoders, tokenizers=tokenizers,
        device=device, encoder_dtype=encoder_dtype, encode_batch=encode_batch,
    )
    from ..build import BUILD_STAGES

    show = sys.stderr.isatty() and not as_json  # progress only on a terminal, never in --json mode
    try:
        with click.progressbar(length=len(BUILD_STAGES), label="erasec build", file=sys.stderr) if show else NoBar() as bar:
            result = run_build(
                spec, output, options, emit_ir=lambda text: click.echo(text, err=True), progress=lambda stage: bar.update(1)
            )
    except ErasecError as error:
        fail(error)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2, sort_keys=True))
    else:
        click.echo(build_summary(result))


@cli.command("build-many")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="the folder for the patches")
@click.option("--model", default=None, help="a diffusers folder, a single-file .safetensors checkpoint, "
              "builtin:NAME[.safetensors] or a cached hub id ORG/NAME[@REVISION]; overrides every spec's model")
@click.option("-j", "--jobs", default=None, type=int, help="parallel processes (default: one per CPU)")
@click.option("--ray", "ray_address", default=None, help="run on a Ray cluster at ADDRESS ('auto', ray://…, 'local')")
@click.option("--no-cache", is_flag=True, help="do not use the embedding cache")
@click.option("--force", is_flag=True, help="replace existing OUTPUT/<name>.safetensors files that are not erasec "
              "patches of their spec's name")
@click.option("--allow-outside-spec", is_flag=True, help="let the specs name files outside their folder (trusted specs only)")
@encoder_options
@json_option
def build_many(folder, output, model, jobs, ray_address, no_cache, force, allow_outside_spec, device, encoder_dtype,
               encode_batch, as_json) -> None:
    """Compile every *.yaml spec in FOLDER into OUTPUT/<name>.safetensors, in parallel.

    Each output follows build's -o rules; two specs with one name (a.yaml and a.yml) are refused
    before any build.
    """
    from pathlib import Path

    from ..build_many import build_many as run_many

    quiet_libraries()
    return_freed_memory()
    results = run_command(
        lambda: run_many(
            Path(folder), Path(output), jobs=jobs, model=model, cache=not no_cache, ray_address=ray_address, force=force,
            allow_outside_spec=allow_outside_spec, encode=(device, encoder_dtype, encode_batch),
        ),
        loads_models=False,
    )
    lines = [
        f"{'built ' if r.ok else 'FAILED'} {r.output if r.ok else r.spec}  ({r.seconds:.1f}s)"
        + "".join(f"\n  and {e['output']} ({e['component']}/)" for e in ((r.summary or {}).get("experts") or ()))
        + ("" if r.ok else f"\n  erasec: error: {r.error}")
        for r in results
    ]
    failed = sum(not r.ok for r in results)
    lines.append(f"{len(results) - failed} built, {failed} failed")
    emit({"results": [r.as_dict() for r in results], "failed": failed}, as_json, "\n".join(lines))
    if failed:
        sys.exit(EXIT_USER_ERROR)


@cli.group()
def cache() -> None:
    """The embedding cache: text-encoder rows reused between builds."""


@cache.command("info")
@json_option
def cache_info(as_json) -> None:
    """Where the cache is, and how many entries and bytes it holds; and the built-in models' space."""
    from ..models.builtin.listing import builtin_cache_info
    from ..models.embedding_cache import EmbeddingCache

    info = EmbeddingCache.at().info()
    models = builtin_cache_info()
    text = (
        f"{info.root}: {info.entries} entries, {human_size(info.bytes)}\n"
        f"built-in models ({models['root']}): {len(models['built'])} built, {human_size(models['bytes'])} "
        "(erasec models lists them; cache clear keeps them)"
    )
    emit({**info.as_dict(), "builtin_models": models}, as_json, text)


@cache.command("clear")
@json_option
def cache_clear(as_json) -> None:
    """Remove every entry of the embedding cache."""
    from ..models.embedding_cache import EmbeddingCache

    info = EmbeddingCache.at().clear()
    emit(info.as_dict(), as_json, f"{info.root}: removed {info.entries} entries, {human_size(info.bytes)}")


@cli.command()
def methods() -> None:
    """List the methods (presets) a spec's ``method:`` can name; the default is marked."""
    from erasec.compiler.frontend.presets import PRESETS

    from ..frontend.spec import DEFAULT_METHOD

    for preset in PRESETS.values():
        scale = "max(0.1, 1/|retain|)" if preset.preserve_scale == "legacy" else preset.preserve_scale
        default = "  (default: a spec without method: uses it)" if preset.name == DEFAULT_METHOD else ""
        click.echo(f"{preset.name}{default}\n  {preset.summary}")
        click.echo(f"  pipeline: {preset.pipeline}")
        click.echo(f"  lambda={preset.lam} erase_scale={preset.erase_scale} preserve_scale={scale}")
        click.echo(f"  reference: {preset.reference}\n")


@cli.command()
@json_option
def models(as_json) -> None:
    """List the built-in models (builtin:NAME): family, what each is for, where it is cached."""
    from ..models.cache_dir import cache_root
    from ..models.builtin.listing import builtin_models

    listed = builtin_models()
    lines = [f"built-in models, built on first use under {cache_root(None)} ($ERASEC_CACHE_DIR, else ~/.cache/erasec);",
             "builtin:NAME is a diffusers folder, builtin:NAME.safetensors the same model as one single file", ""]
    for model in listed:
        lines.append(f"builtin:{model.name:<11} {model.family:<6} {model.about}")
        for form, copy in (("folder", model.folder), ("file", model.single_file)):
            if copy is None:
                lines.append(f"    {form:<7}none yet (a diffusers folder only)")
                continue
            state = f"built, {human_size(copy.bytes)}" if copy.built else "not built"
            lines.append(f"    {form:<7}{copy.path} ({state})")
    lines.append("\nyour own model: --model FOLDER (diffusers), FILE.safetensors (single file) or ORG/NAME[@REVISION] "
                 "(a hub id already in the local Hugging Face cache; docs/models.md)")
    emit({"cache": str(cache_root(None)), "models": [m.as_dict() for m in listed]}, as_json, "\n".join(lines))


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


for _command in (*cli_patch.COMMANDS, *cli_onnx.COMMANDS):
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="erasec")
