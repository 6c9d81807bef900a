"""Shared float64 linear algebra for the ridge least squares of DESIGN.md §4.

Everything here solves (Cholesky, QR, eigen-decomposition) and never inverts explicitly:
research/perf-baseline.md §5.4 measured fp32 ``torch.inverse`` results off by 0.4 % (1 concept)
to 16 % (1,000 concepts); float64 solves are exact to ~1e-9 at the same sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg


def weighted_gram(rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``K diag(w) Kᵀ`` for row-major ``rows`` (m, d): a symmetric (d, d) matrix."""
    gram = rows.T @ (rows * weights[:, None])
    return (gram + gram.T) * 0.5


def orthonormal_span(rows: np.ndarray, *, rtol: float = 1e-10) -> np.ndarray:
    """An orthonormal basis (d, r) of the span of ``rows`` (m, d), dropping directions below ``rtol``.

    Nearly collinear constraint rows (e.g. the padding rows of one prompt) would make the
    constrained system singular; their numerically-null directions carry no constraint worth keeping.
    """
    if rows.shape[0] == 0:
        return np.zeros((rows.shape[1], 0))
    u, s, _ = np.linalg.svd(rows.T, full_matrices=False)
    keep = s > rtol * s[0] if s.size and s[0] > 0 else np.zeros_like(s, dtype=bool)
    return np.ascontiguousarray(u[:, keep])


def spd_condition(matrix: np.ndarray) -> float:
    """2-norm condition number of a symmetric matrix (inf when it is not positive definite)."""
    eig = np.linalg.eigvalsh(matrix)
    if eig[0] <= 0:
        return float("inf")
    return float(eig[-1] / eig[0])


@dataclass(frozen=True, slots=True)
class ConstrainedSolver:
    """Applies ``P = A⁻¹ − A⁻¹Q (QᵀA⁻¹Q)⁻¹ QᵀA⁻¹`` for SPD ``A`` and orthonormal ``Q`` (d, h).

    ``X = B P`` minimises ``tr(X A Xᵀ) − 2 tr(B Xᵀ)`` subject to ``X Q = 0`` (Lagrange conditions
    ``X A − B = Λ Qᵀ``, ``X Q = 0``); with ``h = 0`` it is the plain ridge solution ``B A⁻¹``.
    Raises ``numpy.linalg.LinAlgError`` when ``A`` is not positive definite.
    """

    factor: tuple
    basis: np.ndarray
    projected: tuple | None  # Cholesky factor of QᵀA⁻¹Q

    @classmethod
    def build(cls, matrix: np.ndarray, basis: np.ndarray) -> "ConstrainedSolver":
        factor = scipy.linalg.cho_factor(matrix, lower=True, check_finite=True)
        projected = None
        if basis.shape[1]:
            inner = basis.T @ scipy.linalg.cho_solve(factor, basis)
            projected = scipy.linalg.cho_factor((inner + inner.T) * 0.5, lower=True)
        return cls(factor, basis, projected)

    def apply(self, columns: np.ndarray) -> np.ndarray:
        """``P @ columns`` for ``columns`` (d, n); P is symmetric, so ``B P = (P Bᵀ)ᵀ``."""
        solved = scipy.linalg.cho_solve(self.factor, columns)
        if self.projected is None:
            return solved
        correction = scipy.linalg.cho_solve(self.projected, self.basis.T @ solved)
        return solved - scipy.linalg.cho_solve(self.factor, self.basis @ correction)


