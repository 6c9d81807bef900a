"""The recipes of the tiny diffusion-transformer built-ins (``builtin/__init__.py`` lists them):
FLUX.1, Chroma, SD3 and Wan 2.2 pipelines at the shapes of diffusers' own pipeline tests
(``tests/pipelines/{flux,chroma,stable_diffusion_3,wan}/``, ``get_dummy_components``), written as the
pipelines' own folder layout, offline:

* the transformers, VAEs and schedulers are the tests' configurations;
* the T5 / umT5 encoders' configurations are written here with the values of
  ``hf-internal-testing/tiny-random-t5`` (the tests download it), over the tokenizer made in-process
  by ``compiler/models/t5_tokenizer.py`` (its 1,000 tokens are the vocabulary);
* the CLIP encoders are the SD built-ins' (2 layers, the real CLIP BPE, ``recipes._clip_config``).

Where the recipes leave the tests, it is so that the fixture has the real model's structure:

* ``tiny-sd3``: CLIP-L ⊕ CLIP-G rows (48 + 48) are zero-padded to the T5 width, as SD3's 768 + 1280
  are to 4096; the tests' ``joint_attention_dim=32`` would instead crop the CLIP-G half away, so
  here the T5 width and ``joint_attention_dim`` are 128.
* ``tiny-wan``: Wan 2.2's two experts (``transformer`` for high noise, ``transformer_2`` for low
  noise, ``boundary_ratio`` 0.875, as ``tests/pipelines/wan/test_wan_22.py``) with a umT5 encoder
  (``UMT5EncoderModel``, gated-GELU, as umT5-XXL) where the tests use T5.
* Every component has its own seed (its index in the recipe), so no two share weights: the tests
  seed all with 0, which would make the two CLIPs and the two Wan experts identical.

FLUX's transformer has no guidance embedder (``guidance_embeds`` False, as the tests and
FLUX.1-schnell). FLUX and Chroma use FLUX.1-dev's scheduler configuration (dynamic shifting), SD3
SD3-medium's (shift 3.0), Wan the tests' UniPC flow scheduler.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..t5_tokenizer import VOCAB_SIZE, write_t5_tokenizer
from ..tokenizer import OPEN_CLIP_PAD_TOKEN, write_clip_tokenizer
from .recipes import _clip_config, write_index

_SD3_JOINT_DIM = 128
# SD3's CLIP widths: 48 + 48 = 96 ≥ 77, so its 77 CLIP rows can be independent (as SD3's 2048-d ones are):
# an exact erase of every row the runtime feeds is possible, as on the real model (tests/compiler/test_dit_build.py)
_SD3_CLIP_WIDTH = 48
_FLUX_TRANSFORMER = {
    "patch_size": 1, "in_channels": 4, "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 16,
    "num_attention_heads": 2, "axes_dims_rope": (4, 4, 8),
}
_WAN_TRANSFORMER = {
    "patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 12, "in_channels": 16, "out_channels": 16,
    "text_dim": 32, "freq_dim": 256, "ffn_dim": 32, "num_layers": 2, "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 32,
}
WAN_BOUNDARY_RATIO = 0.875


def _encoder_values(d_model: int) -> dict:
    # hf-internal-testing/tiny-random-t5's config.json, the vocabulary our tokenizer's
    return {
        "vocab_size": VOCAB_SIZE, "d_model": d_model, "d_kv": 8, "d_ff": 37, "num_layers": 5, "num_heads": 4,
        "relative_attention_num_buckets": 8, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
    }


def t5_config(d_model: int = 32):
    from transformers import T5Config

    return T5Config(**_encoder_values(d_model), feed_forward_proj="relu")


def umt5_config(d_model: int = 32):
    from transformers import UMT5Config

    # umT5-XXL's activation and untied head; the sizes are tiny-random-t5's
    return UMT5Config(**_encoder_values(d_model), feed_forward_proj="gated-gelu", tie_word_embeddings=False)


def _t5(d_model: int = 32):
    from transformers import T5EncoderModel

    return T5EncoderModel(t5_config(d_model))


def _umt5():
    from transformers import UMT5EncoderModel

    return UMT5EncoderModel(umt5_config())


def _clip_l(with_projection: bool = False, width: int = 32):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    # OpenAI CLIP-L's activation and padding (EoT); width 32 as the tests' CLIP
    config = _clip_config(width, 4, "quick_gelu", 49407, projection_dim=32)
    return CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config)


def _clip_g(width: int = 32):
    from transformers import CLIPTextModelWithProjection

    # OpenCLIP bigG's activation and padding ("!", id 0)
    return CLIPTextModelWithProjection(_clip_config(width, 4, "gelu", 0, projection_dim=32))


def _flux_transformer(joint_attention_dim: int = 32):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(**_FLUX_TRANSFORMER, joint_attention_dim=joint_attention_dim, pooled_projection_dim=32)


def _chroma_transformer():
    from diffusers import ChromaTransformer2DModel

    return ChromaTransformer2DModel(
        **_FLUX_TRANSFORMER, joint_attention_dim=32,
        approximator_hidden_dim=32, approximator_layers=1, approximator_num_channels=16,
    )


def _sd3_transformer():
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=32, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=_SD3_JOINT_DIM, pooled_projection_dim=64, out_channels=4,
    )


def _wan_transformer():
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(**_WAN_TRANSFORMER)


def _vae(latent_channels: int):
    from diffusers import AutoencoderKL

    # the tests' one-block VAE (no downsampling); FLUX's packs 2×2 latents of 1 channel into 4
    return AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035,
    )


def _wan_vae():
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])


def _flow_scheduler(flux: bool):
    from diffusers import FlowMatchEulerDiscreteScheduler

    if flux:  # FLUX.1-dev's scheduler_config.json
        return FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
            base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
        )
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)  # SD3-medium's


def _wan_scheduler():
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)


def write_seeded(folder: Path, components: tuple[tuple[str, Callable], ...]) -> None:
    """Save each component, built after seeding the RNG with its index; the caller's RNG state is kept."""
    import torch

    with torch.random.fork_rng(devices=[]):
        for seed, (name, build) in enumerate(components):
            torch.manual_seed(seed)
            build().eval().save_pretrained(folder / name, safe_serialization=True)


