"""The ``erasec`` commands on patch files as artifacts (docs/patch-format.md): inspect, verify,
apply, compose, diff, publish, retarget and eval. Registered on the ``cli`` group by ``cli/__init__.py``."""

from __future__ import annotations

import json
import sys

import click

from erasec.ir.errors import ErasecError

from ..extras import require_extra
from .common import (
    EXIT_CHECK_FAILED,
    NoBar,
    build_summary,
    emit,
    encoder_options,
    fail,
    json_option,
    run_command,
    text_input_options,
)


@click.command()
@click.argument("patch")
@json_option
def inspect(patch, as_json) -> None:
    """What PATCH erases and keeps, its base pin, rank, layers, size and version."""
    from erasec.patches.inspect import describe, render
    from erasec.patches.read import read_patch

    facts = run_command(lambda: describe(read_patch(patch)), loads_models=False)
    emit(facts, as_json, None if as_json else render(facts))


@click.command()
@click.argument("patch")
@click.option("--model", required=True, help="model folder, single file or builtin:NAME")
@click.option("--allow-pickle", is_flag=True, help="open a .ckpt/.pt model (read with torch.load(weights_only=True))")
@text_input_options
@json_option
def verify(patch, model, allow_pickle, text_encoders, tokenizers, as_json) -> None:
    """Check that PATCH is intact and belongs to MODEL; exit 1 with the reason when not."""
    from ..tools.verify import verify_patch

    result = run_command(lambda: verify_patch(
        patch, model, allow_pickle=allow_pickle, text_encoders=text_encoders, tokenizers=tokenizers
    ))
    lines = [f"{'ok  ' if c['ok'] else 'FAIL'} {c['check']:<9} {c['detail']}" for c in result["checks"]]
    lines.append(f"{patch}: {'verified against ' + model if result['ok'] else 'does NOT verify: ' + result['reason']}")
    emit(result, as_json, "\n".join(lines))
    if not result["ok"]:
        sys.exit(EXIT_CHECK_FAILED)


@click.command()
@click.argument("patch")
@click.option("--model", default=None, help="model folder, single file or builtin:NAME")
@click.option("--onnx", "onnx_graph", default=None, type=click.Path(dir_okay=False), help="a UNet ONNX graph, instead of --model")
@click.option("--mode", default="bake", type=click.Choice(["bake", "switchable", "adapter"]), show_default=True,
              help="with --onnx: bake ΔW into the weights, add a branch switched by erase_scale, or an .onnx_adapter")
@click.option("-o", "--output", required=True, type=click.Path(), help="the merged model to write (new path)")
@click.option("--scale", default=1.0, type=float, show_default=True, help="W0 + scale·ΔW; -1 undoes a merge")
@click.option("--force", is_flag=True, help="merge even if the model does not match the patch's base pin, and "
              "replace an existing -o file (never an input, a link or a device)")
@click.option("--allow-pickle", is_flag=True, help="open a .ckpt/.pt model (read with torch.load(weights_only=True))")
@json_option
def apply(patch, model, onnx_graph, mode, output, scale, force, allow_pickle, as_json) -> None:
    """Merge PATCH into MODEL (a checkpoint in the model's own layout) or into an ONNX UNet graph.

    -o is checked before any work: a folder model's merge goes to a new folder; an existing file is
    replaced only with --force; an input, a folder, a symbolic link or a device is refused.
    """
    from ..tools.apply import apply_patch

    if onnx_graph is not None:
        def onnx_action():
            require_extra("onnx", "apply --onnx")  # a missing onnx extra: one line, before importing it
            from erasec.backends.onnx.apply import apply_onnx

            return apply_onnx(patch, onnx_graph, output, mode=mode, scale=scale, verify_base=not force, force=force)

        result = run_command(onnx_action)
        text = f"wrote {', '.join(result['files'])} ({mode}, {result['sites']} sites, confirmed by {result['confirmed_by']})"
        emit(result, as_json, text)
        return
    if model is None:
        fail(ErasecError("apply: give --model (a merged checkpoint) or --onnx (a patched ONNX graph)"))
    def action():
        from ..outputs import check_merge_output

        check_merge_output(model, output, inputs=(patch,), force=force)  # before any work
        return apply_patch(patch, model, output, scale=scale, force=force, allow_pickle=allow_pickle)

    result = run_command(action)
    sign = "+" if scale > 0 else "−"
    text = f"wrote {output} ({result['layout']}, {result['tensors_changed']} tensors = W0 {sign} {abs(scale):g}·ΔW)"
    emit(result, as_json, text)


