"""compress — cap the rank with a stated error budget, and measure the output dtype's rounding.

Rank (``max-rank``, ``max-error``): for the shared form ``T − I = L Rᵀ`` (R orthonormal), the
error that matters is in the K/V outputs of all sites together, ``Σ_l ‖W0_l (X − L Rᵀ)‖²_F =
‖G^½ (X − L Rᵀ)‖²_F`` with ``G = Σ_l W0_lᵀ W0_l`` (the space's ``site_gram``; identity when absent).
With ``G^½ L = U S Vᵀ`` the best rank-k ``X`` is ``(L V_k)(R V_k)ᵀ`` (Eckart–Young in that metric; no
inverse of G needed), and its relative error is ``√(Σ_{i>k} s_i²) / √(Σ s_i²)``. Per-layer factors
are truncated by the SVD of each ``up`` (``down`` has orthonormal rows), error per layer, the worst
reported. ``max-rank=0`` means no cap; with only ``max-error`` the smallest rank within it is
chosen; a cap whose error exceeds ``max-error`` is refused, naming both numbers.

Dtype (``dtype``): IR arrays stay float64 and only a backend narrows them, once; this pass records
``‖L Rᵀ − round(L) round(R)ᵀ‖ / ‖L Rᵀ‖`` for the output dtype so the build can state it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import numpy as np

from erasec.ir import DtypeReport, EditProgram, LayerFactors, Solution, SpaceSolution
from erasec.ir.dtypes import round_to

from .base import EditPass
from .errors import PassError


def _rounding_error(up: np.ndarray, down: np.ndarray, dtype: str) -> float:
    exact = up @ down
    norm = np.linalg.norm(exact)
    if norm == 0:
        return 0.0
    return float(np.linalg.norm(exact - round_to(up, dtype) @ round_to(down, dtype)) / norm)


def _tail_errors(singular: np.ndarray) -> np.ndarray:
    """errors[k] = relative error of keeping the first k singular values (k = 0 … n)."""
    energy = singular**2
    total = energy.sum()
    if total == 0:
        return np.zeros(singular.size + 1)
    tail = np.concatenate([np.cumsum(energy[::-1])[::-1], [0.0]])
    return np.sqrt(tail / total)


def _root(gram: np.ndarray | None, dim: int) -> np.ndarray:
    if gram is None:
        return np.eye(dim)
    values, vectors = np.linalg.eigh(gram)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


@dataclass(frozen=True, slots=True)
class CompressPass(EditPass):
    name: ClassVar[str] = "compress"

    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    max_rank: int = 0
    max_error: float = 0.0

    def __post_init__(self) -> None:
        self.check_range("max-rank", self.max_rank, 0, 100000)
        self.check_range("max-error", self.max_error, 0.0, 1.0)

    def _rank(self, errors: np.ndarray, where: str) -> int:
        """How many singular values to keep, given errors[k] for each k."""
        full = errors.size - 1
        if self.max_rank == 0:
            if self.max_error == 0:
                return full
            return int(np.flatnonzero(errors <= self.max_error)[0])
        keep = min(self.max_rank, full)
        if errors[keep] > self.max_error:
            raise PassError(
                f"{where}: max-rank={self.max_rank} leaves a relative error of {errors[keep]:.2g} > "
                f"max-error={self.max_error:g}; raise max-error or max-rank"
            )
        return keep

    def _truncate(self, program: EditProgram, solution: SpaceSolution) -> SpaceSolution:
        if self.max_rank == 0 and self.max_error == 0:
            return solution
        where = f"key space {solution.space}"
        if solution.form == "shared":
            if solution.blocks:
                raise PassError(f"{where}: a separable solution cannot be rank-capped without mixing its requests")
            gram = program.space(solution.space).site_gram
            _, singular, vt = np.linalg.svd(_root(gram, solution.left.shape[0]) @ solution.left, full_matrices=False)
            errors = _tail_errors(singular)
            keep = self._rank(errors, where)
            v = vt[:keep].T
            return replace(
                solution, left=solution.left @ v, right=solution.right @ v, rank=keep, truncation_error=float(errors[keep])
            )
        decompositions = [np.linalg.svd(layer.up, full_matrices=False) for layer in solution.layers]
        keep = max(self._rank(_tail_errors(s), f"{where}, {layer.module_path}") for (_, s, _), layer in zip(decompositions, solution.layers))
        layers, worst = [], 0.0
        for (u, s, vt), layer in zip(decompositions, solution.layers):
            worst = max(worst, float(_tail_errors(s)[min(keep, s.size)]))
            up = u[:, :keep] * s[:keep]
            down = vt[:keep] @ layer.down
            layers.append(LayerFactors(module_path=layer.module_path, up=up, down=down))
        return replace(solution, layers=tuple(layers), rank=keep, truncation_error=worst)

    def apply(self, program: EditProgram) -> EditProgram:
        if program.solution is None:
            raise PassError("no solution to compress; put 'solve' before 'compress' in the pipeline")
        spaces = []
        for space in program.solution.spaces:
            space = self._truncate(program, space)
            if space.form == "shared":
                error = _rounding_error(space.left, space.right.T, self.dtype)
            else:
                error = max((_rounding_error(layer.up, layer.down, self.dtype) for layer in space.layers), default=0.0)
            spaces.append(replace(space, dtype=DtypeReport(dtype=self.dtype, max_rel_error=error)))
        return replace(program, solution=Solution(spaces=tuple(spaces)))
