"""``erasec export-onnx``'s model side: open the model at a location, load each component as the
builds read it (a single file's UNet and text encoders included) and write its graphs
(``export.py``) and tokenizers into one folder."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

from erasec.backends.onnx import load_graph, write_graph

from erasec.ir.dit_naming import is_dit

from ..errors import BuildError
from .export import COMPONENTS, ExportOptions, ExportResult, export_text_encoder, export_unet

logger = logging.getLogger(__name__)


def export_onnx(location: str, folder: str | Path, options: ExportOptions = ExportOptions()) -> ExportResult:
    """Export the components of the model at ``location`` (a diffusers folder, a single-file
    checkpoint or ``builtin:NAME[.safetensors]``) to ``folder``.

    A single file's UNet config is its family's, or the one its header records, confirmed against
    its tensors (``compiler/models/unet_configs.py``); its text encoders are read as builds read them, and
    its tokenizers are erasec's CLIP vocabulary with each encoder's pad token.
    """
    from ..models.families import FAMILIES
    from ..models.open import open_model, pooled_width

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise BuildError(f"{folder}: is a file; give a folder to export into")
    from erasec.patches.outputs import check_output_folder

    from ..outputs import model_inputs

    check_output_folder(folder, inputs=model_inputs(location))  # before any work (compiler/outputs.py)
    model = open_model(location)
    if is_dit(model.family):
        return _export_transformer_model(model, location, folder, options)
    single = model.layout != "diffusers"
    if single:
        present = ("unet", *(component for component, _, _ in model.encoders))
    else:
        present = tuple(c for c in COMPONENTS if c == "unet" or (model.path / c).is_dir())
    components = options.components or present
    absent = [component for component in components if component not in present]
    if absent:
        raise BuildError(f"{location}: a {model.family} model has no {absent[0]}; components are {', '.join(present)}")
    pooled_encoder = FAMILIES[model.family].pooled_encoder
    text_embeds_dim = pooled_width(model) if pooled_encoder in present else None
    hidden = {component: state for component, state, _ in model.encoders}  # a penultimate encoder exports its hidden states
    seconds: dict[str, float] = {}
    files: dict[str, Path] = {}
    for component in components:
        clock = time.perf_counter()
        if single:
            module = _load_single_file_component(model, component)
        else:
            module = _load_component(model.path, component, projection=component == pooled_encoder)
        target = folder / component / "model.onnx"
        with tempfile.TemporaryDirectory(prefix="erasec-export-") as scratch:
            scratch_file = Path(scratch) / "model.onnx"
            if component == "unet":
                export_unet(module, scratch_file, options, text_embeds_dim=text_embeds_dim)
            else:
                export_text_encoder(module, scratch_file, options, hidden_states=hidden[component] == "penultimate")
            graph = load_graph(scratch_file)
            graph.producer_name = f"erasec export-onnx ({options.exporter} exporter)"
            write_graph(graph, target)
        files[component] = target
        seconds[component] = time.perf_counter() - clock
        logger.info("exported %s in %.1fs", component, seconds[component])
    _write_tokenizers(model, folder, components)
    return ExportResult(
        folder=folder, files=files, exporter=options.exporter, opset=options.opset_version, seconds=seconds
    )


def _export_transformer_model(model, location: str, folder: Path, options: ExportOptions) -> ExportResult:
    """A diffusion transformer's ``transformer/`` (and Wan 2.2's second expert, ``transformer_2/``) as
    ``folder/<component>/model.onnx`` (``export_transformer.py``); its text encoders (T5, CLIP) are not
    exported, nor is a single file."""
    from .export_transformer import export_transformer, load_transformer

    if model.layout != "diffusers":
        raise BuildError(
            f"{location}: export-onnx reads a {model.family} transformer from a diffusers folder, not a single "
            "file; export the folder (erasec build and apply read the file)"
        )
    present = tuple(c for c in ("transformer", "transformer_2") if (model.path / c).is_dir())
    components = options.components or present
    absent = [component for component in components if component not in present]
    if absent:
        raise BuildError(
            f"{location}: export-onnx exports a {model.family} model's {' and '.join(present)}, not its {absent[0]}"
        )
    files: dict[str, Path] = {}
    seconds: dict[str, float] = {}
    for component in components:
        clock = time.perf_counter()
        module = load_transformer(model.path / component)
        target = folder / component / "model.onnx"
        with tempfile.TemporaryDirectory(prefix="erasec-export-") as scratch:
            scratch_file = Path(scratch) / "model.onnx"
            export_transformer(module, model.family, scratch_file, options)
            graph = load_graph(scratch_file)
            graph.producer_name = f"erasec export-onnx ({options.exporter} exporter)"
            write_graph(graph, target)
        files[component] = target
        seconds[component] = time.perf_counter() - clock
        logger.info("exported %s in %.1fs", component, seconds[component])
    return ExportResult(folder=folder, files=files, exporter=options.exporter, opset=options.opset_version, seconds=seconds)


def _write_tokenizers(model, folder: Path, components) -> None:
    """Beside each exported encoder its tokenizer: the folder's copy, or for a single file erasec's
    CLIP vocabulary padding as the family's encoder does (what builds tokenize with)."""
    from ..models.sd_components import TOKENIZER_OF
    from ..models.tokenizer import write_clip_tokenizer

    pads = {component: pad for component, _, pad in model.encoders}
    for component, tokenizer in TOKENIZER_OF.items():
        if component not in components:
            continue
        if model.layout != "diffusers":
            write_clip_tokenizer(folder / tokenizer, pad_token=pads[component])
        elif (model.path / tokenizer).is_dir():
            shutil.copytree(model.path / tokenizer, folder / tokenizer, dirs_exist_ok=True)


def _load_single_file_component(model, component: str):
    """A component of a single-file checkpoint, float32 and without hooks, ready to trace."""
    import torch

    from ..models.text_encoders import load_single_file_encoder
    from ..models.unet_configs import load_single_file_unet

    if component == "unet":
        return load_single_file_unet(model._file, model.family, model.location)
    encoder = load_single_file_encoder(model._file, model.family, component, fp32_compute=False)
    return encoder.to(torch.float32).eval()


def _load_component(path: Path, component: str, projection: bool):
    """A diffusers folder's component, float32 (``projection``: the text encoder with its projection,
    the family's pooled encoder)."""
    import torch

    try:
        if component == "unet":
            from diffusers import UNet2DConditionModel

            return UNet2DConditionModel.from_pretrained(str(path / "unet"), torch_dtype=torch.float32).eval()
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        kind = CLIPTextModelWithProjection if projection else CLIPTextModel
        return kind.from_pretrained(str(path / component), local_files_only=True, dtype=torch.float32).eval()
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0]
        raise BuildError(f"{path / component}: cannot load the {component} ({first})") from error