def orthonormal_right(left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Refactor ``left @ right.T`` so that ``right`` has orthonormal columns and rank ≤ its row count.

    ``right = Q R`` (reduced QR) gives ``left rightᵀ = (left Rᵀ) Qᵀ``: the same product with at most
    ``min(m, d)`` columns, and a LoRA ``down`` factor of unit-norm rows (kinder to fp16 storage).
    """
    q, r = np.linalg.qr(right, mode="reduced")
    return left @ r.T, q


def regeneration_embeddings(shared: np.ndarray, gram: np.ndarray, keys: np.ndarray, lam: float) -> np.ndarray:
    """RECE's closed-form attack: for each row c of ``keys`` (m, d), the embedding c' (rows, (m, d)) minimising
    ``Σ_l ‖W0_l T c' − W0_l c‖² + λ‖c'‖² = (Tc' − c)ᵀ G (Tc' − c) + λ‖c'‖²``, i.e.
    ``c' = (λI + TᵀGT)⁻¹ TᵀG c`` (Gong et al., 2024, arXiv 2407.12383; research/methods.md §3.1, §10 item 11),
    with ``T`` the edited model's shared map and ``G = Σ_l W0_lᵀ W0_l``."""
    return attack_embeddings(shared.T @ gram @ shared, shared.T @ gram, keys, lam)


def attack_embeddings(edited_gram: np.ndarray, cross: np.ndarray, keys: np.ndarray, lam: float) -> np.ndarray:
    """The same attack for any edited weights ``W'_l`` (a per-layer patch has no shared ``T``): the c'
    minimising ``Σ_l ‖W'_l c' − W0_l c‖² + λ‖c'‖²`` is ``(λI + A)⁻¹ B c`` with ``A = Σ_l W'_lᵀ W'_l``
    (``edited_gram``) and ``B = Σ_l W'_lᵀ W0_l`` (``cross``); rows in, rows out."""
    matrix = (edited_gram + edited_gram.T) * 0.5
    matrix[np.diag_indices_from(matrix)] += lam
    return scipy.linalg.solve(matrix, cross @ keys.T, assume_a="pos").T


def regeneration_gap(shared: np.ndarray, gram: np.ndarray, keys: np.ndarray, lam: float) -> np.ndarray:
    """Per row, how far the best attack embedding stays from the concept's base K/V outputs, relative:
    ``‖G^½ (T c' − c)‖ / ‖G^½ c‖`` (0: the concept is fully recoverable; 1: nothing of it is)."""
    attack = regeneration_embeddings(shared, gram, keys, lam)
    gap = attack @ shared.T - keys
    return np.sqrt(np.einsum("ij,jk,ik->i", gap, gram, gap) / np.einsum("ij,jk,ik->i", keys, gram, keys))


def constrained_map(matrix: np.ndarray, keys: np.ndarray, targets: np.ndarray, held: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``X = [targets, 0] (Cᵀ A⁻¹ C)⁻¹ Cᵀ A⁻¹`` with ``C = [keysᵀ, heldᵀ]``, as factors ``(left, right)``,
    ``X = left @ right.T``: the ``X`` that minimises ``tr(X A Xᵀ)`` subject to ``X kᵢ = tᵢ`` for each
    row of ``keys`` and ``X h = 0`` for each row of ``held`` (Lagrange: ``X A = Λ Cᵀ``, ``X C = [T, 0]``).

    ``matrix`` (A, d × d) is SPD; ``keys`` (m, d), ``targets`` (m, n_out) as rows, ``held`` (h, d).
    Raises ``numpy.linalg.LinAlgError`` when the constraint rows are linearly dependent.
    """
    constraints = np.concatenate([keys, held]).T  # C, (d, m + h)
    factor = scipy.linalg.cho_factor(matrix, lower=True, check_finite=True)
    solved = scipy.linalg.cho_solve(factor, constraints)  # A⁻¹ C
    inner = constraints.T @ solved
    inner_factor = scipy.linalg.cho_factor((inner + inner.T) * 0.5, lower=True)
    wanted = np.concatenate([targets, np.zeros((held.shape[0], targets.shape[1]))])  # [T; 0], (m + h, n_out)
    left = scipy.linalg.cho_solve(inner_factor, wanted).T  # [T, 0] (CᵀA⁻¹C)⁻¹ as (n_out, m + h)
    return left, solved
