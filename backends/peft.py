"""The PEFT/diffusers LoRA backend (``output.format: peft``), the layout diffusers itself writes.

The layout ``save_lora_weights`` writes (research/ecosystem.md §1.3): per site
``<component>.<diffusers module path>.lora_A.weight`` [r, in] and ``.lora_B.weight`` [out, r], no alpha
tensors, and the LoRA config in the header as ``lora_adapter_metadata`` (JSON of ``LoraConfig``
keyword arguments prefixed ``<component>.``), with ``lora_alpha = r`` so PEFT's scaling is exactly 1.
The component is ``unet`` for SD1/SD2/SDXL and ``transformer`` for the diffusion transformers
(``erasec.ir.naming.peft_component``): diffusers' loaders keep only keys and config entries under it.
Diffusers loads it with ``load_lora_weights`` on every pipeline erasec targets; A1111 and ComfyUI do not
match these names for SD attention layers (§1.4, §1.5) — use the kohya format there. For FLUX,
Chroma and SD3, ComfyUI maps ``transformer.<diffusers path>`` too (docs/models.md, "DiT patches: which
file loads where").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar, Mapping

import numpy as np

from erasec.ir import ModelTarget, Solution
from erasec.ir.naming import peft_adapter_config, peft_module_name

from .factors import LoraOptions, site_factors, uniform_rank

ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY


@dataclass(frozen=True, slots=True, kw_only=True)
class PeftOptions(LoraOptions):
    format: ClassVar[str] = "peft"


def build_peft(
    solution: Solution,
    target: ModelTarget,
    base_weights: Mapping[str, np.ndarray],
    options: PeftOptions = PeftOptions(),
) -> tuple[dict[str, object], int, dict[str, str]]:
    """(tensors by key, uniform rank, the header keys diffusers reads) of the LoRA for ``solution``."""
    rank = uniform_rank(solution, options)
    tensors: dict[str, object] = {}
    modules = []
    for site, up, down in site_factors(solution, target, base_weights, options, rank):
        name = peft_module_name(site, target.family)
        tensors[f"{name}.lora_A.weight"] = down
        tensors[f"{name}.lora_B.weight"] = up
        modules.append(site.module_path)
    config = peft_adapter_config(target.family, rank, modules)
    return tensors, rank, {ADAPTER_METADATA_KEY: json.dumps(config, sort_keys=True)}