@click.command()
@click.argument("patches", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(), help="the composed patch to write")
@click.option("--model", default=None, help="the base model (default: where the first patch was built)")
@click.option("--name", default=None, help="the composed patch's name (default: the first patch's)")
@click.option("--version", "version_", default=None, help="its version (default: the first patch's)")
@click.option("--force", is_flag=True, help="replace an existing -o file that is not an erasec patch of this name "
              "(never an input, a link or a device)")
@json_option
def compose(patches, output, model, name, version_, force, as_json) -> None:
    """Link PATCHES of one base into one patch by solving the union of their specs jointly.

    -o follows build's rules, checked before any work; it may not be one of PATCHES.
    """
    from ..tools.compose import compose_patches

    result = run_command(
        lambda: compose_patches(list(patches), output, model=model, name=name, version=version_, force=force)
    )
    emit(result.as_dict(), as_json, None if as_json else build_summary(result))


@click.command()
@click.argument("old")
@click.argument("new")
@json_option
def diff(old, new, as_json) -> None:
    """What changed from patch OLD to patch NEW, and whether NEW's version bump says so (exit 1 when
    it does not, so a hub's CI can gate on it)."""
    from erasec.patches.diff import diff_patches, render
    from erasec.patches.read import read_patch

    result = run_command(lambda: diff_patches(read_patch(old), read_patch(new)), loads_models=False)
    emit(result, as_json, None if as_json else render(result))
    if not result["version"]["matches"]:
        sys.exit(EXIT_CHECK_FAILED)


@click.command()
@click.argument("patch")
@click.option("--to", "folder", required=True, type=click.Path(file_okay=False), help="the hub folder")
@click.option("--base-model", default=None, help="the base's hub id for the card's base_model (e.g. org/name)")
@click.option("--license", "license_id", default=None, help="card license (default: as before, else creativeml-openrail-m)")
@click.option("--list-concepts", is_flag=True, help="name the erased concepts in the card and manifest (printed)")
@json_option
def publish(patch, folder, base_model, license_id, list_concepts, as_json) -> None:
    """Add PATCH to a hub-ready folder: versioned file, manifest.json and a README.md model card."""
    from pathlib import Path

    from erasec.patches.publish import publish as run_publish
    from erasec.patches.read import read_patch

    result = run_command(
        lambda: run_publish(
            read_patch(patch), Path(folder), base_model=base_model, license_id=license_id, list_concepts=list_concepts
        ),
        loads_models=False,
    )
    text = f"{result['status']} {result['folder']}/{result['file']} (latest {result['latest']})"
    if "listed_concepts" in result:  # the publisher sees every name that went into the card
        names = result["listed_concepts"]
        text += f"\nthe card and manifest name {len(names)} erased concepts:" + "".join(f"\n  {json.dumps(n, ensure_ascii=False)}" for n in names)
    else:
        text += f"\nthe card counts {result['erase_count']} erased concepts without naming them (--list-concepts names them)"
    emit(result, as_json, text)


@click.command()
@click.argument("patch")
@click.option("--model", required=True, help="the other model (same text encoder)")
@click.option("-o", "--output", required=True, type=click.Path(), help="the retargeted patch to write")
@click.option("--force", is_flag=True, help="replace an existing -o file that is not an erasec patch of PATCH's name "
              "(never an input, a link or a device)")
@json_option
def retarget(patch, model, output, force, as_json) -> None:
    """Re-lower a shared-form PATCH exactly onto another model with the same text encoder.

    -o follows build's rules, checked before any work; it may not be PATCH.
    """
    from ..tools.compose import retarget_patch

    result = run_command(lambda: retarget_patch(patch, model, output, force=force))
    emit(result, as_json, f"wrote {output} ({result['layers']} layers, rank {result['rank']}, for {model})")


@click.command("eval")
@click.argument("patch")
@click.option("--model", required=True, help="model folder, single file or builtin:NAME")
@click.option("--suite", "suites", multiple=True, help="a shipped prompt suite (repeatable; default: artists and coco): "
              "artists, coco, i2p-nudity, imagenette, ring-a-bell-nudity, ring-a-bell-van-gogh")
