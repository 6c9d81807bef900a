"""``erasec export-onnx``: a model's UNet (and text encoder) as ONNX graphs ONNX Runtime runs.

Layout and conventions follow diffusers' ONNX pipeline (research/ecosystem.md §4.1), so the
folder also loads in ``OnnxStableDiffusionPipeline``-style code:

    DIR/unet/model.onnx            inputs sample [B,4,H,W], timestep [1] float, encoder_hidden_states [B,S,d];
                                   SDXL adds text_embeds [B,P] and time_ids [B,6]; output out_sample
    DIR/text_encoder/model.onnx    input input_ids [B,S] int32; outputs last_hidden_state, pooler_output
                                   (SDXL: and hidden_states.0 … hidden_states.L)
    DIR/text_encoder_2/model.onnx  SDXL only: input_ids → text_embeds [B,P], last_hidden_state, hidden_states.0 … L
    DIR/tokenizer/, tokenizer_2/   copied from the model (a single file: erasec's CLIP vocabulary), so
                                   prompts can be encoded offline

A single-file checkpoint exports too: its UNet config is its family's (SD1.x, SD2.x, SDXL base) or
the one its header records, confirmed against every UNet tensor (``compiler/models/unet_configs.py``).

SDXL's names are optimum's (``UNetOnnxConfig`` adds ``text_embeds`` and ``time_ids``;
``CLIPTextWithProjectionOnnxConfig`` outputs ``text_embeds``, ``last_hidden_state`` and, as
optimum exports both SDXL encoders, ``hidden_states.i``: the SDXL pipeline reads the penultimate
one), research/ecosystem.md §4.1.

Two exporters (§4.1): ``dynamo`` (torch.export, opset 20, constant folding turns each
``Transpose(W)`` into one ``Wᵀ`` initializer; the module is named in ``name_scopes`` metadata) and
``legacy`` (TorchScript, opset 17, constant folding — what diffusers' and optimum's scripts use;
the module path is in the node names). Both give graphs the ONNX backend can patch. Graphs over
2 GB get external data (``backends.onnx.files``). Everything is exported in float32.

The dynamo path runs onnxscript's constant folding only, not torch's whole default optimizer:
the optimizer's rewrite rules match multi-output patterns by enumerating the graph for every
node, quadratic in its size — 73 of 104 s exporting tiny-sdxl (a real SDXL UNet has the same
node count), against 2 s for the folding; the graphs give the same outputs (measured: max
difference 0 on tiny-sdxl).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..extras import require_extra

require_extra("onnx", "export-onnx")  # before the imports that need it: one line, not a traceback

from ..errors import BuildError

Exporter = Literal["dynamo", "legacy"]
EXPORTERS: tuple[str, ...] = ("dynamo", "legacy")
COMPONENTS: tuple[str, ...] = ("unet", "text_encoder", "text_encoder_2", "transformer", "transformer_2")  # the last two: a DiT's
UNET_INPUTS = ("sample", "timestep", "encoder_hidden_states")
SDXL_UNET_INPUTS = ("text_embeds", "time_ids")  # optimum's names for added_cond_kwargs
UNET_OUTPUT = "out_sample"
SDXL_TIME_IDS = 6  # original size (h, w), crop top-left (y, x), target size (h, w): SDXL base
_DEFAULT_OPSET = {"dynamo": 20, "legacy": 17}
_EXAMPLE_BATCH = 2  # classifier-free guidance runs the UNet on a batch of 2


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportOptions:
    exporter: Exporter = "dynamo"
    opset: int | None = None  # None: 20 for dynamo, 17 for legacy
    dynamic: bool = True  # batch, image size and sequence length as symbolic dims
    components: tuple[str, ...] | None = None  # None: every component the model has

    def __post_init__(self) -> None:
        if self.exporter not in EXPORTERS:
            raise BuildError(f"export-onnx: exporter {self.exporter!r} is not one of {', '.join(EXPORTERS)}")
        if self.components is not None:
            unknown = [c for c in self.components if c not in COMPONENTS]
            if unknown or not self.components:
                raise BuildError(
                    f"export-onnx: components {','.join(self.components) or '(none)'} must be some of "
                    f"{', '.join(COMPONENTS)}"
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
        scope prefix that the ONNX backend strips. SDXL's ``text_embeds`` and ``time_ids`` come
        after the three common inputs and go in as ``added_cond_kwargs``."""

        def __init__(self, unet) -> None:
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states, *added):
            conditions = dict(zip(SDXL_UNET_INPUTS, added)) if added else None
            return self.unet(
                sample, timestep, encoder_hidden_states, added_cond_kwargs=conditions, return_dict=False
            )[0]

    return UNetForOnnx(unet).eval()


