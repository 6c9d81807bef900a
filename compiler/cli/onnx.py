"""The ``erasec`` commands that write or run whole models (docs/onnx.md): export-onnx, run-onnx
and export-single-file. Registered on the ``cli`` group by ``cli/__init__.py``."""

from __future__ import annotations

import click

from erasec.ir.errors import ErasecError

from ..extras import require_extra
from .common import emit, fail, human_size, json_option, quiet_libraries, run_command


@click.command("export-onnx")
@click.option("--model", required=True, help="model folder, single-file .safetensors or builtin:NAME[.safetensors]")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="the folder to write (not the "
              "model's; checked before any work)")
@click.option("--exporter", default="dynamo", type=click.Choice(["dynamo", "legacy"]), show_default=True)
@click.option("--opset", default=None, type=int, help="ONNX opset (default 20 for dynamo, 17 for legacy)")
@click.option("--static", is_flag=True, help="fixed batch 2 and the model's sample size (faster to export); a "
              "transformer: the example's shapes (docs/onnx.md)")
@click.option("--components", default=None,
              help="comma list of unet, text_encoder, text_encoder_2, or a diffusion transformer's transformer, "
              "transformer_2 (default: all the model has)")
@json_option
def export_onnx(model, output, exporter, opset, static, components, as_json) -> None:
    """Export MODEL's UNet and text encoder(s), or a diffusion transformer's transformer, to ONNX graphs
    that erasec can patch."""
    from pathlib import Path

    def action():
        from ..onnx_graphs.export import ExportOptions  # a missing onnx extra: one line
        from ..onnx_graphs.export_model import export_onnx as run_export

        parts = tuple(part.strip() for part in components.split(",") if part.strip()) if components is not None else None
        options = ExportOptions(exporter=exporter, opset=opset, dynamic=not static, components=parts)
        return run_export(model, output, options)

    result = run_command(action)
    data = {
        "folder": str(result.folder),
        "files": {name: str(path) for name, path in result.files.items()},
        "exporter": result.exporter,
        "opset": result.opset,
        "seconds": {name: round(value, 2) for name, value in result.seconds.items()},
    }
    text = "\n".join(
        f"wrote {path} ({human_size(Path(path).stat().st_size)}, {result.exporter} exporter, opset {result.opset}, "
        f"{result.seconds[name]:.1f}s)"
        for name, path in data["files"].items()
    )
    emit(data, as_json, text)


@click.command("run-onnx")
@click.argument("graph", type=click.Path())
@click.option("--provider", "providers", multiple=True, help="execution provider(s) to try, in order "
              "(default: TensorrtExecutionProvider, CUDAExecutionProvider, CPUExecutionProvider, where installed)")
@click.option("--erase-scale", default=None, type=float, help="feed the switchable graph's erase_scale (0 = base)")
@click.option("--adapter", default=None, type=click.Path(dir_okay=False), help="an .onnx_adapter to activate")
@click.option("--seed", default=0, type=int, show_default=True, help="seed of the example latents and states")
@click.option("--size", default=None, type=int,
              help="latent height and width (default: the graph's, else 64; a transformer's 32)")
@click.option("--repeat", default=1, type=int, show_default=True, help="runs to time (median reported)")
@json_option
def run_onnx(graph, providers, erase_scale, adapter, seed, size, repeat, as_json) -> None:
    """Run one denoising step of a UNet or transformer GRAPH (or export folder) in ONNX Runtime; say which
    provider ran."""
    def action():
        require_extra("onnx", "run-onnx")  # a missing onnx extra: one line, before importing it
        from erasec.backends.onnx.runtime import run_onnx as run

        return run(graph, providers=providers or None, erase_scale=erase_scale, adapter=adapter, seed=seed,
                   size=size, repeat=repeat)

    result = run_command(action)
    text = (
        f"ran {result['graph']} on {result['provider']} (session providers: {', '.join(result['providers'])})\n"
        f"  {result['output']} {result['output_shape']}  mean |x| {result['output_mean_abs']:.4g}  "
        f"finite {result['finite']}  median {result['median_ms']:.1f} ms over {result['runs']} run(s)"
    )
    emit(result, as_json, text)


@click.command("export-single-file")
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="the .safetensors file to write")
@click.option("--text-encoders", "encoders", default=None, type=click.Path(file_okay=False),
              help="a diffusion transformer: also write its text encoders (and T5 tokenizer) into this new or "
              "empty folder, as ComfyUI keeps them")
@click.option("--force", is_flag=True, help="replace an existing -o file that is not a single file erasec wrote "
              "(never an input, a link or a device)")
def export_single_file(model, output, encoders, force) -> None:
    """Write MODEL (builtin:NAME or a diffusers folder) as one single-file checkpoint: LDM/SGM names
    for SD1/SD2/SDXL, the native transformer names for FLUX.1, SD3 and Wan (its text encoders
    apart, with --text-encoders).

    -o is checked before any work: it replaces a single file erasec wrote; any other existing file
    needs --force; a file of MODEL, a folder, a symbolic link or a device is refused.
    """
    from pathlib import Path

    from erasec.patches.outputs import check_output, erasec_single_file

    from ..models.builtin import builtin_model_path, write_single_file
    from ..models.builtin.dit_single_file import dit_folder_family, write_dit_single_file
    from ..outputs import model_inputs

    quiet_libraries()
    try:
        check_output(
            output, inputs=model_inputs(model), force=force, same_artifact=erasec_single_file, example="model.safetensors"
        )
        folder = builtin_model_path(model.removeprefix("builtin:")) if model.startswith("builtin:") else Path(model)
        if not (folder / "model_index.json").is_file():
            from ..errors import ModelError

            raise ModelError(f"{model}: not a diffusers folder (no model_index.json); give builtin:NAME or a folder")
        if (folder / "transformer").is_dir() or dit_folder_family(folder) is not None:
            size = write_dit_single_file(folder, Path(output), None if encoders is None else Path(encoders))
        elif encoders is not None:
            from ..errors import ModelError

            raise ModelError(f"{model}: --text-encoders is for diffusion transformers; an SD file holds its encoders")
        else:
            size = write_single_file(folder, Path(output))
    except ErasecError as error:
        fail(error)
    note = f"; text encoders in {encoders}" if encoders is not None else ""
    click.echo(f"wrote {output} ({human_size(size)}, single-file checkpoint of {model}{note})")


COMMANDS = (export_onnx, run_onnx, export_single_file)
