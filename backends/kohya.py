"""The kohya LoRA backend: the format that loads unchanged in diffusers, ComfyUI, A1111/Forge, kohya.

Per site three tensors, ``<name>.lora_down.weight`` [r, in], ``<name>.lora_up.weight`` [out, r] and
``<name>.alpha`` = r, with ``<name> = lora_unet_<diffusers module path, dots → underscores>`` for
SD1/SD2 (research/ecosystem.md §1.2, §1.7). Exactness conditions (§1.7): **one rank r in every
module with alpha = r everywhere** (diffusers applies the most common alpha to every module, so a
per-module alpha is silently wrong, §1.3) — smaller ranks are zero-padded, which leaves the
product bit-identical; no ``.diff``, ``dora_scale``, ``lora_A/B`` or ``lora_adapter_metadata``.

Factors are formed in float64 and narrowed to the output dtype here, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping

import numpy as np

from erasec.ir import ModelTarget, Solution

from .errors import BackendError


@dataclass(frozen=True, slots=True, kw_only=True)
class KohyaOptions:
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    rank: int | None = None  # pad every module to this rank; None = the largest solved rank

    def __post_init__(self) -> None:
        if self.dtype not in ("fp32", "fp16", "bf16"):
            raise BackendError(f"kohya: dtype {self.dtype!r} is not one of fp32, fp16, bf16")
        if self.rank is not None and self.rank < 1:
            raise BackendError(f"kohya: rank {self.rank} must be ≥ 1")


def kohya_module_name(module_path: str) -> str:
    """``down_blocks.0.attentions.0…attn2.to_k`` → ``lora_unet_down_blocks_0_attentions_0…attn2_to_k``."""
    return "lora_unet_" + module_path.replace(".", "_")


def _torch_dtype(dtype: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


def _padded(array: np.ndarray, rank: int, axis: int) -> np.ndarray:
    missing = rank - array.shape[axis]
    if missing == 0:
        return array
    pad = [(0, 0), (0, 0)]
    pad[axis] = (0, missing)
    return np.pad(array, pad)


def build_kohya(
    solution: Solution,
    target: ModelTarget,
    base_weights: Mapping[str, np.ndarray],
    options: KohyaOptions = KohyaOptions(),
) -> tuple[dict[str, object], int]:
    """(tensors by key, uniform rank) of the LoRA for ``solution``; ``base_weights`` by module path."""
    import torch

    solved = max(space.rank for space in solution.spaces)
    rank = solved if options.rank is None else options.rank
    if rank < solved:
        raise BackendError(f"kohya: rank {rank} is below the solved rank {solved}; use rank ≥ {solved} or 'auto'")
    dtype = _torch_dtype(options.dtype)
    tensors: dict[str, object] = {}
    for space_solution in solution.spaces:
        for site in target.space(space_solution.space).sites:
            if site.module_path not in base_weights:
                raise BackendError(f"kohya: no base weight for {site.module_path}")
            up, down = space_solution.factors(site.module_path, base_weights[site.module_path])
            name = kohya_module_name(site.module_path)
            tensors[f"{name}.lora_down.weight"] = torch.tensor(_padded(down, rank, 0)).to(dtype).contiguous()
            tensors[f"{name}.lora_up.weight"] = torch.tensor(_padded(up, rank, 1)).to(dtype).contiguous()
            tensors[f"{name}.alpha"] = torch.tensor(float(rank), dtype=dtype)
    return tensors, rank
