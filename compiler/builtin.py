"""Built-in tiny models: small diffusers folders made from a fixed seed, for tests and examples.

``builtin:tiny-sd1`` has SD1.5's exact UNet block structure (so its 16 ``attn2`` modules have
SD1.5's module paths) with tiny channels, a 2-layer CLIP text encoder over the real CLIP vocabulary,
and a tiny VAE. It is built on first use under ``<cache>/models/<name>-v<version>`` and reused; the
build is byte-reproducible (same library versions), and the folder appears atomically.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ModelError
from .tokenizer import write_clip_tokenizer

logger = logging.getLogger(__name__)

BUILTIN_MODELS: tuple[str, ...] = ("tiny-sd1",)
# Bump when the recipe changes, so stale cached folders are not reused.
_VERSION = 1
_SEED = 0
_CROSS_DIM = 32


def _cache_root(cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("ERASEC_CACHE_DIR")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "erasec"


def _build_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=2,
        norm_num_groups=8,
        attention_head_dim=2,  # diffusers' legacy name: this is the number of heads
        cross_attention_dim=_CROSS_DIM,
    )


def _build_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=_CROSS_DIM,
        intermediate_size=37,
        projection_dim=_CROSS_DIM,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(config)


def _build_vae():
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


def _build_scheduler():
    from diffusers import PNDMScheduler

    # SD1.5's scheduler/scheduler_config.json values.
    return PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )


def _model_index() -> dict[str, object]:
    import diffusers

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


def _write_tiny_sd1(folder: Path) -> None:
    import torch

    # Each component is seeded on its own so changing one leaves the others' weights unchanged;
    # fork_rng keeps the caller's global RNG state untouched.
    with torch.random.fork_rng(devices=[]):
        for name, build in (("unet", _build_unet), ("text_encoder", _build_text_encoder), ("vae", _build_vae)):
            torch.manual_seed(_SEED)
            model = build().eval()
            model.save_pretrained(folder / name, safe_serialization=True)
    _build_scheduler().save_pretrained(folder / "scheduler")
    write_clip_tokenizer(folder / "tokenizer")
    (folder / "model_index.json").write_text(json.dumps(_model_index(), indent=2, sort_keys=True) + "\n", encoding="utf-8")


_BUILDERS = {"tiny-sd1": _write_tiny_sd1}


def builtin_model_path(name: str, cache_dir: Path | None = None) -> Path:
    """The folder of built-in model ``name``, building it on first use.

    The cache root is ``cache_dir``, else ``$ERASEC_CACHE_DIR``, else ``~/.cache/erasec``. The model
    is written to a temporary folder beside its final place and renamed, so a reader never sees a
    half-written folder; when two processes race, the loser discards its copy.
    """
    if name not in _BUILDERS:
        raise ModelError(f"builtin:{name}: unknown built-in model; available: {', '.join(BUILTIN_MODELS)}")
    models = _cache_root(cache_dir) / "models"
    final = models / f"{name}-v{_VERSION}"
    if final.is_dir():
        return final
    models.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=models))
    try:
        logger.info("building builtin:%s in %s", name, final)
        _BUILDERS[name](staging)
        try:
            os.replace(staging, final)
        except OSError:
            if not final.is_dir():
                raise
            logger.info("builtin:%s was built concurrently; using %s", name, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final
