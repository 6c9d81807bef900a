"""``erasec export-single-file`` for a diffusion-transformer folder: its transformer as one native
single file (BFL's FLUX.1 names, SAI's MMDiT names for SD3, Wan's; ``models/dit_layout.py``), as the
model sites ship them, and its text encoders as separate files in ComfyUI's layout — one HF state
dict per encoder (``t5.safetensors``, ``clip_l.safetensors``, ``clip_g.safetensors``), with a T5
encoder's tokenizer folder beside it (``t5_tokenizer/``), since an encoder file holds no vocabulary.

A config field the reader cannot take from the shapes (``text_encoders.infer_clip_config``,
``dit_inputs.infer_t5_config``; the tiny built-ins' CLIP head count, say) is written in the
encoder file's header under ``erasec.text_encoders`` (per slot), as the SD single files do.
The transformer's own ``config.json`` is recorded in its header (``erasec.transformer_config``).
Wan 2.2's second expert (``transformer_2/``) is not written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ...errors import ModelError
from ..families import FAMILIES, Family
from ..layout import TEXT_CONFIG_METADATA

TRANSFORMER_CONFIG_METADATA = "erasec.transformer_config"
_WEIGHTS = "diffusion_pytorch_model.safetensors"


def dit_folder_family(folder: Path) -> Family | None:
    """The diffusion-transformer family that claims the diffusers folder, or None."""
    claimed = [family for family in FAMILIES.values() if family.transformer and family.in_folder(folder)]
    return claimed[0] if len(claimed) == 1 else None


def write_dit_single_file(folder: Path, output: Path, encoders: Path | None = None) -> int:
    """Write the folder's transformer to ``output`` under its native names (and, with ``encoders``,
    its text encoders and T5 tokenizers into that folder, which must be new or empty); returns the
    transformer file's size."""
    folder = Path(folder)
    facts = dit_folder_family(folder)
    if facts is None:
        raise ModelError(f"{folder}: not a FLUX, Chroma, SD3 or Wan diffusers folder (transformer/config.json)")
    if facts.to_native is None:
        raise ModelError(f"{folder}: export-single-file does not write {facts.pipeline} transformers yet "
                         "(no native name map); use the folder")
    if encoders is not None:
        encoders = Path(encoders)
        if encoders.exists() and (not encoders.is_dir() or any(encoders.iterdir())):
            raise ModelError(f"{encoders}: --text-encoders must be a new or empty folder (nothing there is replaced)")
    try:
        size = _write_transformer(folder, facts, Path(output))
        if encoders is not None:
            _write_encoders(folder, facts, encoders)
    except (OSError, KeyError, ValueError) as error:
        raise ModelError(f"{folder}: cannot write it as a single file ({type(error).__name__}: {error})") from None
    return size


def _write_transformer(folder: Path, facts: Family, output: Path) -> int:
    from erasec.patches.safetensors_io import atomic_write, serialize
    from safetensors.torch import load_file

    source = folder / facts.denoiser
    native = facts.to_native(load_file(str(source / _WEIGHTS)))
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    recorded = {key: value for key, value in config.items() if not key.startswith("_")}
    raw = serialize(native, {TRANSFORMER_CONFIG_METADATA: json.dumps(recorded, sort_keys=True)})
    atomic_write(output, raw)
    return len(raw)


def _write_encoders(folder: Path, facts: Family, encoders: Path) -> None:
    from erasec.patches.safetensors_io import atomic_write, serialize
    from safetensors.torch import load_file

    from ..dit_inputs import t5_config_overrides
    from ..sd_components import TOKENIZER_OF
    from ..text_encoders import clip_config_overrides

    encoders.mkdir(parents=True, exist_ok=True)
    for slot in facts.encoder_slots:
        component = folder / slot.component
        if not component.is_dir():
            continue
        state = load_file(str(component / "model.safetensors"))
        config = json.loads((component / "config.json").read_text(encoding="utf-8"))
        if slot.model_class.startswith("CLIP"):
            shapes = {key.removeprefix("text_model."): tuple(value.shape) for key, value in state.items()}
            differing = clip_config_overrides(config, shapes, open_clip=slot.slot == "clip_g")
            # ComfyUI's clip_l/clip_g files keep transformers 4's text_model. level (transformers 5 saves without it)
            state = {key if key == "text_projection.weight" or key.startswith("text_model.") else f"text_model.{key}": value
                     for key, value in state.items()}
        else:
            differing = t5_config_overrides(config, {key: tuple(value.shape) for key, value in state.items()})
            shutil.copytree(folder / TOKENIZER_OF[slot.component], encoders / f"{slot.slot}_tokenizer")
        metadata = {TEXT_CONFIG_METADATA: json.dumps({slot.slot: differing}, sort_keys=True)} if differing else {}
        atomic_write(encoders / f"{slot.slot}.safetensors", serialize(state, metadata))