@click.option("--prompts", default=None, type=click.Path(dir_okay=False), help="your prompts: .txt (one a line) or .csv "
              "(prompt[,counterpart][,concept])")
@click.option("-o", "--output", default=None, type=click.Path(file_okay=False), help="a folder for report.json, report.html "
              "and the image grids (checked before any work; not an input's folder)")
@click.option("--images", default=0, type=int, help="N images per erased concept, with and without the patch (needs -o)")
@click.option("--steps", default=25, type=int, show_default=True, help="denoising steps for --images")
@click.option("--clip-model", default=None, type=click.Path(file_okay=False), help="a local CLIP folder: adds a CLIP score "
              "to --images")
@click.option("--attack-lambda", default=0.1, type=float, show_default=True, help="λ of the recoverability attack")
@click.option("--interference-max", default=12, type=int, show_default=True, help="re-solve concepts alone up to this many")
@click.option("--max-unrelated", default=200, type=int, show_default=True, help="unrelated prompts per suite (0: all)")
@click.option("--sequence-length", default=None, type=int, help="a DiT patch: measure at this T5 padding instead of the "
              "one it was built at (another runtime's); the report says so")
@encoder_options
@json_option
def eval_command(patch, model, suites, prompts, output, images, steps, clip_model, attack_lambda, interference_max,
                 max_unrelated, sequence_length, device, encoder_dtype, encode_batch, as_json) -> None:
    """Measure what PATCH erases, keeps and leaves recoverable on MODEL (exact, text pathway)."""
    from pathlib import Path

    from ..eval.report import render_table, write_report
    from ..eval.results import EvalOptions
    from ..eval.run import STAGES, evaluate_patch

    if images and output is None:
        fail(ErasecError("eval: --images writes grids; give -o FOLDER"))
    options = run_command(lambda: EvalOptions(
        suites=tuple(suites) or EvalOptions().suites, prompts=prompts, attack_lambda=attack_lambda,
        interference_max=interference_max, max_unrelated=max_unrelated, device=device, encoder_dtype=encoder_dtype,
        encode_batch=encode_batch, sequence_length=sequence_length,
    ), loads_models=False)
    show = sys.stderr.isatty() and not as_json  # progress only on a terminal, never in --json mode

    def action():
        if images:
            from .common import use_all_cores
            from ..eval.images import ImageOptions, image_model

            use_all_cores()  # torch's threads = the usable cores, set once, before torch loads
            image_options = ImageOptions(count=images, steps=steps, clip_model=clip_model)
        if output is not None:  # before any work: an unwritable or input folder is one line now, not after
            from ..eval.report import check_report_folder
            from ..outputs import model_inputs

            check_report_folder(Path(output), inputs=(patch, prompts, *model_inputs(model)), images=bool(images))
        if images:
            image_model(model)  # a single file or a family without a pipeline: refused now, not after
        with click.progressbar(length=len(STAGES), label="erasec eval", file=sys.stderr) if show else NoBar() as bar:
            result = evaluate_patch(patch, model, options, progress=lambda stage: bar.update(1))
        grids = None
        if images:
            from ..eval.images import image_count, image_grids

            own = {c.concept: list(c.prompts) for c in result.concepts}
            with click.progressbar(length=image_count(own, image_options), label="erasec eval: images",
                                   file=sys.stderr) if show else NoBar() as bar:
                grids = image_grids(patch, model, own, Path(output), image_options, progress=lambda: bar.update(1))
        written = {} if output is None else write_report(result, Path(output), grids)
        if grids is not None:
            written["images"] = grids  # paths relative to the report folder, as in images/images.json
        return result, written

    result, written = run_command(action)
    data = {**result.as_dict(), "written": written}
    text = render_table(result)
    if written:
        text += "\n" + "\n".join(f"wrote {v}" for k, v in written.items() if k != "images")
        text += "".join(f"\nwrote {Path(output) / g['file']} (and its {2 * len(g['seeds'])} images)"
                        for g in written.get("images", []))
    emit(data, as_json, text)


COMMANDS = (inspect, verify, apply, compose, diff, publish, retarget, eval_command)
