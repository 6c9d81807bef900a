"""``erasec export-onnx``: a model's UNet (and text encoder) as ONNX graphs ONNX Runtime runs.

Layout and conventions follow diffusers' ONNX pipeline (research/ecosystem.md §4.1), so the
folder also loads in ``OnnxStableDiffusionPipeline``-style code:

    DIR/unet/model.onnx            inputs sample [B,4,H,W], timestep [1] float, encoder_hidden_states [B,S,d];
                                   output out_sample
    DIR/text_encoder/model.onnx    input input_ids [B,S] int32; outputs last_hidden_state, pooler_output
    DIR/tokenizer/                 copied from the model, so prompts can be encoded offline

Two exporters (§4.1): ``dynamo`` (torch.export, opset 20, onnxscript's optimizer folds each
``Wᵀ`` into one initializer and names the module in ``name_scopes`` metadata) and ``legacy``
(TorchScript, opset 17, constant folding — what diffusers' and optimum's scripts use; the module
path is in the node names). Both give graphs the ONNX backend can patch. Graphs over 2 GB get
external data (``backends.onnx.files``). The UNet is exported in float32.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from erasec.backends.onnx import load_graph, write_graph

from .errors import BuildError

logger = logging.getLogger(__name__)

Exporter = Literal["dynamo", "legacy"]
EXPORTERS: tuple[str, ...] = ("dynamo", "legacy")
COMPONENTS: tuple[str, ...] = ("unet", "text_encoder")
UNET_INPUTS = ("sample", "timestep", "encoder_hidden_states")
UNET_OUTPUT = "out_sample"
_DEFAULT_OPSET = {"dynamo": 20, "legacy": 17}
_EXAMPLE_BATCH = 2  # classifier-free guidance runs the UNet on a batch of 2


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportOptions:
    exporter: Exporter = "dynamo"
    opset: int | None = None  # None: 20 for dynamo, 17 for legacy
    dynamic: bool = True  # batch, image size and sequence length as symbolic dims
    components: tuple[str, ...] = COMPONENTS

    def __post_init__(self) -> None:
        if self.exporter not in EXPORTERS:
            raise BuildError(f"export-onnx: exporter {self.exporter!r} is not one of {', '.join(EXPORTERS)}")
        unknown = [c for c in self.components if c not in COMPONENTS]
        if unknown or not self.components:
            raise BuildError(
                f"export-onnx: components {','.join(self.components) or '(none)'} must be some of {', '.join(COMPONENTS)}"
            )
        if self.opset is not None and not 14 <= self.opset <= 23:
            raise BuildError(f"export-onnx: opset {self.opset} is not in [14, 23]")

    @property
    def opset_version(self) -> int:
        return self.opset if self.opset is not None else _DEFAULT_OPSET[self.exporter]


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportResult:
    folder: Path
    files: dict[str, Path]  # component → model.onnx
    exporter: str
    opset: int
    seconds: dict[str, float] = field(default_factory=dict)


def _unet_wrapper(unet):
    import torch

    class UNetForOnnx(torch.nn.Module):
        """Positional inputs and a plain tensor output; the attribute name ``unet`` becomes the
        scope prefix that the ONNX backend strips."""

        def __init__(self, unet) -> None:
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states):
            return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]

    return UNetForOnnx(unet).eval()


def _text_encoder_wrapper(encoder):
    import torch

    class TextEncoderForOnnx(torch.nn.Module):
        def __init__(self, encoder) -> None:
            super().__init__()
            self.text_encoder = encoder

        def forward(self, input_ids):
            output = self.text_encoder(input_ids=input_ids.to(torch.long))
            return output.last_hidden_state, output.pooler_output

    return TextEncoderForOnnx(encoder).eval()


def _export(module, args, path: Path, *, input_names, output_names, dynamic_axes, options: ExportOptions) -> None:
    """One torch → ONNX export into ``path`` (a scratch file; the caller re-saves it)."""
    import warnings

    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings and deprecation notes, not ours to fix
        if options.exporter == "legacy":
            torch.onnx.export(
                module,
                args,
                str(path),
                dynamo=False,
                opset_version=options.opset_version,
                do_constant_folding=True,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=dynamic_axes if options.dynamic else None,
            )
            return
        from torch.export import Dim

        shapes = None
        if options.dynamic:
            shapes = tuple(
                {axis: Dim.AUTO for axis in dynamic_axes[name]} if name in dynamic_axes else None for name in input_names
            )
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            opset_version=options.opset_version,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes=shapes,
            verbose=False,
        )
        program.save(str(path), external_data=True)


def export_unet(unet, path: Path, options: ExportOptions) -> None:
    """Export a diffusers ``UNet2DConditionModel`` (float32) to ``path``."""
    import torch

    config = unet.config
    size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
    generator = torch.Generator().manual_seed(0)
    args = (
        torch.randn(_EXAMPLE_BATCH, config.in_channels, size, size, generator=generator),
        torch.tensor([981.0]),
        torch.randn(_EXAMPLE_BATCH, 77, config.cross_attention_dim, generator=generator),
    )
    axes = {
        "sample": {0: "batch", 2: "height", 3: "width"},
        "encoder_hidden_states": {0: "batch", 1: "sequence"},
        UNET_OUTPUT: {0: "batch", 2: "height", 3: "width"},
    }
    _export(
        _unet_wrapper(unet if unet.dtype == torch.float32 else unet.to(torch.float32)),
        args,
        path,
        input_names=UNET_INPUTS,
        output_names=(UNET_OUTPUT,),
        dynamic_axes=axes,
        options=options,
    )


def export_text_encoder(encoder, path: Path, options: ExportOptions) -> None:
    import torch

    args = (torch.zeros(1, 77, dtype=torch.int32),)
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "last_hidden_state": {0: "batch", 1: "sequence"}}
    _export(
        _text_encoder_wrapper(encoder if encoder.dtype == torch.float32 else encoder.to(torch.float32)),
        args,
        path,
        input_names=("input_ids",),
        output_names=("last_hidden_state", "pooler_output"),
        dynamic_axes=axes,
        options=options,
    )


def export_onnx(location: str, folder: str | Path, options: ExportOptions = ExportOptions()) -> ExportResult:
    """Export the components of the model at ``location`` (a folder or ``builtin:NAME``) to ``folder``."""
    from .model import open_model

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise BuildError(f"{folder}: is a file; give a folder to export into")
    model = open_model(location)
    if model.layout != "diffusers" or model.family not in ("sd1", "sd2"):
        raise BuildError(
            f"{location}: a {model.family} {model.layout} model; export-onnx takes SD1.x/SD2.x diffusers folders "
            "(SDXL's extra UNet inputs are not exported yet)"
        )
    seconds: dict[str, float] = {}
    files: dict[str, Path] = {}
    for component in options.components:
        clock = time.perf_counter()
        module = _load_component(model.path, component)
        target = folder / component / "model.onnx"
        with tempfile.TemporaryDirectory(prefix="erasec-export-") as scratch:
            scratch_file = Path(scratch) / "model.onnx"
            if component == "unet":
                export_unet(module, scratch_file, options)
            else:
                export_text_encoder(module, scratch_file, options)
            graph = load_graph(scratch_file)
            graph.producer_name = f"erasec export-onnx ({options.exporter} exporter)"
            write_graph(graph, target)
        files[component] = target
        seconds[component] = time.perf_counter() - clock
        logger.info("exported %s in %.1fs", component, seconds[component])
    if (model.path / "tokenizer").is_dir() and "text_encoder" in options.components:
        shutil.copytree(model.path / "tokenizer", folder / "tokenizer", dirs_exist_ok=True)
    return ExportResult(
        folder=folder, files=files, exporter=options.exporter, opset=options.opset_version, seconds=seconds
    )


def _load_component(path: Path, component: str):
    import torch

    try:
        if component == "unet":
            from diffusers import UNet2DConditionModel

            return UNet2DConditionModel.from_pretrained(str(path / "unet"), torch_dtype=torch.float32).eval()
        from transformers import CLIPTextModel

        return CLIPTextModel.from_pretrained(str(path / "text_encoder"), local_files_only=True, dtype=torch.float32).eval()
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0]
        raise BuildError(f"{path / component}: cannot load the {component} ({first})") from error