def _index(pipeline: str, components: dict[str, tuple[str, str]], **settings) -> dict:
    import diffusers

    return {"_class_name": pipeline, "_diffusers_version": diffusers.__version__, **settings,
            **{name: list(kind) for name, kind in components.items()}}


_T5 = ("transformers", "T5EncoderModel")
_T5_TOKENIZER = ("transformers", "T5TokenizerFast")
_CLIP_TOKENIZER = ("transformers", "CLIPTokenizer")
_FLOW = ("diffusers", "FlowMatchEulerDiscreteScheduler")
_KL = ("diffusers", "AutoencoderKL")
_NO_IMAGE_ENCODER = {"feature_extractor": (None, None), "image_encoder": (None, None)}


def flux_index(text_encoder_2: tuple[str, str] = _T5, tokenizer_2: tuple[str, str] = _T5_TOKENIZER) -> dict:
    return _index("FluxPipeline", {
        **_NO_IMAGE_ENCODER, "scheduler": _FLOW, "text_encoder": ("transformers", "CLIPTextModel"),
        "text_encoder_2": text_encoder_2, "tokenizer": _CLIP_TOKENIZER, "tokenizer_2": tokenizer_2,
        "transformer": ("diffusers", "FluxTransformer2DModel"), "vae": _KL,
    })


def write_flux_parts(folder: Path, transformer: Callable, text_encoder_2: Callable | None) -> None:
    """FLUX's transformer, CLIP-L (``text_encoder``, pooled), VAE and scheduler; the T5 slot
    (``text_encoder_2``) when given, else the caller writes it."""
    parts = (("transformer", transformer), ("text_encoder", _clip_l), ("vae", lambda: _vae(1)))
    write_seeded(folder, parts + ((("text_encoder_2", text_encoder_2),) if text_encoder_2 else ()))
    _flow_scheduler(flux=True).save_pretrained(folder / "scheduler")
    write_clip_tokenizer(folder / "tokenizer")


def write_tiny_flux(folder: Path) -> None:
    write_flux_parts(folder, _flux_transformer, _t5)
    write_t5_tokenizer(folder / "tokenizer_2")
    write_index(folder, flux_index())


def write_tiny_chroma(folder: Path) -> None:
    write_seeded(folder, (("transformer", _chroma_transformer), ("text_encoder", _t5), ("vae", lambda: _vae(1))))
    _flow_scheduler(flux=True).save_pretrained(folder / "scheduler")
    write_t5_tokenizer(folder / "tokenizer")
    write_index(folder, _index("ChromaPipeline", {
        **_NO_IMAGE_ENCODER, "scheduler": _FLOW, "text_encoder": _T5, "tokenizer": _T5_TOKENIZER,
        "transformer": ("diffusers", "ChromaTransformer2DModel"), "vae": _KL,
    }))


def write_tiny_sd3(folder: Path) -> None:
    write_seeded(folder, (
        ("transformer", _sd3_transformer),
        ("text_encoder", lambda: _clip_l(with_projection=True, width=_SD3_CLIP_WIDTH)),
        ("text_encoder_2", lambda: _clip_g(_SD3_CLIP_WIDTH)),
        ("text_encoder_3", lambda: _t5(_SD3_JOINT_DIM)),
        ("vae", lambda: _vae(4)),
    ))
    _flow_scheduler(flux=False).save_pretrained(folder / "scheduler")
    write_clip_tokenizer(folder / "tokenizer")
    write_clip_tokenizer(folder / "tokenizer_2", pad_token=OPEN_CLIP_PAD_TOKEN)
    write_t5_tokenizer(folder / "tokenizer_3")
    clip = ("transformers", "CLIPTextModelWithProjection")
    write_index(folder, _index("StableDiffusion3Pipeline", {
        **_NO_IMAGE_ENCODER, "scheduler": _FLOW, "text_encoder": clip, "text_encoder_2": clip, "text_encoder_3": _T5,
        "tokenizer": _CLIP_TOKENIZER, "tokenizer_2": _CLIP_TOKENIZER, "tokenizer_3": _T5_TOKENIZER,
        "transformer": ("diffusers", "SD3Transformer2DModel"), "vae": _KL,
    }))


def write_tiny_wan(folder: Path) -> None:
    write_seeded(folder, (
        ("transformer", _wan_transformer),
        ("transformer_2", _wan_transformer),
        ("text_encoder", _umt5),
        ("vae", _wan_vae),
    ))
    _wan_scheduler().save_pretrained(folder / "scheduler")
    write_t5_tokenizer(folder / "tokenizer")
    wan = ("diffusers", "WanTransformer3DModel")
    write_index(folder, _index("WanPipeline", {
        "scheduler": ("diffusers", "UniPCMultistepScheduler"), "text_encoder": ("transformers", "UMT5EncoderModel"),
        "tokenizer": _T5_TOKENIZER, "transformer": wan, "transformer_2": wan, "vae": ("diffusers", "AutoencoderKLWan"),
    }, boundary_ratio=WAN_BOUNDARY_RATIO, expand_timesteps=False))

