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
    should be its own summary."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for module in (diffusers_logging, transformers_logging):
        module.disable_progress_bar()
        module.set_verbosity_error()


def _fail(error: ErasecError) -> None:
    click.echo(f"erasec: error: {error}", err=True)
    sys.exit(EXIT_USER_ERROR)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _summary(result) -> str:
    seconds = result.seconds
    lines = [
        f"built {result.output} ({_size(result.size_bytes)}, kohya LoRA, {result.dtype})",
        f"  model    {result.model} ({result.family})",
        f"  method   {result.method}   pipeline {result.pipeline}",
        f"  rows     {result.erase_rows} erase, {result.preserve_rows} preserve, {result.hard_rows} hard"
        f"   condition {result.condition:.3g}",
        f"  rank     {result.rank} in each of {result.layers} layers",
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
def build(spec, output, model, as_json, print_ir_after, verify_each) -> None:
    """Compile SPEC into a LoRA patch."""
    from .build import BuildOptions, build as run_build

    _quiet_libraries()
    wanted = tuple(p.strip() for p in print_ir_after.split(",")) if print_ir_after else ()
    options = BuildOptions(model=model, print_ir_after=wanted, verify_each=verify_each)
    try:
        result = run_build(spec, output, options, emit_ir=lambda text: click.echo(text, err=True))
    except ErasecError as error:
        _fail(error)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2, sort_keys=True))
    else:
        click.echo(_summary(result))


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


def main() -> None:
    cli(prog_name="erasec")
