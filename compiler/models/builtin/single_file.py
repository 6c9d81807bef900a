"""``builtin:NAME.safetensors`` and ``erasec export-single-file``: a diffusers folder written as one
LDM/SGM single-file checkpoint, its UNet config (and any text-encoder config its shapes cannot give)
in the header."""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import ModelError
from ..families import FAMILIES
from ..layout import TEXT_CONFIG_METADATA, UNET_CONFIG_METADATA

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
    the header as ``erasec.unet_config``, so the file describes its UNet (``compiler/models/unet_configs.py``).
    """
    from safetensors.torch import load_file

    from erasec.patches.safetensors_io import atomic_write, serialize

    from .. import layout
    from ..text_encoders import clip_config_overrides

    folder = Path(folder)
    json.loads((folder / "model_index.json").read_text(encoding="utf-8"))  # a diffusers folder has one
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
    claimed = [family for family in FAMILIES.values() if family.in_folder(folder)]
    if len(claimed) != 1:
        raise ValueError(f"{len(claimed)} families claim it")
    for encoder in claimed[0].single_file:
        component = encoder.component
        state = load_file(str(folder / component / "model.safetensors"))
        config = json.loads((folder / component / "config.json").read_text(encoding="utf-8"))
        shapes = {key.removeprefix("text_model."): tuple(value.shape) for key, value in state.items()}
        differing = clip_config_overrides(config, shapes, open_clip=encoder.open_clip)
        if differing:
            overrides[component] = differing
        if not encoder.open_clip:
            prefix = encoder.prefix + "text_model."
            for key, value in state.items():
                tensors[prefix + key.removeprefix("text_model.")] = value
        else:
            for key, value in layout.clip_to_open_clip(state, extra_block=encoder.extra_block).items():
                tensors[encoder.prefix + key] = value
    metadata = {TEXT_CONFIG_METADATA: json.dumps(overrides, sort_keys=True)} if overrides else {}
    recorded = {key: value for key, value in unet_config.items() if not key.startswith("_")}
    metadata[UNET_CONFIG_METADATA] = json.dumps(recorded, sort_keys=True)
    raw = serialize(tensors, metadata)
    atomic_write(Path(output), raw)
    return len(raw)
