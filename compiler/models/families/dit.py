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
pipeline's own prompt encoding (``models/dit.py``).
"""

from __future__ import annotations

from pathlib import Path

from ..tensor_files import read_json
from ..tokenizer import EOS_TOKEN, OPEN_CLIP_PAD_TOKEN
from .family import Encoder, Family

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


def _never(keys: set[str]) -> bool:
    return False  # single-file DiT checkpoints: not read yet (docs/models.md says so)


FLUX = Family(
    name="flux",
    key_space="t5",
    encoders=(Encoder("text_encoder_2", "last", T5_PAD_TOKEN),),
    pipeline="FluxPipeline",
    pooled_encoder="text_encoder",
    in_folder=_claims("flux"),
    in_single_file=_never,
    denoiser="transformer",
    sequence_length=512,
    text_rows="unmasked",
)
CHROMA = Family(
    name="chroma",
    key_space="t5",
    encoders=(Encoder("text_encoder", "last", T5_PAD_TOKEN),),
    pipeline="ChromaPipeline",
    pooled_encoder=None,
    in_folder=_claims("chroma"),
    in_single_file=_never,
    denoiser="transformer",
    sequence_length=512,
    text_rows="one_pad",
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
    in_single_file=_never,
    denoiser="transformer",
    sequence_length=256,
    text_rows="unmasked",
)
WAN = Family(
    name="wan",
    key_space="umt5",
    encoders=(Encoder("text_encoder", "last", T5_PAD_TOKEN),),
    pipeline="WanPipeline",
    pooled_encoder=None,
    in_folder=_claims("wan"),
    in_single_file=_never,
    denoiser="transformer",
    sequence_length=512,
    text_rows="zero_filled",
    text_projection="condition_embedder.text_embedder",
    clean_prompts=True,
)
FAMILIES = (FLUX, CHROMA, SD3, WAN)
