"""The diffusion-transformer families: FLUX.1, Chroma, SD3/SD3.5 and Wan (docs/models.md, "Diffusion
transformers").

Where the prompt enters each model linearly, read in diffusers 0.42.1's own transformer classes:

* ``flux`` (``FluxTransformer2DModel``): ``context_embedder`` = Linear(joint_attention_dim → inner) on
  the T5 rows, the only static text-only map (every block after it mixes text with image tokens and
  time modulation); the pooled CLIP-L vector enters through ``time_text_embed.text_embedder.linear_1``.
* ``chroma`` (``ChromaTransformer2DModel``): the same ``context_embedder``; no pooled text path.
* ``sd3`` (``SD3Transformer2DModel``): ``context_embedder`` on 77 CLIP rows (CLIP-L ⊕ CLIP-G,
  penultimate, zero-padded to the T5 width) followed by the T5 rows; the pooled CLIP-L ⊕ CLIP-G
  vector enters through ``time_text_embed.text_embedder.linear_1``.
* ``wan`` (``WanTransformer3DModel``): true cross-attention, ``blocks.{i}.attn2.to_k/to_v`` reading
  ``condition_embedder.text_embedder``'s output: the SD K/V edit, on rows that are the text embedder's
  output for the umT5 rows.

A folder is recognised by its ``transformer/config.json`` class name; each family's rows follow its
pipeline's own prompt encoding (``models/dit.py``). A single file is recognised by its native tensor
names (``native_family``), bare or under ``model.diffusion_model.`` / ``diffusion_model.``, and
opened by ``models/dit_files.py``; its text encoders may lie in it (ComfyUI's and SAI's all-in-one
files) or come as separate inputs (``EncoderSlot``, ``models/dit_inputs.py``).
"""

from __future__ import annotations

from pathlib import Path

from ..dit_layout import flux_to_native, sd3_to_native, wan_to_native
from ..tensor_files import read_json
from ..tokenizer import EOS_TOKEN, OPEN_CLIP_PAD_TOKEN
from .family import Encoder, EncoderSlot, Family

T5_PAD_TOKEN = "<pad>"

TRANSFORMER_CLASSES = {
    "FluxTransformer2DModel": "flux",
    "ChromaTransformer2DModel": "chroma",
    "SD3Transformer2DModel": "sd3",
    "WanTransformer3DModel": "wan",
}


def transformer_class(path: Path) -> str | None:
    """The ``_class_name`` of the folder's ``transformer/config.json``, or None without one."""
    config = path / "transformer" / "config.json"
    if not config.is_file():
        return None
    name = read_json(config).get("_class_name")
    return name if isinstance(name, str) else None


def _claims(name: str):
    return lambda path: TRANSFORMER_CLASSES.get(transformer_class(path) or "") == name


# ComfyUI's own prefix for a saved diffusion model ("model.diffusion_model.", comfy/supported_models_base.py
# process_unet_state_dict_for_saving), its in-memory one ("diffusion_model."), and none (BFL's and Wan's releases)
SINGLE_FILE_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "")


def native_family(keys: set[str]) -> tuple[str, str] | None:
    """(family, prefix) of a single file's native transformer names, or None.

    The marks are those ComfyUI's ``comfy/model_detection.py`` (``detect_unet_config``,
    Comfy-Org/ComfyUI@a125cd8) and diffusers' ``CHECKPOINT_KEY_NAMES`` test: BFL's FLUX.1
    (``txt_in``, ``double_blocks``, ``vector_in.in_layer``), Chroma (the same blocks, its
    ``distilled_guidance_layer`` and no ``vector_in``), SAI's MMDiT (``context_embedder``,
    ``joint_blocks``) and Wan (``blocks.N.cross_attn``, ``text_embedding``).
    """
    for prefix in SINGLE_FILE_PREFIXES:
        if prefix + "txt_in.weight" in keys and prefix + "double_blocks.0.img_attn.qkv.weight" in keys:
            if any(key.startswith(prefix + "distilled_guidance_layer.") for key in keys):
                return "chroma", prefix
            if prefix + "vector_in.in_layer.weight" in keys:
                return "flux", prefix
        if prefix + "context_embedder.weight" in keys and prefix + "joint_blocks.0.context_block.attn.qkv.weight" in keys:
            return "sd3", prefix
        if prefix + "text_embedding.0.weight" in keys and prefix + "blocks.0.cross_attn.k.weight" in keys:
            return "wan", prefix
    return None


