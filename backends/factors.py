"""LoRA factors for every edited site at one uniform rank: what the kohya and PEFT backends share.

``up @ down = ΔW`` per site (``SpaceSolution.factors``), formed in float64 and narrowed to the
output dtype here, once. Smaller ranks are zero-padded to the largest (or the requested) rank,
which leaves the product bit-identical (research/ecosystem.md §1.6) and lets every module carry the
same rank and alpha — the condition for exactness in every runtime (§1.7: diffusers applies the most
common alpha to every module, so a per-module alpha is silently wrong, §1.3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterator, Literal, Mapping

import numpy as np

from erasec.ir import LinearSite, ModelTarget, Solution, SpaceSolution

from .errors import BackendError


@dataclass(frozen=True, slots=True, kw_only=True)
class LoraOptions:
    format: ClassVar[str] = "lora"
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    rank: int | None = None  # pad every module to this rank; None = the largest solved rank

    def __post_init__(self) -> None:
        if self.dtype not in ("fp32", "fp16", "bf16"):
            raise BackendError(f"{self.format}: dtype {self.dtype!r} is not one of fp32, fp16, bf16")
        if self.rank is not None and self.rank < 1:
            raise BackendError(f"{self.format}: rank {self.rank} must be ≥ 1")


def torch_dtype(dtype: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


def _padded(array: np.ndarray, rank: int, axis: int) -> np.ndarray:
    missing = rank - array.shape[axis]
    if missing == 0:
        return array
    pad = [(0, 0), (0, 0)]
    pad[axis] = (0, missing)
    return np.pad(array, pad)


def uniform_rank(solution: Solution, options: LoraOptions) -> int:
    solved = max(space.rank for space in solution.spaces)
    rank = solved if options.rank is None else options.rank
    if rank < solved:
        raise BackendError(
            f"{options.format}: rank {rank} is below the solved rank {solved}; use rank ≥ {solved} or 'auto'"
        )
    return rank


def site_factors(
    solution: Solution,
    target: ModelTarget,
    base_weights: Mapping[str, np.ndarray],
    options: LoraOptions,
    rank: int,
) -> Iterator[tuple[LinearSite, object, object]]:
    """(site, up [out, rank], down [rank, in]) as contiguous torch tensors of the output dtype; ``in`` is
    the weight's full width (zero columns beyond the site's own, ``LinearSite.full_in_features``)."""
    import torch

    dtype = torch_dtype(options.dtype)
    for space_solution, site in edited_sites(solution, target, base_weights, options.format):
        up, down = space_solution.factors(site.module_path, base_weights[site.module_path])
        yield (
            site,
            torch.tensor(_padded(up, rank, 1)).to(dtype).contiguous(),
            torch.tensor(_padded(full_width(site, down), rank, 0)).to(dtype).contiguous(),
        )


def edited_sites(
    solution: Solution, target: ModelTarget, base_weights: Mapping[str, np.ndarray], where: str
) -> Iterator[tuple[SpaceSolution, LinearSite]]:
    """(space solution, site) for every site the solution edits, in target order."""
    for space_solution in solution.spaces:
        for site in target.space(space_solution.space).sites:
            if not space_solution.edits(site.role):
                continue  # e.g. SPEED edits to_v only: no module for to_k
            if site.module_path not in base_weights:
                raise BackendError(f"{where}: no base weight for {site.module_path}")
            yield space_solution, site


def full_width(site: LinearSite, matrix: np.ndarray) -> np.ndarray:
    """``matrix`` (…, in) padded with zero columns to the weight's full width: SDXL's
    add_embedding.linear_1 is edited on its pooled columns only, its size/crop columns keep W0."""
    if site.full_in_features is None:
        return matrix
    return np.pad(matrix, [(0, 0), (0, site.full_in_features - matrix.shape[1])])