def text_encoder_outputs(config, *, projection: bool, hidden_states: bool) -> tuple[str, ...]:
    """Output names as optimum gives them: ``text_embeds`` first for the projecting encoder,
    ``hidden_states.0`` (embeddings) … ``hidden_states.L`` (last layer) when asked."""
    names = ("text_embeds", "last_hidden_state") if projection else ("last_hidden_state", "pooler_output")
    if hidden_states:
        names += tuple(f"hidden_states.{i}" for i in range(config.num_hidden_layers + 1))
    return names


def _text_encoder_wrapper(encoder, outputs: tuple[str, ...]):
    import torch

    class TextEncoderForOnnx(torch.nn.Module):
        def __init__(self, encoder) -> None:
            super().__init__()
            self.text_encoder = encoder

        def forward(self, input_ids):
            hidden = any(name.startswith("hidden_states.") for name in outputs)
            output = self.text_encoder(input_ids=input_ids.to(torch.long), output_hidden_states=hidden)
            return tuple(
                output.hidden_states[int(name.split(".")[1])] if name.startswith("hidden_states.") else output[name]
                for name in outputs
            )

    return TextEncoderForOnnx(encoder).eval()


def _fold_constants(model) -> None:
    """The dynamo graph's cleanup without onnxscript's rewrite rules (module docstring): inline,
    fold constants (``Transpose(W)`` → ``Wᵀ``), drop dead nodes, constants as initializers."""
    import onnx_ir.passes.common as common
    import onnxscript.optimizer

    common.InlinePass()(model)
    onnxscript.optimizer.fold_constants(model, onnx_shape_inference=True)
    common.RemoveUnusedNodesPass()(model)
    common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    common.DeduplicateInitializersPass()(model)
    common.RemoveUnusedNodesPass()(model)


def export_module(
    module, args, path: Path, *, input_names, output_names, dynamic_axes, options: ExportOptions,
    variadic_from: int | None = None,
) -> None:
    """One torch → ONNX export into ``path`` (a scratch file; the caller re-saves it). ``variadic_from``:
    the inputs from this index on reach ``forward`` as one ``*args`` (the transformer wrapper's 0, the
    SDXL UNet's ``text_embeds``, ``time_ids`` 3): torch.export wants their dynamic shapes nested so.

    An operator the legacy exporter has no ONNX symbolic for (``aten::rms_norm``, the RMSNorm q/k norms
    of FLUX, Chroma, SD3.5 and Wan in diffusers 0.42) is refused in one line naming it."""
    import warnings

    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings and deprecation notes, not ours to fix
        if options.exporter == "legacy":
            try:
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
            except torch.onnx.errors.UnsupportedOperatorError as error:
                first = str(error).strip().splitlines()[0]
                raise BuildError(f"export-onnx: the legacy exporter cannot export this model ({first}); "
                                 "use --exporter dynamo") from None
            return
        from torch.export import Dim

        shapes = None
        if options.dynamic:
            shapes = tuple(
                {axis: Dim.AUTO for axis in dynamic_axes[name]} if name in dynamic_axes else None for name in input_names
            )
            if variadic_from is not None and len(shapes) > variadic_from:  # none given: the flat form
                shapes = (*shapes[:variadic_from], shapes[variadic_from:])
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            opset_version=options.opset_version,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes=shapes,
            optimize=False,
            verbose=False,
        )
        _fold_constants(program.model)
        if options.dynamic:
            _name_dynamic_dims(program.model, dynamic_axes)
        program.save(str(path), external_data=True)


def _name_dynamic_dims(model, dynamic_axes) -> None:
    """The dynamo exporter names a symbolic dimension after its symbol (``s21``); give the graph's
    inputs and outputs the axis names the legacy exporter writes (``batch``, ``sequence``, …), so that
    one name marks the dimensions that must agree (FLUX's ``image_tokens`` in ``hidden_states`` and ``img_ids``)."""
    import onnx_ir as ir

    for value in (*model.graph.inputs, *model.graph.outputs):
        axes = dynamic_axes.get(value.name)
        if not axes or value.shape is None:
            continue
        dims = list(value.shape.dims)
        for axis, name in axes.items():
            if axis < len(dims) and not isinstance(dims[axis], int):
                dims[axis] = ir.SymbolicDim(name)
        value.shape = ir.Shape(dims)