def _native(name: str):
    return lambda keys: (native_family(keys) or ("", ""))[0] == name


_T5_FILE = "text_encoders.t5xxl.transformer."


FLUX = Family(
    name="flux",
    key_space="t5",
    encoders=(Encoder("text_encoder_2", "last", T5_PAD_TOKEN),),
    pipeline="FluxPipeline",
    pooled_encoder="text_encoder",
    in_folder=_claims("flux"),
    in_single_file=_native("flux"),
    denoiser="transformer",
    sequence_length=512,
    text_rows="unmasked",
    encoder_slots=(
        EncoderSlot("t5", "text_encoder_2", "T5EncoderModel", _T5_FILE),
        EncoderSlot("clip_l", "text_encoder", "CLIPTextModel", "text_encoders.clip_l.transformer."),
    ),
    native_marks="BFL's txt_in, double_blocks, vector_in",
    to_native=flux_to_native,
)
CHROMA = Family(
    name="chroma",
    key_space="t5",
    encoders=(Encoder("text_encoder", "last", T5_PAD_TOKEN),),
    pipeline="ChromaPipeline",
    pooled_encoder=None,
    in_folder=_claims("chroma"),
    in_single_file=_native("chroma"),
    denoiser="transformer",
    sequence_length=512,
    text_rows="one_pad",
    encoder_slots=(EncoderSlot("t5", "text_encoder", "T5EncoderModel", _T5_FILE),),
    native_marks="txt_in, double_blocks, distilled_guidance_layer",
)
SD3 = Family(
    name="sd3",
    key_space="clip+t5",
    encoders=(
        Encoder("text_encoder", "penultimate", EOS_TOKEN),
        Encoder("text_encoder_2", "penultimate", OPEN_CLIP_PAD_TOKEN),
        Encoder("text_encoder_3", "last", T5_PAD_TOKEN),
    ),
    pipeline="StableDiffusion3Pipeline",
    pooled_encoder="text_encoder+text_encoder_2",
    in_folder=_claims("sd3"),
    in_single_file=_native("sd3"),
    denoiser="transformer",
    sequence_length=256,
    text_rows="unmasked",
    encoder_slots=(
        EncoderSlot("clip_l", "text_encoder", "CLIPTextModelWithProjection", "text_encoders.clip_l.transformer."),
        EncoderSlot("clip_g", "text_encoder_2", "CLIPTextModelWithProjection", "text_encoders.clip_g.transformer."),
        EncoderSlot("t5", "text_encoder_3", "T5EncoderModel", _T5_FILE),
    ),
    native_marks="SAI's context_embedder, joint_blocks",
    to_native=sd3_to_native,
)
WAN = Family(
    name="wan",
    key_space="umt5",
    encoders=(Encoder("text_encoder", "last", T5_PAD_TOKEN),),
    pipeline="WanPipeline",
    pooled_encoder=None,
    in_folder=_claims("wan"),
    in_single_file=_native("wan"),
    denoiser="transformer",
    sequence_length=512,
    text_rows="zero_filled",
    text_projection="condition_embedder.text_embedder",
    clean_prompts=True,
    encoder_slots=(EncoderSlot("t5", "text_encoder", "UMT5EncoderModel", "text_encoders.umt5xxl.transformer."),),
    native_marks="blocks.N.cross_attn, text_embedding",
    to_native=wan_to_native,
    experts=("transformer_2",),  # Wan 2.2's low-noise expert (WanPipeline.transformer_2, boundary_ratio)
)
FAMILIES = (FLUX, CHROMA, SD3, WAN)
