"""Where a drift budget landed (``drift-budget``, docs/spec.md ``options.max_drift``).

The drift of a row set is how far an edit moves the rows' K/V outputs, relative to the outputs
themselves, over every edited site together (issue 15's "movement"):

    drift = sqrt(Σ_l Σ_c ‖ΔW_l c‖² / Σ_l Σ_c ‖W0_l c‖²) = sqrt(tr(Xᵀ G X C) / tr(G C))

in the shared form ``ΔW_l = W0_l X`` with ``G = Σ_l W0_lᵀ W0_l`` (the space's ``site_gram``) and
``C = Σ_c c cᵀ`` over the preserve rows (explicit and folded). ``1 − drift`` is the build's
specificity when the edit applies to every site of the space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import VerifyError


@dataclass(frozen=True, slots=True, kw_only=True)
class DriftLanding:
    """The erase-weight scale a budget chose for one key space, and what it measured there.

    ``scale`` multiplies every erase weight the spec gave (1: as the spec asks, the budget does not
    bind). Efficacy is ``1 − ‖W'k − W0 g‖ / ‖W0 k − W0 g‖`` over the erase rows as solved (mined
    rows included), squared norms summed; the ``full_*`` values are the spec's own erase weights'.
    """

    max_drift: float  # the budget
    floor: float  # the weakest erasure searched: this fraction of full_efficacy
    scale: float  # in (0, 1]
    drift: float  # at scale, ≤ max_drift
    efficacy: float
    full_drift: float  # at scale 1
    full_efficacy: float
    preserve_rows: int  # the rows the drift is measured on (explicit and folded)
    solves: int  # d × d candidate solves the search took

    def __post_init__(self) -> None:
        values = (self.max_drift, self.floor, self.scale, self.drift, self.efficacy, self.full_drift, self.full_efficacy)
        if not all(math.isfinite(v) for v in values):
            raise VerifyError(f"drift: a value is not finite: {values}")
        if not (0.0 < self.scale <= 1.0):
            raise VerifyError(f"drift.scale: {self.scale} is not in (0, 1]")
        if self.drift > self.max_drift:
            raise VerifyError(f"drift: {self.drift} exceeds the budget {self.max_drift}")

    @property
    def binding(self) -> bool:
        """True when the budget made the erasure weaker than the spec asks."""
        return self.scale < 1.0

    def as_dict(self) -> dict:
        """The record ``erasec.report.drift`` keeps per key space (docs/patch-format.md)."""
        return {
            "max_drift": self.max_drift,
            "binding": self.binding,
            "scale": round(self.scale, 6),
            "drift": round(self.drift, 6),
            "efficacy": round(self.efficacy, 6),
            "full_drift": round(self.full_drift, 6),
            "full_efficacy": round(self.full_efficacy, 6),
            "floor": self.floor,
            "preserve_rows": self.preserve_rows,
        }
