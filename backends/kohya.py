"""The kohya LoRA backend: the format that loads unchanged in diffusers, ComfyUI, A1111/Forge, kohya.

Per site three tensors, ``<name>.lora_down.weight`` [r, in], ``<name>.lora_up.weight`` [out, r] and
``<name>.alpha`` = r, with ``<name>`` from ``erasec.ir.naming.kohya_module_name``: diffusers-style
(``lora_unet_down_blocks_0_…``) for SD1/SD2, SGM/LDM-style (``lora_unet_input_blocks_4_1_…``) for
SDXL (research/ecosystem.md §1.2, §1.7). Exactness conditions (§1.7): **one rank r in every module
with alpha = r everywhere** (``backends/factors.py``); no ``.diff``, ``dora_scale``, ``lora_A/B`` or
``lora_adapter_metadata``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping

import numpy as np

from erasec.ir import ModelTarget, Solution
from erasec.ir.naming import kohya_module_name

from .factors import LoraOptions, site_factors, torch_dtype, uniform_rank


@dataclass(frozen=True, slots=True, kw_only=True)
class KohyaOptions(LoraOptions):
    format: ClassVar[str] = "kohya"


def build_kohya(
    solution: Solution,
    target: ModelTarget,
    base_weights: Mapping[str, np.ndarray],
    options: KohyaOptions = KohyaOptions(),
) -> tuple[dict[str, object], int]:
    """(tensors by key, uniform rank) of the LoRA for ``solution``; ``base_weights`` by module path."""
    import torch

    rank = uniform_rank(solution, options)
    tensors: dict[str, object] = {}
    for site, up, down in site_factors(solution, target, base_weights, options, rank):
        name = kohya_module_name(site, target.family)
        tensors[f"{name}.lora_down.weight"] = down
        tensors[f"{name}.lora_up.weight"] = up
        tensors[f"{name}.alpha"] = torch.tensor(float(rank), dtype=torch_dtype(options.dtype))
    return tensors, rank
