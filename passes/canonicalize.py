"""canonicalize — drop rows that cannot matter and merge rows that are the same constraint.

A row with weight 0 or key 0 adds nothing to ``A = λI + K diag(w) Kᵀ + Kp diag(p) Kpᵀ`` nor to
``B = (V* − W0 K) diag(w) Kᵀ`` (DESIGN.md §4), so dropping it leaves ΔW unchanged. Two erase rows
with the same key and the same target are one constraint of weight ``w1 + w2``:
``w1‖Wk − v‖² + w2‖Wk − v‖² = (w1 + w2)‖Wk − v‖²``; the same holds for preserve rows with equal
keys. Rows count as equal when they differ by at most ``eps`` relative to their norm, so at the
default (1e-9) the merged system differs from the original by rounding noise only. Hard rows are
deduplicated the same way (a repeated equality constraint is redundant).

The first occurrence keeps its provenance and position, so the result is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from erasec.ir import EditProgram, EraseRows, HardRows, PreserveRows

from .base import EditPass


def duplicate_groups(signature: np.ndarray, eps: float) -> np.ndarray:
    """For row-major ``signature`` (m, n), the index of each row's first equal row (itself if none).

    Rows are sorted by a fixed random projection; equal rows have projections within
    ``eps·‖row‖·‖r‖`` of each other, so only neighbours in that order are compared.
    """
    m = signature.shape[0]
    representative = np.arange(m)
    if m < 2:
        return representative
    direction = np.random.default_rng(0).standard_normal(signature.shape[1])
    projection = signature @ direction
    norms = np.linalg.norm(signature, axis=1)
    order = np.argsort(projection, kind="stable")
    window = eps * norms.max() * np.linalg.norm(direction)
    for a in range(m):
        i = order[a]
        if representative[i] != i:
            continue
        for b in range(a + 1, m):
            j = order[b]
            if projection[j] - projection[i] > window:
                break
            if representative[j] != j:
                continue
            scale = max(norms[i], norms[j])
            if np.linalg.norm(signature[i] - signature[j]) <= eps * scale:
                first, later = min(i, j), max(i, j)
                representative[later] = first
                representative[representative == later] = first
    return representative


def _merge(weights: np.ndarray, representative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = representative == np.arange(representative.size)
    merged = np.zeros_like(weights)
    np.add.at(merged, representative, weights)
    return keep, merged


def _erase_signature(rows: EraseRows) -> np.ndarray:
    parts = [rows.keys]
    if rows.guides is not None:
        parts.append(rows.guides)
    else:
        parts.extend(residual.T for _, residual in rows.residuals)
    return np.concatenate(parts, axis=1)


@dataclass(frozen=True, slots=True)
class CanonicalizePass(EditPass):
    name: ClassVar[str] = "canonicalize"

    eps: float = 1e-9

    def __post_init__(self) -> None:
        self.check_range("eps", self.eps, 0.0, 1e-3)

    def _erase(self, rows: EraseRows) -> EraseRows:
        live = (rows.weights > 0) & (np.linalg.norm(rows.keys, axis=1) > 0)
        if not live.all():
            rows = rows.select(live)
        keep, merged = _merge(rows.weights, duplicate_groups(_erase_signature(rows), self.eps))
        if keep.all():
            return rows
        return rows.select(keep, merged)

    def _preserve(self, rows: PreserveRows) -> PreserveRows:
        live = (rows.weights > 0) & (np.linalg.norm(rows.keys, axis=1) > 0)
        if not live.all():
            rows = rows.select(live)
        keep, merged = _merge(rows.weights, duplicate_groups(rows.keys, self.eps))
        if keep.all():
            return rows
        return rows.select(keep, merged)

    def _hard(self, rows: HardRows) -> HardRows:
        live = np.linalg.norm(rows.keys, axis=1) > 0
        representative = np.full(rows.count, -1)
        index = np.flatnonzero(live)
        representative[index] = index[duplicate_groups(rows.keys[index], self.eps)]
        keep = representative == np.arange(rows.count)
        if keep.all():
            return rows
        return HardRows(keys=rows.keys[keep], provenance=tuple(p for p, k in zip(rows.provenance, keep) if k))

    def apply(self, program: EditProgram) -> EditProgram:
        spaces = []
        changed = False
        for space in program.spaces:
            erase, preserve, hard = self._erase(space.erase), self._preserve(space.preserve), self._hard(space.hard)
            if erase is space.erase and preserve is space.preserve and hard is space.hard:
                spaces.append(space)
                continue
            changed = True
            spaces.append(replace(space, erase=erase, preserve=preserve, hard=hard))
        return replace(program, spaces=tuple(spaces)) if changed else program