def sdxl_conditioning(config, text_embeds_dim: int | None = None) -> tuple[int, int]:
    """(``text_embeds`` width, ``time_ids`` count) of an SDXL UNet, whose ``add_embedding`` reads
    ``[text_embeds ; Fourier(time_ids)]``: ``projection_class_embeddings_input_dim = P + n ×
    addition_time_embed_dim``. ``P`` is ``text_encoder_2``'s ``projection_dim`` when known; else
    SDXL base's six time ids are assumed (the refiner has five: no target size, an aesthetic score)."""
    total, per_id = config.projection_class_embeddings_input_dim, config.addition_time_embed_dim
    if text_embeds_dim is None:
        text_embeds_dim = total - SDXL_TIME_IDS * per_id
    count, rest = divmod(total - text_embeds_dim, per_id)
    if text_embeds_dim <= 0 or count <= 0 or rest:
        raise BuildError(
            f"export-onnx: the UNet's add_embedding reads {total} values, which is not a {text_embeds_dim}-wide "
            f"text_embeds plus time ids of {per_id} each"
        )
    return text_embeds_dim, count


def export_unet(unet, path: Path, options: ExportOptions, *, text_embeds_dim: int | None = None) -> None:
    """Export a diffusers ``UNet2DConditionModel`` (float32) to ``path``; an SDXL UNet
    (``addition_embed_type: text_time``) gets the ``text_embeds`` and ``time_ids`` inputs."""
    import torch

    config = unet.config
    size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
    generator = torch.Generator().manual_seed(0)
    args = (
        torch.randn(_EXAMPLE_BATCH, config.in_channels, size, size, generator=generator),
        torch.tensor([981.0]),
        torch.randn(_EXAMPLE_BATCH, 77, config.cross_attention_dim, generator=generator),
    )
    names = UNET_INPUTS
    axes = {
        "sample": {0: "batch", 2: "height", 3: "width"},
        "encoder_hidden_states": {0: "batch", 1: "sequence"},
        UNET_OUTPUT: {0: "batch", 2: "height", 3: "width"},
    }
    if config.addition_embed_type == "text_time":
        width, count = sdxl_conditioning(config, text_embeds_dim)
        pixels = 8.0 * size  # example values only: sizes in pixels, no crop
        time_ids = [pixels, pixels, 0.0, 0.0, pixels, pixels][:count] + [0.0] * max(0, count - SDXL_TIME_IDS)
        args += (
            torch.randn(_EXAMPLE_BATCH, width, generator=generator),
            torch.tensor([time_ids] * _EXAMPLE_BATCH),
        )
        names += SDXL_UNET_INPUTS
        axes.update({name: {0: "batch"} for name in SDXL_UNET_INPUTS})
    elif config.addition_embed_type is not None:
        raise BuildError(
            f"export-onnx: a UNet with addition_embed_type {config.addition_embed_type!r} is not exported; "
            "SD1.x, SD2.x and SDXL UNets are"
        )
    export_module(
        _unet_wrapper(unet if unet.dtype == torch.float32 else unet.to(torch.float32)),
        args,
        path,
        input_names=names,
        output_names=(UNET_OUTPUT,),
        dynamic_axes=axes,
        options=options,
        variadic_from=len(UNET_INPUTS),
    )


def export_text_encoder(encoder, path: Path, options: ExportOptions, *, hidden_states: bool = False) -> None:
    """Export a CLIP text encoder; ``CLIPTextModelWithProjection`` (SDXL's second) outputs ``text_embeds``."""
    import torch

    projection = hasattr(encoder, "text_projection")
    outputs = text_encoder_outputs(encoder.config, projection=projection, hidden_states=hidden_states)
    args = (torch.zeros(1, 77, dtype=torch.int32),)
    axes = {"input_ids": {0: "batch", 1: "sequence"}}
    axes.update({name: {0: "batch", 1: "sequence"} for name in outputs if name not in ("pooler_output", "text_embeds")})
    axes.update({name: {0: "batch"} for name in outputs if name in ("pooler_output", "text_embeds")})
    export_module(
        _text_encoder_wrapper(encoder if encoder.dtype == torch.float32 else encoder.to(torch.float32), outputs),
        args,
        path,
        input_names=("input_ids",),
        output_names=outputs,
        dynamic_axes=axes,
        options=options,
    )
