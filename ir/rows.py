"""Rows of the ridge least-squares system (DESIGN.md §4).

Rows are stored row-major: ``keys`` is (m, d), one key-space row per constraint; the math in
docstrings uses the column convention ``K = keys.T``. Every row carries a ``Provenance`` so that
printed IR, conflict reports and evaluation can say where it came from.

Rows the passes need not see one by one may arrive *folded*: reduced, as the lowering streams them
in, to the float64 moments the solve reads (``Moments``). A row set is then its explicit rows plus
its folded moments, and every sum the solve forms over it is the explicit rows' sum plus the
moment, exactly (DESIGN.md §4: A and B are sums over rows). Memory stays O(d²) however many rows.
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
class Moments:
    """Rows folded into their float64 moments; in the column convention, over the folded rows,

    ``gram = K diag(w) Kᵀ`` (the rows' share of the system matrix A), ``plain = K Kᵀ`` (unweighted:
    the evaluation's sums of squared outputs), and for erase rows with guide targets
    ``cross = (G − K) diag(w) Kᵀ`` (their share of the right-hand side B). ``rows`` counts the
    folded rows, ``weight`` is Σ w, and ``prompts`` names the prompts that gave rows, so a pass that
    drops prompts can tell whether it would need a row that is no longer there.
    """

    gram: np.ndarray
    plain: np.ndarray
    rows: int
    weight: float
    prompts: tuple[str, ...]
    cross: np.ndarray | None = None

    def __post_init__(self) -> None:
        dim = np.shape(self.gram)[0]
        for name in ("gram", "plain", "cross"):
            value = getattr(self, name)
            if value is None:
                continue
            value = frozen_array(value, where=f"folded.{name}", ndim=2)
            if value.shape != (dim, dim):
                raise VerifyError(f"folded.{name}: shape {value.shape}, expected ({dim}, {dim})")
            object.__setattr__(self, name, value)
        if self.rows < 1 or not (self.weight >= 0):
            raise VerifyError(f"folded: {self.rows} rows of total weight {self.weight}; expected ≥ 1 rows, weight ≥ 0")

    @property
    def dim(self) -> int:
        return self.gram.shape[0]

    def trace(self, matrix: np.ndarray) -> float:
        """``Σ kᵀ M k`` over the folded rows, unweighted: ``tr(M · plain)``."""
        return float(np.einsum("ij,ji->", matrix, self.plain))


class MomentSum:
    """Accumulates rows into ``Moments`` batch by batch, in float64, in the order given.

    The same batches in the same order give the same bits; the lowering feeds them in the spec's
    canonical order, so a permuted spec folds to the same moments.
    """

    def __init__(self, dim: int, *, cross: bool) -> None:
        self.gram = np.zeros((dim, dim))
        self.plain = np.zeros((dim, dim))
        self.cross = np.zeros((dim, dim)) if cross else None
        self.rows = 0
        self.weight = 0.0
        self.prompts: dict[str, None] = {}

    def add(self, keys: np.ndarray, weights: np.ndarray, prompts, guides: np.ndarray | None = None) -> None:
        """Fold rows ``keys`` (m, d) of weights (m,), from ``prompts``, with ``guides`` (m, d) for erase rows."""
        if keys.shape[0] == 0:
            return
        if (guides is None) != (self.cross is None):
            raise VerifyError("folded: erase rows fold with their guides, preserve rows without")
        keys = np.asarray(keys, dtype=np.float64)
        weighted = keys * np.asarray(weights, dtype=np.float64)[:, None]
        self.gram += keys.T @ weighted
        self.plain += keys.T @ keys
        if self.cross is not None:
            self.cross += (np.asarray(guides, dtype=np.float64) - keys).T @ weighted
        self.rows += keys.shape[0]
        self.weight += float(np.sum(weights))
        self.prompts.update(dict.fromkeys(prompts))

    def result(self) -> "Moments | None":
        """The folded moments (symmetrised), or None when nothing was folded."""
        if self.rows == 0:
            return None
        return Moments(
            gram=(self.gram + self.gram.T) * 0.5,
            plain=(self.plain + self.plain.T) * 0.5,
            cross=self.cross,
            rows=self.rows,
            weight=self.weight,
            prompts=tuple(sorted(self.prompts)),
        )


def _check_folded(folded: Moments | None, dim: int, where: str, *, cross: bool) -> None:
    if folded is None:
        return
    if folded.dim != dim:
        raise VerifyError(f"{where}.folded: dimension {folded.dim}, the rows have {dim}")
    if (folded.cross is not None) != cross:
        raise VerifyError(f"{where}.folded.cross: {'missing' if cross else 'given'} for {where} rows")


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
    folded: Moments | None = None  # rows reduced to moments as they streamed in (guide targets only)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", frozen_array(self.keys, where="erase.keys", ndim=2))
        _check_folded(self.folded, self.keys.shape[1], "erase", cross=True)
        if self.folded is not None and self.residuals is not None:
            raise VerifyError("erase.folded: only rows with guide targets fold (per-layer residuals do not)")
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
        """The explicit rows (``total`` adds the folded ones)."""
        return self.keys.shape[0]

    @property
    def total(self) -> int:
        return self.count + (0 if self.folded is None else self.folded.rows)

    @property
    def shared(self) -> bool:
        """True when every target is a guide row, so one d×d map serves all sites."""
        return self.guides is not None

    def select(self, mask: np.ndarray, weights: np.ndarray | None = None) -> "EraseRows":
        """The explicit rows where ``mask`` holds (optionally with new weights), as a new object; the
        folded moments stay."""
        index = np.flatnonzero(mask)
        return EraseRows(
            keys=self.keys[index],
            weights=(self.weights if weights is None else weights)[index],
            provenance=tuple(self.provenance[i] for i in index),
            guides=None if self.guides is None else self.guides[index],
            residuals=None
            if self.residuals is None
            else tuple((path, residual[:, index]) for path, residual in self.residuals),
            folded=self.folded,
        )


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class PreserveRows:
    """Soft constraints ``W k_j ≈ W0 k_j`` with weight ``p_j``."""

    keys: np.ndarray
    weights: np.ndarray
    provenance: tuple[Provenance, ...]
    folded: Moments | None = None  # rows reduced to moments as they streamed in

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", frozen_array(self.keys, where="preserve.keys", ndim=2))
        object.__setattr__(self, "weights", frozen_array(self.weights, where="preserve.weights", ndim=1))
        _check_rows(self.keys, self.provenance, "preserve", self.weights)
        _check_folded(self.folded, self.keys.shape[1], "preserve", cross=False)

    @property
    def count(self) -> int:
        """The explicit rows (``total`` adds the folded ones)."""
        return self.keys.shape[0]

    @property
    def total(self) -> int:
        return self.count + (0 if self.folded is None else self.folded.rows)

    def gram(self) -> np.ndarray:
        """``Kp diag(p) Kpᵀ`` over every row, explicit and folded (d, d)."""
        from .linalg import weighted_gram  # it imports scipy, which the CLI's start-up must not pay for

        gram = weighted_gram(self.keys, self.weights)
        return gram if self.folded is None else gram + self.folded.gram

    def select(self, mask: np.ndarray, weights: np.ndarray | None = None) -> "PreserveRows":
        """The explicit rows where ``mask`` holds (optionally with new weights); the folded moments stay."""
        index = np.flatnonzero(mask)
        return PreserveRows(
            keys=self.keys[index],
            weights=(self.weights if weights is None else weights)[index],
            provenance=tuple(self.provenance[i] for i in index),
            folded=self.folded,
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
