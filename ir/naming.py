"""Names of one edited site in every layout a patch or checkpoint uses.

A ``LinearSite`` is named by its diffusers module path. The other spellings follow from it:

* **LDM/SGM** (single-file checkpoints, kohya's SDXL UNet): research/ecosystem.md §3.2–§3.4. With
  ``L = layers_per_block`` (2 in SD1.x, SD2.x and SDXL), ``down_blocks.i.attentions.j`` ↔
  ``input_blocks.{1+i(L+1)+j}.1``, ``mid_block.attentions.0`` ↔ ``middle_block.1``,
  ``up_blocks.i.attentions.j`` ↔ ``output_blocks.{i(L+1)+j}.1``; inside a Transformer2D block the
  names are identical. SDXL's ``add_embedding.linear_{1,2}`` ↔ ``label_emb.0.{0,2}``.
* **kohya** (research/ecosystem.md §1.2, §1.7): ``lora_unet_`` + module path with dots → underscores;
  diffusers paths for SD1/SD2 (kohya's own SD1/2 UNet uses them, LDM names are a silent no-op
  there), LDM/SGM paths for SDXL (kohya's ``SdxlUNet2DConditionModel``).
* **PEFT/diffusers** (research/ecosystem.md §1.3): ``unet.`` + diffusers module path.
* **checkpoint**: ``model.diffusion_model.`` + LDM path + ``.weight`` in a single file; the diffusers
  path + ``.weight`` inside ``unet/diffusion_pytorch_model.safetensors`` of a folder.

The diffusion transformers (flux, chroma, sd3, wan) have their own tables in ``dit_naming.py``: their
kohya names follow the native single-file paths (``lora_unet_txt_in``, ``lora_unet_y_embedder_mlp_0``,
``lora_unet_blocks_0_cross_attn_k``) and their PEFT names start ``transformer.``.
"""

from __future__ import annotations

import re
from typing import Literal

from .dit_naming import is_dit, native_module_path
from .errors import VerifyError
from .target import LinearSite

LAYERS_PER_BLOCK = 2  # SD1.x, SD2.x and SDXL (research/ecosystem.md §3.2)
LDM_UNET_PREFIX = "model.diffusion_model."
Layout = Literal["diffusers", "single-file"]

_DIFFUSERS_BLOCK = re.compile(r"^(?:(down|up)_blocks\.(\d+)\.attentions\.(\d+)|mid_block\.attentions\.0)\.(.+)$")
_LDM_BLOCK = re.compile(r"^(?:(input|output)_blocks\.(\d+)\.1|middle_block\.1)\.(.+)$")
_EMBEDDING = {"add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}


def ldm_module_path(module_path: str, layers_per_block: int = LAYERS_PER_BLOCK) -> str:
    """``down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_v`` → ``input_blocks.8.1.…attn2.to_v``."""
    for diffusers, ldm in _EMBEDDING.items():
        if module_path == diffusers or module_path.startswith(diffusers + "."):
            return ldm + module_path[len(diffusers) :]
    match = _DIFFUSERS_BLOCK.match(module_path)
    if match is None:
        raise VerifyError(f"site {module_path}: not inside a UNet attention block; no LDM name")
    kind, block, index, rest = match.groups()
    if kind is None:
        return f"middle_block.1.{rest}"
    block, index = int(block), int(index)
    if index > layers_per_block:
        raise VerifyError(f"site {module_path}: attention {index} exceeds layers_per_block {layers_per_block}")
    if kind == "down":
        return f"input_blocks.{1 + block * (layers_per_block + 1) + index}.1.{rest}"
    return f"output_blocks.{block * (layers_per_block + 1) + index}.1.{rest}"


def diffusers_module_path(ldm_path: str, layers_per_block: int = LAYERS_PER_BLOCK) -> str:
    """The inverse of ``ldm_module_path``."""
    for diffusers, ldm in _EMBEDDING.items():
        if ldm_path == ldm or ldm_path.startswith(ldm + "."):
            return diffusers + ldm_path[len(ldm) :]
    match = _LDM_BLOCK.match(ldm_path)
    if match is None:
        raise VerifyError(f"LDM path {ldm_path}: not a UNet attention block; no diffusers name")
    kind, number, rest = match.groups()
    if kind is None:
        return f"mid_block.attentions.0.{rest}"
    number = int(number)
    if kind == "input":
        if number < 1:
            raise VerifyError(f"LDM path {ldm_path}: input block 0 is conv_in, not an attention block")
        block, index = divmod(number - 1, layers_per_block + 1)
        return f"down_blocks.{block}.attentions.{index}.{rest}"
    block, index = divmod(number, layers_per_block + 1)
    return f"up_blocks.{block}.attentions.{index}.{rest}"


def kohya_module_name(site: LinearSite | str, family: str) -> str:
    """The kohya module name of a site: diffusers-style for SD1/SD2, SGM/LDM-style for SDXL (§1.7), the
    native single-file path for a diffusion transformer (kohya's FLUX and SD3 networks and musubi-tuner's
    Wan network wrap the BFL/SAI/Wan modules: ``lora_unet_txt_in``, ``lora_unet_blocks_0_cross_attn_k``)."""
    path = site.module_path if isinstance(site, LinearSite) else site
    if is_dit(family):
        path = native_module_path(path, family)
    elif family == "sdxl":
        path = ldm_module_path(path)
    return "lora_unet_" + path.replace(".", "_")


def peft_component(family: str) -> str:
    """The pipeline component a PEFT patch's names and ``lora_adapter_metadata`` keys start with:
    diffusers' loaders keep only the keys under it (``load_lora_adapter``'s ``prefix``)."""
    return "transformer" if is_dit(family) else "unet"


def peft_module_name(site: LinearSite | str, family: str) -> str:
    """``unet.<diffusers module path>`` (SD) or ``transformer.<…>`` (DiT): the prefix diffusers'
    ``load_lora_weights`` routes to the denoiser."""
    path = site.module_path if isinstance(site, LinearSite) else site
    return f"{peft_component(family)}.{path}"


def peft_adapter_config(family: str, rank: int, modules: list[str]) -> dict[str, object]:
    """A PEFT patch's ``lora_adapter_metadata``: r = lora_alpha = rank (scaling exactly 1) over exactly
    ``modules``, keyed under the component diffusers filters the config by (``peft_component``)."""
    component = peft_component(family)
    return {f"{component}.r": rank, f"{component}.lora_alpha": rank, f"{component}.target_modules": sorted(modules)}


def checkpoint_weight_name(site: LinearSite | str, layout: Layout) -> str:
    """The weight's tensor name in a checkpoint of ``layout``."""
    path = site.module_path if isinstance(site, LinearSite) else site
    if layout == "single-file":
        return f"{LDM_UNET_PREFIX}{ldm_module_path(path)}.weight"
    return f"{path}.weight"
