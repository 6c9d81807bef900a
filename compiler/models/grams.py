"""``Σ_l W0_lᵀ W0_l`` over a key space's sites: the metric in which a change of the shared map T shows
in all the sites' outputs together (DESIGN.md §4). One function for every model class."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from erasec.ir import KeySpace

from ..errors import ModelError

_GRAM_BLOCK = 1024  # rows of a weight widened to float64 at a time


def site_gram(weights: Mapping[str, np.ndarray], space: KeySpace, roles: Sequence[str], location: str) -> np.ndarray:
    """``Σ_l W0_lᵀ W0_l`` (d, d) in float64 over ``space``'s sites whose role is in ``roles``, the
    weights read from ``weights`` (module path → float32 (out, in)). Reads every site of the space and
    refuses NaN or infinite weights."""
    from scipy.linalg.blas import dsyrk

    upper = np.zeros((space.dim, space.dim), order="F")
    for site in space.sites:
        w0 = weights[site.module_path]
        if not np.all(np.isfinite(w0)):
            raise ModelError(f"{location}: {site.weight_name} contains NaN or infinity; the model file is damaged")
        if site.role not in roles:
            continue
        # rank-k updates of the upper triangle, a block of rows widened to float64 at a time: half
        # the flops of W0ᵀW0 and no float64 copy of the whole matrix (SDXL: 166,400 × 2048)
        for start in range(0, w0.shape[0], _GRAM_BLOCK):
            block = np.asarray(w0[start : start + _GRAM_BLOCK], dtype=np.float64)
            upper = dsyrk(1.0, block.T, beta=1.0, c=upper, trans=0, lower=0, overwrite_c=1)
    upper = np.triu(upper)
    return upper + np.triu(upper, 1).T
