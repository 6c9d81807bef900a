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
from ..builtin import minilm as semantic
from ..layout import CLIP_PREFIXES
from ..tensor_files import read_json
from ..tokenizer import EOS_TOKEN, OPEN_CLIP_PAD_TOKEN
from .family import Encoder, Family

_SDXL_OPEN_CLIP = "conditioner.embedders.1.model.token_embedding.weight"
_SD2_OPEN_CLIP = "cond_stage_model.model.token_embedding.weight"
_SD1_CLIP = "cond_stage_model.transformer."


def _text_config(path: Path) -> dict:
    return read_json(path / "text_encoder" / "config.json")


def _folder_act(path: Path) -> str | None:
    """The one-encoder folder's CLIP activation, or None for an SDXL folder (never read then)."""
    if (path / "text_encoder_2").is_dir():
        return None
    config = _text_config(path)
    return "quick_gelu" if semantic.is_bert(config) else config.get("hidden_act")  # BERT: an SD1-shaped test bed


def _single_file_kind(keys: set[str]) -> str | None:
    if _SDXL_OPEN_CLIP in keys:
        return "sdxl"
    if _SD2_OPEN_CLIP in keys:
        return "sd2"
    if any(k.startswith(_SD1_CLIP) for k in keys):
        return "sd1"
    return None


def _sd1_width(shapes: Mapping[str, tuple], location: str) -> int:
    prefix = CLIP_PREFIXES["sd1"][0]
    names = [f"{prefix}text_model.embeddings.token_embedding.weight", f"{prefix}embeddings.token_embedding.weight"]
    widths = [shapes[n][1] for n in names if n in shapes]
    if not widths:
        raise ModelError(f"{location}: the SD1 text encoder has no token embedding; incomplete checkpoint")
    return sum(widths)


def _sd2_width(shapes: Mapping[str, tuple], location: str) -> int:
    return shapes[_SD2_OPEN_CLIP][1]


def _sdxl_width(shapes: Mapping[str, tuple], location: str) -> int:
    first = CLIP_PREFIXES["sdxl"][0] + "text_model.embeddings.token_embedding.weight"
    widths = [shapes[name][1] for name in (first, _SDXL_OPEN_CLIP) if name in shapes]
    if len(widths) != 2:
        raise ModelError(f"{location}: an SDXL checkpoint without conditioner.embedders.0 (CLIP-L); incomplete")
    return sum(widths)


SD1 = Family(
    name="sd1",
    key_space="clip-l",
    encoders=(Encoder("text_encoder", "last", EOS_TOKEN),),
    pipeline="StableDiffusionPipeline",
    pooled=False,
    in_folder=lambda path: _folder_act(path) == "quick_gelu",
    in_single_file=lambda keys: _single_file_kind(keys) == "sd1",
    text_width=_sd1_width,
)
SD2 = Family(
    name="sd2",
    key_space="open-clip-h",
    encoders=(Encoder("text_encoder", "last", OPEN_CLIP_PAD_TOKEN),),
    pipeline="StableDiffusionPipeline",
    pooled=False,
    in_folder=lambda path: _folder_act(path) == "gelu",
    in_single_file=lambda keys: _single_file_kind(keys) == "sd2",
    text_width=_sd2_width,
)
SDXL = Family(
    name="sdxl",
    key_space="clip-l+bigg",
    encoders=(
        Encoder("text_encoder", "penultimate", EOS_TOKEN),
        Encoder("text_encoder_2", "penultimate", OPEN_CLIP_PAD_TOKEN),
    ),
    pipeline="StableDiffusionXLPipeline",
    pooled=True,
    in_folder=lambda path: (path / "text_encoder_2").is_dir(),
    in_single_file=lambda keys: _single_file_kind(keys) == "sdxl",
    text_width=_sdxl_width,
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
