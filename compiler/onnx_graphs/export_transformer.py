"""``erasec export-onnx`` for a diffusion transformer (FLUX.1, Chroma, SD3/SD3.5, Wan): its
``transformer/`` as one graph the ONNX backend can patch (docs/onnx.md, "Diffusion transformers").

Inputs are the transformer's own ``forward`` arguments, in the order and under the names the
pipelines pass them (diffusers 0.42.1; FLUX's and SD3's are also optimum's, ``FluxTransformerOnnxConfig``
and ``SD3TransformerOnnxConfig`` in ``huggingface/optimum-onnx: optimum/exporters/onnx/model_configs.py``);
the output is ``out_hidden_states`` (optimum's name):

    flux     hidden_states [B,L,C] (packed latents), encoder_hidden_states [B,S,T5 width],
             pooled_projections [B,P], timestep [B], img_ids [L,3], txt_ids [S,3] (+ guidance [B] for FLUX-dev)
    chroma   hidden_states [1,L,C], encoder_hidden_states [1,S,T5 width], timestep [1], img_ids [L,3],
             txt_ids [S,3], attention_mask [1,S+L] bool (ChromaPipeline's: prompt tokens and one pad, then images)
    sd3      hidden_states [B,C,H,W], encoder_hidden_states [B,S,4096], pooled_projections [B,2048], timestep [B]
    wan      hidden_states [B,C,F,H,W], timestep [B], encoder_hidden_states [B,S,umT5 width]

With dynamic shapes (the default) B, L, S, H, W and F are symbolic. Chroma's batch is not: its
``ChromaCombinedTimestepTextProjEmbeddings`` builds ``torch.tensor([0] * batch_size)`` in Python, so
the exporter bakes the example's batch into a constant — exported with batch 2, a graph declaring a
symbolic batch failed on batch 1 in ONNX Runtime (a Concat of 2 and 1 rows). It is exported with batch 1
(ChromaPipeline runs the transformer once per guidance branch), which the graph declares.

The legacy (TorchScript) exporter has no ONNX symbolic for ``aten::rms_norm`` at any opset, and
diffusers 0.42's FLUX, Chroma and Wan attention (and SD3.5's, ``qk_norm: rms_norm``) normalise q and k
with ``torch.nn.RMSNorm``: those are refused in one line (``export.export_module``); SD3 without q/k
norms exports with either exporter.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import BuildError
from ..models.families.dit import TRANSFORMER_CLASSES
from .export import ExportOptions, export_module

TRANSFORMER_OUTPUT = "out_hidden_states"
_CLASS_OF = {family: name for name, family in TRANSFORMER_CLASSES.items()}  # family → its diffusers class
# example sizes: distinct values, so that torch.export gives every dynamic dimension its own symbol
_BATCH, _TOKENS_H, _TOKENS_W, _TEXT, _FRAMES = 2, 4, 6, 12, 3


def _inputs(family: str, config, batch: int) -> tuple[tuple[str, tuple, dict[int, str]], ...]:
    """(name, example shape, dynamic axes) of each input, in the order the wrapper passes them: the
    forward signature of the family's diffusers transformer class."""
    tokens = _TOKENS_H * _TOKENS_W
    kind = _CLASS_OF.get(family)
    if kind in ("FluxTransformer2DModel", "ChromaTransformer2DModel"):
        common = (
            ("hidden_states", (batch, tokens, config.in_channels), {0: "batch", 1: "image_tokens"}),
            ("encoder_hidden_states", (batch, _TEXT, config.joint_attention_dim), {0: "batch", 1: "sequence"}),
        )
        ids = (("img_ids", (tokens, 3), {0: "image_tokens"}), ("txt_ids", (_TEXT, 3), {0: "sequence"}))
        if kind == "ChromaTransformer2DModel":
            mask = ("attention_mask", (batch, _TEXT + tokens), {0: "batch", 1: "sequence_and_image_tokens"})
            return (*common, ("timestep", (batch,), {0: "batch"}), *ids, mask)
        pooled = ("pooled_projections", (batch, config.pooled_projection_dim), {0: "batch"})
        guidance = (("guidance", (batch,), {0: "batch"}),) if config.guidance_embeds else ()
        return (*common, pooled, ("timestep", (batch,), {0: "batch"}), *ids, *guidance)
    if kind == "SD3Transformer2DModel":
        patch = config.patch_size
        return (
            ("hidden_states", (batch, config.in_channels, _TOKENS_H * patch, _TOKENS_W * patch),
             {0: "batch", 2: "height", 3: "width"}),
            ("encoder_hidden_states", (batch, _TEXT, config.joint_attention_dim), {0: "batch", 1: "sequence"}),
            ("pooled_projections", (batch, config.pooled_projection_dim), {0: "batch"}),
            ("timestep", (batch,), {0: "batch"}),
        )
    if kind == "WanTransformer3DModel":
        frames, height, width = config.patch_size
        return (
            ("hidden_states", (batch, config.in_channels, _FRAMES * frames, _TOKENS_H * height, _TOKENS_W * width),
             {0: "batch", 2: "frames", 3: "height", 4: "width"}),
            ("timestep", (batch,), {0: "batch"}),
            ("encoder_hidden_states", (batch, _TEXT, config.text_dim), {0: "batch", 1: "sequence"}),
        )
    raise BuildError(f"export-onnx: family {family!r} has no transformer graph; flux, chroma, sd3 and wan do")


