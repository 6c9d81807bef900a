"""What ``erasec models`` and ``erasec cache info`` show of the built-in models: each one's family,
what it is for, and where it is (or will be) cached, built or not. Nothing is built here:
locations come from ``builtin.builtin_location``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..cache_dir import cache_root
from . import BUILTIN_MODELS, DIT_BUILTIN_MODELS, SINGLE_FILE_SUFFIX, builtin_location

# name -> (family, what it is); the recipes are in builtin.py's docstring
_ABOUT = {
    "tiny-sd1": ("sd1", "SD1.5's UNet layout, tiny random weights, random 32-d CLIP encoder: shapes only, no semantics"),
    "tiny-sd2": ("sd2", "SD2's UNet layout, tiny random weights, random OpenCLIP-style encoder: shapes only"),
    "tiny-sdxl": ("sdxl", "SDXL base's 70 attn2 layers, tiny random weights, two random encoders: shapes only"),
    "minilm-sd1": ("sd1", "the semantic test bed: tiny SD1 UNet read by pretrained all-MiniLM-L6-v2 (semantic extra)"),
    "tiny-flux": ("flux", "FLUX.1's transformer at diffusers' test shapes, random T5 and CLIP-L encoders: shapes only"),
    "tiny-chroma": ("chroma", "Chroma's transformer at diffusers' test shapes, a random T5 encoder: shapes only"),
    "tiny-sd3": ("sd3", "SD3's MMDiT at diffusers' test shapes, random CLIP-L, CLIP-G and T5 encoders: shapes only"),
    "tiny-wan": ("wan", "Wan 2.2's two experts (transformer, transformer_2) at diffusers' test shapes, random umT5: shapes only"),
    "minilm-flux": ("flux", "the DiT semantic test bed: tiny FLUX transformer read by pretrained all-MiniLM-L6-v2 (semantic extra)"),
}


@dataclass(frozen=True, slots=True)
class CachedCopy:
    path: Path
    built: bool
    bytes: int

    def as_dict(self) -> dict:
        return {"path": str(self.path), "built": self.built, "bytes": self.bytes}


def _copy(path: Path) -> CachedCopy:
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
        return CachedCopy(path, True, sum(p.stat().st_size for p in files))
    if path.is_file():
        return CachedCopy(path, True, path.stat().st_size)
    return CachedCopy(path, False, 0)


@dataclass(frozen=True, slots=True)
class BuiltinModel:
    name: str
    family: str
    about: str
    folder: CachedCopy  # builtin:NAME
    single_file: CachedCopy | None  # builtin:NAME.safetensors; None where there is none (the DiTs)

    def as_dict(self) -> dict:
        return {
            "name": self.name, "location": f"builtin:{self.name}", "family": self.family, "about": self.about,
            "folder": self.folder.as_dict(), "single_file": self.single_file.as_dict() if self.single_file else None,
        }


def builtin_models(cache_dir: Path | None = None) -> tuple[BuiltinModel, ...]:
    """Every built-in model, with its two cached forms (built on first use, never here)."""
    return tuple(
        BuiltinModel(
            name=name, family=_ABOUT[name][0], about=_ABOUT[name][1],
            folder=_copy(builtin_location(name, cache_dir)),
            single_file=None if name in DIT_BUILTIN_MODELS else _copy(builtin_location(name + SINGLE_FILE_SUFFIX, cache_dir)),
        )
        for name in BUILTIN_MODELS
    )


def builtin_cache_info(cache_dir: Path | None = None) -> dict:
    """The built-in models' share of the erasec cache (``erasec cache info``): their folders, the copies built, bytes."""
    models = builtin_models(cache_dir)
    built = [copy for model in models for copy in (model.folder, model.single_file) if copy and copy.built]
    return {
        "root": str(cache_root(cache_dir)),
        "built": [str(copy.path) for copy in built],
        "bytes": sum(copy.bytes for copy in built),
    }
