"""The recipes of the tiny built-in models (``builtin/__init__.py`` lists them): seeded UNet, CLIP
text encoders, VAE and scheduler configs, and the diffusers folders they make. ``minilm.py`` reuses
the UNet, VAE and scheduler with its pretrained encoder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ..tokenizer import OPEN_CLIP_PAD_TOKEN, write_clip_tokenizer

_SEED = 0
_CROSS_DIM = 32


def _unet(**config):
    from diffusers import UNet2DConditionModel

    base = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=2, norm_num_groups=8)
    return UNet2DConditionModel(**base, **config)


_SD_BLOCKS = dict(
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(32, 32, 64, 64),
)


def build_unet(cross_attention_dim: int = _CROSS_DIM):
    # attention_head_dim is diffusers' legacy name: this is the number of heads
    return _unet(**_SD_BLOCKS, attention_head_dim=2, cross_attention_dim=cross_attention_dim)


def _build_unet_sd2():
    return _unet(**_SD_BLOCKS, attention_head_dim=(2, 2, 4, 4), cross_attention_dim=64, use_linear_projection=True)


def _build_unet_sdxl():
    return _unet(
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 64),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(2, 4, 4),
        cross_attention_dim=64 + 128,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,
    )


def _clip_config(hidden: int, heads: int, act: str, pad_token_id: int, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act=act,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=pad_token_id,
        **extra,
    )


def _build_text_encoder():
    from transformers import CLIPTextModel

    # tiny-sd1's recipe predates the head-width-64 rule; its single file carries its config.
    return CLIPTextModel(_clip_config(_CROSS_DIM, 4, "quick_gelu", 49407, projection_dim=_CROSS_DIM))


def _build_text_encoder_sd2():
    from transformers import CLIPTextModel

    return CLIPTextModel(_clip_config(64, 1, "gelu", 0))


def _build_text_encoder_sdxl_1():
    from transformers import CLIPTextModel

    return CLIPTextModel(_clip_config(64, 1, "quick_gelu", 49407))


def _build_text_encoder_sdxl_2():
    from transformers import CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(_clip_config(128, 2, "gelu", 0, projection_dim=32))


def build_vae():
    from diffusers import AutoencoderKL

    # One downsampling step (factor 2), as in diffusers' own pipeline tests.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=4,
        sample_size=32,
    )


_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1)


def build_scheduler(sdxl: bool = False):
    from diffusers import EulerDiscreteScheduler, PNDMScheduler

    # SD1.5's and SDXL base's scheduler/scheduler_config.json values.
    if sdxl:
        return EulerDiscreteScheduler(**_BETAS, timestep_spacing="leading")
    return PNDMScheduler(**_BETAS, set_alpha_to_one=False, skip_prk_steps=True)


def model_index(sdxl: bool = False) -> dict[str, object]:
    import diffusers

    if sdxl:
        return {
            "_class_name": "StableDiffusionXLPipeline",
            "_diffusers_version": diffusers.__version__,
            "force_zeros_for_empty_prompt": True,
            "scheduler": ["diffusers", "EulerDiscreteScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }
    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def write_components(folder: Path, components: tuple[tuple[str, Callable], ...]) -> None:
    import torch

    # Each component is seeded on its own so changing one leaves the others' weights unchanged;
    # fork_rng keeps the caller's global RNG state untouched.
    with torch.random.fork_rng(devices=[]):
        for name, build in components:
            torch.manual_seed(_SEED)
            model = build().eval()
            model.save_pretrained(folder / name, safe_serialization=True)


def write_index(folder: Path, index: dict) -> None:
    (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_tiny_sd1(folder: Path) -> None:
    write_components(folder, (("unet", build_unet), ("text_encoder", _build_text_encoder), ("vae", build_vae)))
    build_scheduler().save_pretrained(folder / "scheduler")
    write_clip_tokenizer(folder / "tokenizer")
    write_index(folder, model_index())


def write_tiny_sd2(folder: Path) -> None:
    write_components(
        folder, (("unet", _build_unet_sd2), ("text_encoder", _build_text_encoder_sd2), ("vae", build_vae))
    )
    build_scheduler().save_pretrained(folder / "scheduler")
    write_clip_tokenizer(folder / "tokenizer", pad_token=OPEN_CLIP_PAD_TOKEN)
    write_index(folder, model_index())


def write_tiny_sdxl(folder: Path) -> None:
    write_components(
        folder,
        (
            ("unet", _build_unet_sdxl),
            ("text_encoder", _build_text_encoder_sdxl_1),
            ("text_encoder_2", _build_text_encoder_sdxl_2),
            ("vae", build_vae),
        ),
    )
    build_scheduler(sdxl=True).save_pretrained(folder / "scheduler")
    write_clip_tokenizer(folder / "tokenizer")
    write_clip_tokenizer(folder / "tokenizer_2", pad_token=OPEN_CLIP_PAD_TOKEN)
    write_index(folder, model_index(sdxl=True))