def transformer_input_names(family: str, config) -> tuple[str, ...]:
    """The graph's input names for a transformer of ``family`` with ``config`` (module docstring)."""
    return tuple(name for name, _, _ in _inputs(family, config, _BATCH))


def _example(name: str, shape: tuple, generator):
    import torch

    if name == "attention_mask":
        return torch.ones(shape, dtype=torch.bool)
    if name == "timestep":
        return torch.full(shape, 0.5)
    return torch.randn(shape, generator=generator)


def _wrapper(transformer, names: tuple[str, ...]):
    import torch

    class TransformerForOnnx(torch.nn.Module):
        """Positional inputs in the graph's order, a plain tensor output; the attribute name
        ``transformer`` becomes the scope prefix the ONNX backend strips."""

        def __init__(self, transformer) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, *inputs):
            return self.transformer(**dict(zip(names, inputs)), return_dict=False)[0]

    return TransformerForOnnx(transformer).eval()


def export_transformer(transformer, family: str, path: Path, options: ExportOptions) -> None:
    """Export a diffusers transformer of ``family`` (float32) to ``path``; ``--static`` fixes every
    dimension at the example's (batch 2, Chroma 1; 24 image tokens, 12 text rows)."""
    import torch

    fixed_batch = _CLASS_OF.get(family) == "ChromaTransformer2DModel"  # its time embedding bakes the batch in
    batch = 1 if fixed_batch else _BATCH
    inputs = _inputs(family, transformer.config, batch)
    generator = torch.Generator().manual_seed(0)
    args = tuple(_example(name, shape, generator) for name, shape, _ in inputs)
    axes = {name: {k: v for k, v in dims.items() if not (fixed_batch and v == "batch")} for name, _, dims in inputs}
    axes[TRANSFORMER_OUTPUT] = axes["hidden_states"]  # the output has the latents' layout
    names = tuple(name for name, _, _ in inputs)
    export_module(
        _wrapper(transformer if transformer.dtype == torch.float32 else transformer.to(torch.float32), names),
        args,
        path,
        input_names=names,
        output_names=(TRANSFORMER_OUTPUT,),
        dynamic_axes={name: dims for name, dims in axes.items() if dims},
        options=options,
        variadic_from=0,
    )


def load_transformer(folder: Path):
    """A diffusers transformer folder (``transformer/``, ``transformer_2/``), float32, of the class its
    ``config.json`` names (one of ``families/dit.TRANSFORMER_CLASSES``)."""
    import diffusers
    import torch

    from ..models.families.dit import TRANSFORMER_CLASSES
    from ..models.tensor_files import read_json

    class_name = read_json(folder / "config.json").get("_class_name")
    if class_name not in TRANSFORMER_CLASSES:
        raise BuildError(f"{folder / 'config.json'}: _class_name {class_name!r} is not one of {', '.join(TRANSFORMER_CLASSES)}")
    try:
        return getattr(diffusers, class_name).from_pretrained(str(folder), torch_dtype=torch.float32).eval()
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0]
        raise BuildError(f"{folder}: cannot load the transformer ({first})") from error
