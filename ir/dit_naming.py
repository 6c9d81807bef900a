"""Names of a diffusion-transformer site (FLUX.1, Chroma, SD3/SD3.5, Wan) in every layout.

A DiT ``LinearSite`` is named by its diffusers module path inside the transformer. The native
single-file checkpoints keep their authors' names instead, and kohya and ComfyUI name LoRA modules
after those native paths:

=========  ==========================================  ===============================
family     diffusers module path                       native (single-file) path
=========  ==========================================  ===============================
flux       ``context_embedder``                        ``txt_in`` (BFL)
flux       ``time_text_embed.text_embedder.linear_1``  ``vector_in.in_layer`` (BFL)
chroma     ``context_embedder``                        ``txt_in`` (BFL layout)
sd3        ``context_embedder``                        ``context_embedder`` (SAI MMDiT)
sd3        ``time_text_embed.text_embedder.linear_1``  ``y_embedder.mlp.0`` (SAI MMDiT)
wan        ``blocks.{i}.attn2.to_k`` / ``.to_v``       ``blocks.{i}.cross_attn.k`` / ``.v``
=========  ==========================================  ===============================

Read in diffusers 0.42.1 (``loaders/single_file_utils.py``: the FLUX/SD3/Wan checkpoint converters),
ComfyUI ``comfy/utils.py`` ``flux_to_diffusers`` and ``MMDIT_MAP_BASIC`` (Comfy-Org/ComfyUI@a125cd8),
kohya sd-scripts ``library/flux_models.py`` (``self.txt_in``, ``self.vector_in = MLPEmbedder`` with
``in_layer``) and ``library/sd3_models.py`` (``context_embedder``, ``y_embedder = Embedder`` whose
``mlp`` is ``Sequential(Linear, SiLU, Linear)``) at kohya-ss/sd-scripts@48d368f.

Prefixes: a real single file holds the native names bare (BFL's ``flux1-dev.safetensors``, Wan's
release) or under ``model.diffusion_model.`` (files saved by ComfyUI or SAI: diffusers'
``CHECKPOINT_KEY_NAMES`` lists both spellings for flux, chroma, sd3 and wan). ``diffusion_model.``
without ``model.`` is ComfyUI's in-memory model prefix, the one its LoRA key map
(``comfy/lora.py`` ``model_lora_keys_unet``) starts from.
"""

from __future__ import annotations

import re

from .errors import VerifyError

DIT_FAMILIES = ("flux", "chroma", "sd3", "wan")
SINGLE_FILE_PREFIXES = ("", "model.diffusion_model.")
COMFY_MODEL_PREFIX = "diffusion_model."
POOLED_SITE = "time_text_embed.text_embedder.linear_1"
CONTEXT_SITE = "context_embedder"
# the largest T5 padding a spec may ask for and a patch may record (erasec.base.sequence_length):
# beyond any pipeline's max_sequence_length (T5's own is 512)
MAX_SEQUENCE_LENGTH = 4096

_FIXED_SITES = {  # family: {diffusers module path: native module path}
    "flux": {CONTEXT_SITE: "txt_in", POOLED_SITE: "vector_in.in_layer"},
    "chroma": {CONTEXT_SITE: "txt_in"},
    "sd3": {CONTEXT_SITE: "context_embedder", POOLED_SITE: "y_embedder.mlp.0"},
    "wan": {},
}
_WAN_DIFFUSERS = re.compile(r"blocks\.(\d{1,4})\.attn2\.to_([kv])")
_WAN_NATIVE = re.compile(r"blocks\.(\d{1,4})\.cross_attn\.([kv])")
_SITES_TEXT = {
    "flux": f"{CONTEXT_SITE} or {POOLED_SITE}",
    "chroma": CONTEXT_SITE,
    "sd3": f"{CONTEXT_SITE} or {POOLED_SITE}",
    "wan": "blocks.{i}.attn2.to_k/to_v",
}


def is_dit(family: str) -> bool:
    return family in DIT_FAMILIES


def _table(family: str) -> dict[str, str]:
    if family not in _FIXED_SITES:
        raise VerifyError(f"family {family!r} is not a diffusion transformer ({', '.join(DIT_FAMILIES)})")
    return _FIXED_SITES[family]


def native_module_path(module_path: str, family: str) -> str:
    """``context_embedder`` → ``txt_in`` (flux), ``blocks.3.attn2.to_v`` → ``blocks.3.cross_attn.v`` (wan)."""
    table = _table(family)
    if module_path in table:
        return table[module_path]
    match = _WAN_DIFFUSERS.fullmatch(module_path) if family == "wan" else None
    if match is None:
        raise VerifyError(f"site {module_path}: not a {family} site erasec edits ({_SITES_TEXT[family]})")
    block, kind = match.groups()
    return f"blocks.{int(block)}.cross_attn.{kind}"


def dit_diffusers_path(native_path: str, family: str) -> str:
    """The inverse of ``native_module_path``."""
    for diffusers, native in _table(family).items():
        if native == native_path:
            return diffusers
    match = _WAN_NATIVE.fullmatch(native_path) if family == "wan" else None
    if match is None:
        raise VerifyError(f"native path {native_path}: not a {family} site erasec edits")
    block, kind = match.groups()
    return f"blocks.{int(block)}.attn2.to_{kind}"


def is_dit_site(module_path: str, family: str) -> bool:
    """Whether ``module_path`` (diffusers) is a site erasec edits in ``family``."""
    try:
        native_module_path(module_path, family)
    except VerifyError:
        return False
    return True


def sites_text(family: str) -> str:
    """The family's editable sites in words, for refusals."""
    _table(family)
    return _SITES_TEXT[family]


def native_weight_name(module_path: str, family: str, prefix: str = "") -> str:
    """The weight's tensor name in a single file whose keys carry ``prefix`` (``SINGLE_FILE_PREFIXES``)."""
    if prefix not in SINGLE_FILE_PREFIXES:
        raise VerifyError(f"single-file prefix {prefix!r} is not one of {SINGLE_FILE_PREFIXES}")
    return f"{prefix}{native_module_path(module_path, family)}.weight"


def comfy_weight_key(module_path: str, family: str) -> str:
    """The weight's key in ComfyUI's loaded model, the target its LoRA key map resolves names to."""
    return f"{COMFY_MODEL_PREFIX}{native_module_path(module_path, family)}.weight"
