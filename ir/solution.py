"""The result of ``solve``: low-rank factors of every ΔW, plus what the solve measured.

Shared form (all targets are guide rows, DESIGN.md §4): one d×d map per key space,
``T − I = left @ right.T``, and for every site ``ΔW_l = W0_l (T − I) = (W0_l left) right.T``.
The backend forms ``up = W0_l left`` from the base weights, so the IR never holds a full UNet.
Per-layer form: ``ΔW_l = up_l @ down_l`` stored directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .arrays import frozen_array
from .errors import VerifyError

Form = Literal["shared", "per-layer"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SolveReport:
    """Numbers a solve measured, printed and recorded in the patch."""

    condition: float  # 2-norm condition number of A = λI + K diag(w) Kᵀ + Kp diag(p) Kpᵀ
    residual: float  # relative residual of the normal equations, ‖ΔW A − B‖ / ‖B‖
    hard_rank: int  # rank of the hard-constraint span actually enforced


@dataclass(frozen=True, slots=True, kw_only=True)
class DtypeReport:
    """The rounding error ``compress`` measured for casting factors to the output dtype."""

    dtype: Literal["fp32", "fp16", "bf16"]
    max_rel_error: float  # max over sites of ‖ΔW − cast(up) cast(down)‖_F / ‖ΔW‖_F


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class LayerFactors:
    module_path: str
    up: np.ndarray  # (out, r)
    down: np.ndarray  # (r, d)

    def __post_init__(self) -> None:
        up = frozen_array(self.up, where=f"factors[{self.module_path}].up", ndim=2)
        down = frozen_array(self.down, where=f"factors[{self.module_path}].down", ndim=2)
        if up.shape[1] != down.shape[0]:
            raise VerifyError(f"factors[{self.module_path}]: up {up.shape} and down {down.shape} disagree on rank")
        object.__setattr__(self, "up", up)
        object.__setattr__(self, "down", down)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class SpaceSolution:
    space: str
    form: Form
    rank: int
    report: SolveReport
    left: np.ndarray | None = None  # shared: (d, r)
    right: np.ndarray | None = None  # shared: (d, r)
    layers: tuple[LayerFactors, ...] = ()  # per-layer
    dtype: DtypeReport | None = None
    # separable solves: (request, rank) per block of factor columns, in column order
    blocks: tuple[tuple[str, int], ...] = ()
    # relative error of a rank cap (compress): over all sites together for the shared form, the
    # largest site's for the per-layer form; 0 when nothing was truncated
    truncation_error: float = 0.0
    roles: tuple[str, ...] = ("k", "v")  # the sites (by role) the edit applies to; the others keep W0

    def edits(self, role: str) -> bool:
        return role in self.roles

    def __post_init__(self) -> None:
        where = f"solution[{self.space}]"
        if self.form == "shared":
            if self.left is None or self.right is None or self.layers:
                raise VerifyError(f"{where}: the shared form needs left and right factors and no layers")
            left = frozen_array(self.left, where=f"{where}.left", ndim=2)
            right = frozen_array(self.right, where=f"{where}.right", ndim=2)
            if left.shape != right.shape or left.shape[1] != self.rank:
                raise VerifyError(f"{where}: left {left.shape}, right {right.shape}, rank {self.rank} disagree")
            object.__setattr__(self, "left", left)
            object.__setattr__(self, "right", right)
            if self.blocks and sum(rank for _, rank in self.blocks) != self.rank:
                raise VerifyError(f"{where}: blocks {self.blocks} do not add up to rank {self.rank}")
        elif self.form == "per-layer":
            if self.left is not None or self.right is not None:
                raise VerifyError(f"{where}: the per-layer form has no shared factors")
            for layer in self.layers:
                if layer.up.shape[1] != self.rank:
                    raise VerifyError(f"{where}: {layer.module_path} has rank {layer.up.shape[1]}, not {self.rank}")
        else:
            raise VerifyError(f"{where}: unknown form {self.form!r}")

    def without(self, request: str) -> "SpaceSolution":
        """The solution minus one request's block (separable solves only)."""
        names = [name for name, _ in self.blocks]
        if request not in names:
            raise KeyError(request)
        start = sum(rank for _, rank in self.blocks[: names.index(request)])
        stop = start + self.blocks[names.index(request)][1]
        keep = np.r_[0:start, stop : self.rank]
        return SpaceSolution(
            space=self.space,
            form=self.form,
            rank=keep.size,
            report=self.report,
            left=self.left[:, keep],
            right=self.right[:, keep],
            blocks=tuple(block for block in self.blocks if block[0] != request),
            roles=self.roles,
        )

    def factors(self, module_path: str, base_weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(up, down) in float64 with ``ΔW = up @ down`` for one site; ``base_weight`` is W0 (out, d)."""
        if self.form == "shared":
            return np.asarray(base_weight, dtype=np.float64) @ self.left, self.right.T
        for layer in self.layers:
            if layer.module_path == module_path:
                return layer.up, layer.down
        raise KeyError(module_path)

    def delta(self, module_path: str, base_weight: np.ndarray) -> np.ndarray:
        up, down = self.factors(module_path, base_weight)
        return up @ down


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Solution:
    spaces: tuple[SpaceSolution, ...]

    def space(self, name: str) -> SpaceSolution:
        for space in self.spaces:
            if space.space == name:
                return space
        raise KeyError(name)
