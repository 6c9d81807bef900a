"""Rows of the ridge least-squares system (DESIGN.md §4).

Rows are stored row-major: ``keys`` is (m, d), one key-space row per constraint; the math in
docstrings uses the column convention ``K = keys.T``. Every row carries a ``Provenance`` so that
printed IR, conflict reports and evaluation can say where it came from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arrays import frozen_array
from .errors import VerifyError


@dataclass(frozen=True, slots=True, kw_only=True)
class Provenance:
    request: str  # the erase request (concept) a row belongs to, "preserve", or "invariant"
    prompt: str
    token: int  # position of the row in the prompt's encoding (0 = BOS)


def _check_rows(keys: np.ndarray, provenance: tuple, where: str, weights: np.ndarray | None = None) -> None:
    if len(provenance) != keys.shape[0]:
        raise VerifyError(f"{where}: {keys.shape[0]} rows but {len(provenance)} provenance entries")
    if weights is not None:
        if weights.shape != (keys.shape[0],):
            raise VerifyError(f"{where}.weights: shape {weights.shape}, expected ({keys.shape[0]},)")
        if np.any(weights < 0):
            raise VerifyError(f"{where}.weights: negative weight {weights.min()}")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class EraseRows:
    """Constraints ``W k_i ≈ v*_i`` with weight ``w_i``.

    The target is either a *guide* row ``g_i`` (``v*_i = W0_l g_i`` in every layer: UCE, TIME,
    RECE, SPEED — the shared-T form) or a per-site residual ``V*_l − W0_l K`` (out × m).
    Exactly one of ``guides`` and ``residuals`` is set.
    """

    keys: np.ndarray
    weights: np.ndarray
    provenance: tuple[Provenance, ...]
    guides: np.ndarray | None = None
    residuals: tuple[tuple[str, np.ndarray], ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", frozen_array(self.keys, where="erase.keys", ndim=2))
        object.__setattr__(self, "weights", frozen_array(self.weights, where="erase.weights", ndim=1))
        _check_rows(self.keys, self.provenance, "erase", self.weights)
        if (self.guides is None) == (self.residuals is None):
            raise VerifyError("erase: exactly one of guides and residuals must be given")
        if self.guides is not None:
            guides = frozen_array(self.guides, where="erase.guides", ndim=2)
            if guides.shape != self.keys.shape:
                raise VerifyError(f"erase.guides: shape {guides.shape}, keys have {self.keys.shape}")
            object.__setattr__(self, "guides", guides)
        else:
            frozen = []
            for path, residual in self.residuals:
                residual = frozen_array(residual, where=f"erase.residuals[{path}]", ndim=2)
                if residual.shape[1] != self.keys.shape[0]:
                    raise VerifyError(
                        f"erase.residuals[{path}]: {residual.shape[1]} columns for {self.keys.shape[0]} rows"
                    )
                frozen.append((path, residual))
            object.__setattr__(self, "residuals", tuple(sorted(frozen, key=lambda item: item[0])))

    @property
    def count(self) -> int:
        return self.keys.shape[0]

    @property
    def shared(self) -> bool:
        """True when every target is a guide row, so one d×d map serves all sites."""
        return self.guides is not None

    def select(self, mask: np.ndarray, weights: np.ndarray | None = None) -> "EraseRows":
        """The rows where ``mask`` holds (optionally with new weights), as a new object."""
        index = np.flatnonzero(mask)
        return EraseRows(
            keys=self.keys[index],
            weights=(self.weights if weights is None else weights)[index],
            provenance=tuple(self.provenance[i] for i in index),
            guides=None if self.guides is None else self.guides[index],
            residuals=None
            if self.residuals is None
            else tuple((path, residual[:, index]) for path, residual in self.residuals),
        )


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class PreserveRows:
    """Soft constraints ``W k_j ≈ W0 k_j`` with weight ``p_j``."""

    keys: np.ndarray
    weights: np.ndarray
    provenance: tuple[Provenance, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", frozen_array(self.keys, where="preserve.keys", ndim=2))
        object.__setattr__(self, "weights", frozen_array(self.weights, where="preserve.weights", ndim=1))
        _check_rows(self.keys, self.provenance, "preserve", self.weights)

    @property
    def count(self) -> int:
        return self.keys.shape[0]

    def select(self, mask: np.ndarray, weights: np.ndarray | None = None) -> "PreserveRows":
        index = np.flatnonzero(mask)
        return PreserveRows(
            keys=self.keys[index],
            weights=(self.weights if weights is None else weights)[index],
            provenance=tuple(self.provenance[i] for i in index),
        )


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class HardRows:
    """Exact constraints ``ΔW k = 0`` (BOS row, empty-prompt rows, other requests' keys)."""

    keys: np.ndarray
    provenance: tuple[Provenance, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", frozen_array(self.keys, where="hard.keys", ndim=2))
        _check_rows(self.keys, self.provenance, "hard")

    @property
    def count(self) -> int:
        return self.keys.shape[0]


def empty_preserve(dim: int) -> PreserveRows:
    return PreserveRows(keys=np.zeros((0, dim)), weights=np.zeros(0), provenance=())


def empty_hard(dim: int) -> HardRows:
    return HardRows(keys=np.zeros((0, dim)), provenance=())
