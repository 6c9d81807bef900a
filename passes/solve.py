"""solve — the closed-form ridge least squares of every key space, in float64.

For one key space with erase rows K (weights w, targets V*), preserve rows Kp (weights p),
hard rows H and ridge λ (DESIGN.md §4; research/methods.md §0.2, §8.1):

    ΔW = B P,   B = (V* − W0 K) diag(w) Kᵀ,   A = λI + K diag(w) Kᵀ + Kp diag(p) Kpᵀ,
    P = A⁻¹ − A⁻¹Q (QᵀA⁻¹Q)⁻¹ QᵀA⁻¹   (Q: orthonormal basis of the hard rows; P = A⁻¹ without them)

which minimises the objective subject to ΔW H = 0. When every target is a guide row
(v*_i = W0_l g_i: UCE, TIME, RECE, SPEED) the solution is ``W_l = W0_l T`` with one shared
``T − I = (G − K) diag(w) Kᵀ P`` for all sites (Gandikota et al., 2024, arXiv 2308.14761, eq. 7
with TIME's ridge; the shared form is derived and checked in research/methods.md §1.5). Otherwise
each site gets ``ΔW_l = R_l diag(w) Kᵀ P`` from its residual ``R_l = V*_l − W0_l K``. Either way
one Cholesky factorisation of A serves every site, and rank(ΔW) ≤ number of erase rows.
When sites carry rows of their own (``ir.SiteRows``: SPEED's per-layer retain sets), each is solved
on its own the same way, ``ΔW_l = W0_l (T_l − I)`` with its preserve and hard rows, and stored per layer.
Folded rows (``ir.Moments``, streamed in by the lowering when there are more rows than d) enter A
and B through their moments; the solution is then the full d × d ``T − I = B P``.

The factors are stored as ``left @ right.T`` with orthonormal ``right`` (reduced QR), so the rank
is min(m, d). The pass checks the condition number of A before trusting the solve and reports the
relative residual of the (constrained) normal equations.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from erasec.ir import EditProgram, EraseRows, LayerFactors, Solution, SolveReport, SpaceProgram, SpaceSolution
from erasec.ir.linalg import (
    ConstrainedSolver,
    constrained_map,
    orthonormal_right,
    orthonormal_span,
    spd_condition,
    weighted_gram,
)

from .base import EditPass
from .errors import SolveError


def system_matrix(space: SpaceProgram, dim: int, rows: EraseRows | None = None) -> np.ndarray:
    """``A = λI + K diag(w) Kᵀ + Kp diag(p) Kpᵀ`` (K: ``rows``, by default all the space's erase rows),
    folded rows included through their moments."""
    rows = space.erase if rows is None else rows
    matrix = weighted_gram(rows.keys, rows.weights)
    if rows.folded is not None:
        matrix += rows.folded.gram
    matrix += space.preserve.gram()
    matrix[np.diag_indices(dim)] += space.lam
    return matrix


def _relative_residual(delta: np.ndarray, matrix: np.ndarray, rhs: np.ndarray, basis: np.ndarray) -> float:
    """Residual of ``ΔW A = B + ΛQᵀ``, ``ΔW Q = 0``: both parts relative to ‖B‖ and ‖ΔW‖."""
    gap = delta @ matrix - rhs
    if basis.shape[1]:
        gap = gap - (gap @ basis) @ basis.T
    scale = max(np.linalg.norm(rhs), np.finfo(float).tiny)
    residual = np.linalg.norm(gap) / scale
    if basis.shape[1]:
        residual += np.linalg.norm(delta @ basis) / max(np.linalg.norm(delta), np.finfo(float).tiny)
    return float(residual)


def _condition_checked(space: SpaceProgram, matrix: np.ndarray, max_condition: float) -> float:
    condition = spd_condition(matrix)
    if not np.isfinite(condition) or condition > max_condition:
        raise SolveError(
            f"key space {space.space}: the system is singular or ill-conditioned "
            f"(condition number {condition:.2g} > {max_condition:.2g}); raise options.lambda "
            f"(now {space.lam:g}) or add preserve prompts"
        )
    return condition


def _solver(space: SpaceProgram, matrix: np.ndarray, hard_keys: np.ndarray) -> tuple[ConstrainedSolver, np.ndarray]:
    basis = orthonormal_span(hard_keys)
    try:
        return ConstrainedSolver.build(matrix, basis), basis
    except np.linalg.LinAlgError:
        raise SolveError(
            f"key space {space.space}: the hard constraints leave no solvable system; "
            f"drop some hard rows or raise options.lambda (now {space.lam:g})"
        ) from None


@dataclass(frozen=True, slots=True)
class SolvePass(EditPass):
    name: ClassVar[str] = "solve"

    max_condition: float = 1e12
    # erase rows as constraints, each mapped onto its guide exactly (``_exact``): ``solve-exact``
    exact: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self.check_range("max-condition", self.max_condition, 1.0, 1e15)

    def _exact(self, space: SpaceProgram, rows, hard_keys: np.ndarray, dim: int) -> SpaceSolution:
        """``solve-exact``: ``min λ‖T − I‖² + Σ p ‖(T − I) kp‖²`` subject to ``T k = g`` for every erase row
        and ``(T − I) h = 0`` for every hard row (``ir.linalg.constrained_map``): an erased row's output at
        every site is its guide's, exactly, and λ and the preserve rows spend the freedom left. Needs
        every erase row explicit and the erase and hard rows linearly independent (at most d)."""
        total = rows.count + (rows.folded.rows if rows.folded is not None else 0)
        if rows.folded is not None or total > dim:
            raise SolveError(
                f"key space {space.space}: at most {dim} erase rows can be mapped exactly, this has {total}; "
                "erase fewer prompts (or a shorter sequence_length), or use solve"
            )
        matrix = space.preserve.gram()
        matrix[np.diag_indices(dim)] += space.lam
        condition = _condition_checked(space, matrix, self.max_condition)
        held = orthonormal_span(hard_keys).T
        targets = rows.guides - rows.keys
        try:
            left, right = constrained_map(matrix, rows.keys, targets, held)
        except np.linalg.LinAlgError:
            raise SolveError(
                f"key space {space.space}: the erase rows and hard rows are linearly dependent, so no map "
                "meets them all exactly; drop the duplicate prompts, or use solve"
            ) from None
        left, right = orthonormal_right(left, right)
        delta = left @ right.T
        gap = np.linalg.norm(rows.keys @ delta.T - targets) / max(np.linalg.norm(targets), np.finfo(float).tiny)
        if held.shape[0]:
            gap += np.linalg.norm(held @ delta.T) / max(np.linalg.norm(delta), np.finfo(float).tiny)
        return SpaceSolution(
            space=space.space,
            form="shared",
            rank=right.shape[1],
            left=left,
            right=right,
            report=SolveReport(condition=condition, residual=float(gap), hard_rank=held.shape[0]),
        )

    def _shared(self, space: SpaceProgram, rows, hard_keys: np.ndarray, dim: int) -> SpaceSolution:
        """The shared-form solution for guide-target ``rows`` of ``space`` with ``hard_keys`` held fixed."""
        if self.exact:
            return self._exact(space, rows, hard_keys, dim)
        matrix = system_matrix(space, dim, rows)
        condition = _condition_checked(space, matrix, self.max_condition)
        solver, basis = _solver(space, matrix, hard_keys)
        scaled = (rows.guides - rows.keys).T * rows.weights  # (G − K) diag(w), (d, m)
        rhs = scaled @ rows.keys
        if rows.folded is not None:
            rhs += rows.folded.cross
        if rows.folded is not None or rows.count >= dim:  # T − I = B P itself (d × d), with right = I
            left, right = solver.apply(rhs.T).T, np.eye(dim)
        else:  # T − I = (G − K) diag(w) (P Kᵀ)ᵀ, rank m, right made orthonormal
            left, right = orthonormal_right(scaled, solver.apply(rows.keys.T))
        residual = _relative_residual(left @ right.T, matrix, rhs, basis)
        return SpaceSolution(
            space=space.space,
            form="shared",
            rank=right.shape[1],
            left=left,
            right=right,
            report=SolveReport(condition=condition, residual=residual, hard_rank=basis.shape[1]),
        )

    def _separable(self, program: EditProgram, space: SpaceProgram, dim: int) -> SpaceSolution:
        """One shared-form block per request, each with the other requests' keys held fixed, side by side."""
        names = np.array([p.request for p in space.erase.provenance])
        parts = []
        for request in program.requests:
            mine = names == request
            if mine.any():
                hard_keys = np.concatenate([space.hard.keys, space.erase.keys[~mine]])
                parts.append((request, self._shared(space, space.erase.select(mine), hard_keys, dim)))
        left = np.concatenate([part.left for _, part in parts], axis=1)
        right = np.concatenate([part.right for _, part in parts], axis=1)
        return SpaceSolution(
            space=space.space,
            form="shared",
            rank=right.shape[1],
            left=left,
            right=right,
            blocks=tuple((request, part.rank) for request, part in parts),
            report=SolveReport(
                condition=max(part.report.condition for _, part in parts),
                residual=max(part.report.residual for _, part in parts),
                hard_rank=orthonormal_span(space.hard.keys).shape[1],
            ),
        )

    def _per_site(self, space: SpaceProgram, dim: int) -> SpaceSolution:
        """Each edited site solved on its own, with the preserve rows in force there and the space's
        hard rows plus its own (SPEED's per-layer retain sets): ``ΔW_l = W0_l (T_l − I)``, stored per layer."""
        if not space.erase.shared or space.separable:
            raise SolveError(f"key space {space.space}: per-site rows need guide (anchor) targets and a joint solve")
        layers, reports = [], []
        for site in space.site_rows:
            preserve = space.preserve if site.preserve is None else site.preserve
            hard = space.hard.keys if site.hard is None else np.concatenate([space.hard.keys, site.hard.keys])
            part = self._shared(replace(space, preserve=preserve), space.erase, hard, dim)
            layers.append(LayerFactors(module_path=site.module_path, up=site.weight @ part.left, down=part.right.T))
            reports.append(part.report)
        return SpaceSolution(
            space=space.space,
            form="per-layer",
            rank=layers[0].down.shape[0],
            layers=tuple(layers),
            report=SolveReport(
                condition=max(r.condition for r in reports),
                residual=max(r.residual for r in reports),
                hard_rank=max(r.hard_rank for r in reports),
            ),
        )

    def _solve_space(self, program: EditProgram, space: SpaceProgram) -> SpaceSolution:
        dim = program.target.space(space.space).dim
        erase = space.erase
        if erase.count == 0:
            raise SolveError(f"key space {space.space}: no erase rows; the spec must erase at least one concept")
        if any(site.own_rows for site in space.site_rows):
            return self._per_site(space, dim)
        if space.separable:
            if not erase.shared:
                raise SolveError(f"key space {space.space}: separable solves need guide (anchor) targets")
            if erase.folded is not None:
                raise SolveError(f"key space {space.space}: separable solves need every erase row; {erase.folded.rows} are folded")
            return self._separable(program, space, dim)
        if erase.shared:
            return self._shared(space, erase, space.hard.keys, dim)
        matrix = system_matrix(space, dim)
        condition = _condition_checked(space, matrix, self.max_condition)
        solver, basis = _solver(space, matrix, space.hard.keys)
        q, r = np.linalg.qr(solver.apply(erase.keys.T), mode="reduced")
        layers = []
        residual = 0.0
        for path, site_residual in erase.residuals:
            up = (site_residual * erase.weights) @ r.T
            layers.append(LayerFactors(module_path=path, up=up, down=q.T))
            rhs = (site_residual * erase.weights) @ erase.keys
            residual = max(residual, _relative_residual(up @ q.T, matrix, rhs, basis))
        return SpaceSolution(
            space=space.space,
            form="per-layer",
            rank=q.shape[1],
            layers=tuple(layers),
            report=SolveReport(condition=condition, residual=residual, hard_rank=basis.shape[1]),
        )

    def apply(self, program: EditProgram) -> EditProgram:
        solution = Solution(
            spaces=tuple(replace(self._solve_space(program, space), roles=space.roles) for space in program.spaces)
        )
        return replace(program, solution=solution)


@dataclass(frozen=True, slots=True)
class ExactSolvePass(SolvePass):
    """``solve-exact``: ``solve`` with every erase row a constraint (``SolvePass._exact``): an erased row's
    output at every site is its guide's exactly, where at most d linearly independent rows allow it."""

    name: ClassVar[str] = "solve-exact"
    exact: ClassVar[bool] = True
