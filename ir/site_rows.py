"""What one site of a key space holds on its own: its base weight and rows that apply there alone.

Most methods solve one system per key space for every site it feeds (DESIGN.md §4). SPEED (Li et
al., 2025, arXiv 2503.07392, §4.2; research/methods.md §6.2 item 2) refines its retain set per
layer: which retain rows the erase edit would disturb, and which perturbed copies join them,
depend on the layer's own ``W0_l`` (``passes/influence_filter.py``, ``passes/directed_augment.py``).
The lowering supplies one ``SiteRows`` per edited site, carrying ``W0_l``, when a pass of the
pipeline reads the base weights (``EditPass.reads_site_weights``); those passes set the site's own
preserve rows, ``orthogonalize`` its own hard rows, and ``solve`` then solves each site on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arrays import frozen_array
from .errors import VerifyError
from .rows import HardRows, PreserveRows


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class SiteRows:
    module_path: str
    weight: np.ndarray  # W0_l, (out, d) in float64
    preserve: PreserveRows | None = None  # replaces the space's preserve rows at this site
    hard: HardRows | None = None  # held exactly at this site, besides the space's hard rows

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", frozen_array(self.weight, where=f"site_rows[{self.module_path}].weight", ndim=2))

    @property
    def own_rows(self) -> bool:
        """True when the site's system differs from the space's (it has preserve or hard rows of its own)."""
        return self.preserve is not None or self.hard is not None

    def check(self, where: str, out_features: int, dim: int) -> None:
        """Raise ``VerifyError`` unless the weight is (out_features, dim) and every row is dim wide."""
        if self.weight.shape != (out_features, dim):
            raise VerifyError(f"{where}.weight: shape {self.weight.shape}, the site is ({out_features}, {dim})")
        for name, rows in (("preserve", self.preserve), ("hard", self.hard)):
            if rows is None:
                continue
            if rows.keys.shape[1] != dim:
                raise VerifyError(f"{where}.{name}.keys: width {rows.keys.shape[1]}, the space has {dim}")
            for i, prov in enumerate(rows.provenance):
                if not prov.request:
                    raise VerifyError(f"{where}.{name}[{i}]: no provenance")
