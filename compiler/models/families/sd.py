"""The Stable Diffusion families: SD1.x, SD2.x and SDXL (DESIGN.md §8, research/methods.md §7).

Detected from the files: a folder is SDXL when it has ``text_encoder_2/``; otherwise SD2 when its
text encoder uses ``gelu`` (OpenCLIP) and SD1 when it uses ``quick_gelu`` (OpenAI CLIP) or is the
semantic test bed's BERT encoder. A single file is recognised by its text encoder prefixes
(research/ecosystem.md §3.1), SDXL's before SD2's before SD1's. The predicates below are written so
that at most one family claims any files, in that precedence.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ...errors import ModelError
from .. import bert
from ..tensor_files import read_json
from ..tokenizer import EOS_TOKEN, OPEN_CLIP_PAD_TOKEN
from .family import Encoder, Family, SingleFileEncoder

# where the text encoders lie in a single file (research/ecosystem.md §3.1): SD1 in HF CLIP's layout,
# SD2 in OpenCLIP's (its tower one block deeper than diffusers runs), SDXL one of each
_SD1_CLIP = "cond_stage_model.transformer."
_SD2_OPEN_CLIP = "cond_stage_model.model."
_SDXL_CLIP = "conditioner.embedders.0.transformer."
_SDXL_OPEN_CLIP = "conditioner.embedders.1.model."
_TOKEN_EMBEDDING = "token_embedding.weight"  # an OpenCLIP tower's, under its prefix

_SD_BLOCKS = dict(
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)
# UNet2DConditionModel keyword arguments (the rest are diffusers' defaults: layers_per_block 2,
# 32 norm groups, 4 channels in and out); models/unet_configs.py says what each is
SD15_UNET = dict(**_SD_BLOCKS, sample_size=64, cross_attention_dim=768, attention_head_dim=8)
SD2_UNET = dict(
    **_SD_BLOCKS, sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
    use_linear_projection=True, upcast_attention=True,
)
SDXL_UNET = dict(
    sample_size=128, cross_attention_dim=2048, attention_head_dim=(5, 10, 20), block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)


def _text_config(path: Path) -> dict:
    return read_json(path / "text_encoder" / "config.json")


def _folder_act(path: Path) -> str | None:
    """The one-encoder folder's CLIP activation, or None for an SDXL folder or a folder without a UNet
    (never read then)."""
    if (path / "text_encoder_2").is_dir() or not (path / "unet").is_dir():
        return None
    config = _text_config(path)
    return "quick_gelu" if bert.is_bert(config) else config.get("hidden_act")  # BERT: an SD1-shaped test bed


def _single_file_kind(keys: set[str]) -> str | None:
    if _SDXL_OPEN_CLIP + _TOKEN_EMBEDDING in keys:
        return "sdxl"
    if _SD2_OPEN_CLIP + _TOKEN_EMBEDDING in keys:
        return "sd2"
    if any(k.startswith(_SD1_CLIP) for k in keys):
        return "sd1"
    return None


def _sd1_width(shapes: Mapping[str, tuple], location: str) -> int:
    prefix = _SD1_CLIP
    names = [f"{prefix}text_model.embeddings.token_embedding.weight", f"{prefix}embeddings.token_embedding.weight"]
    widths = [shapes[n][1] for n in names if n in shapes]
    if not widths:
        raise ModelError(f"{location}: the SD1 text encoder has no token embedding; incomplete checkpoint")
    return sum(widths)


def _sd2_width(shapes: Mapping[str, tuple], location: str) -> int:
    return shapes[_SD2_OPEN_CLIP + _TOKEN_EMBEDDING][1]


def _sdxl_width(shapes: Mapping[str, tuple], location: str) -> int:
    first = _SDXL_CLIP + "text_model.embeddings.token_embedding.weight"
    widths = [shapes[name][1] for name in (first, _SDXL_OPEN_CLIP + _TOKEN_EMBEDDING) if name in shapes]
    if len(widths) != 2:
        raise ModelError(f"{location}: an SDXL checkpoint without conditioner.embedders.0 (CLIP-L); incomplete")
    return sum(widths)


SD1 = Family(
    name="sd1",
    key_space="clip-l",
    encoders=(Encoder("text_encoder", "last", EOS_TOKEN),),
    pipeline="StableDiffusionPipeline",
    pooled_encoder=None,
    in_folder=lambda path: _folder_act(path) == "quick_gelu",
    in_single_file=lambda keys: _single_file_kind(keys) == "sd1",
    text_width=_sd1_width,
    single_file=(SingleFileEncoder("text_encoder", _SD1_CLIP, open_clip=False),),
    unet_name="SD1.x",
    unet_config=SD15_UNET,
)
SD2 = Family(
    name="sd2",
    key_space="open-clip-h",
    encoders=(Encoder("text_encoder", "last", OPEN_CLIP_PAD_TOKEN),),
    pipeline="StableDiffusionPipeline",
    pooled_encoder=None,
    in_folder=lambda path: _folder_act(path) == "gelu",
    in_single_file=lambda keys: _single_file_kind(keys) == "sd2",
    text_width=_sd2_width,
    single_file=(SingleFileEncoder("text_encoder", _SD2_OPEN_CLIP, open_clip=True, extra_block=True),),
    unet_name="SD2.x",
    unet_config=SD2_UNET,
)
SDXL = Family(
    name="sdxl",
    key_space="clip-l+bigg",
    encoders=(
        Encoder("text_encoder", "penultimate", EOS_TOKEN),
        Encoder("text_encoder_2", "penultimate", OPEN_CLIP_PAD_TOKEN),
    ),
    pipeline="StableDiffusionXLPipeline",
    pooled_encoder="text_encoder_2",
    in_folder=lambda path: (path / "unet").is_dir() and (path / "text_encoder_2").is_dir(),
    in_single_file=lambda keys: _single_file_kind(keys) == "sdxl",
    text_width=_sdxl_width,
    single_file=(
        SingleFileEncoder("text_encoder", _SDXL_CLIP, open_clip=False),
        SingleFileEncoder("text_encoder_2", _SDXL_OPEN_CLIP, open_clip=True),
    ),
    unet_name="SDXL base",
    unet_config=SDXL_UNET,
)
FAMILIES = (SD1, SD2, SDXL)


def unknown_folder(path: Path) -> ModelError:
    """What no SD family claiming a one-encoder folder means: a CLIP activation none of them uses."""
    config_file = path / "text_encoder" / "config.json"
    act = read_json(config_file).get("hidden_act")
    return ModelError(
        f"{config_file}: hidden_act {act!r} is neither quick_gelu (SD1's CLIP-L) nor gelu (SD2's OpenCLIP-H); "
        "unknown architecture"
    )
