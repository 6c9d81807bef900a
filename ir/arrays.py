"""Array hygiene for IR objects: float64, C-contiguous, read-only, finite.

``frozen`` dataclasses do not freeze the numpy arrays they hold, so every IR constructor passes
its arrays through ``frozen_array``; a pass that wants a different array builds a new object.
"""

from __future__ import annotations

import numpy as np

from .errors import VerifyError


def frozen_array(value, *, where: str, ndim: int | None = None) -> np.ndarray:
    """A read-only float64 copy of ``value``; raises ``VerifyError`` naming ``where`` on bad input."""
    array = np.array(value, dtype=np.float64, copy=True, order="C")
    if ndim is not None and array.ndim != ndim:
        raise VerifyError(f"{where}: expected a {ndim}-d array, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise VerifyError(f"{where}: contains NaN or infinity")
    array.setflags(write=False)
    return array


def structurally_equal(a, b, *, rtol: float = 0.0, atol: float = 0.0) -> bool:
    """Compare two IR values field by field; arrays with ``allclose(rtol, atol)``, the rest with ``==``."""
    import dataclasses

    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)) or a.shape != b.shape:
            return False
        return bool(np.allclose(a, b, rtol=rtol, atol=atol))
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        if type(a) is not type(b):
            return False
        return all(
            structurally_equal(getattr(a, f.name), getattr(b, f.name), rtol=rtol, atol=atol)
            for f in dataclasses.fields(a)
        )
    if isinstance(a, (tuple, list)):
        if not isinstance(b, (tuple, list)) or len(a) != len(b):
            return False
        return all(structurally_equal(x, y, rtol=rtol, atol=atol) for x, y in zip(a, b))
    if isinstance(a, dict):
        if not isinstance(b, dict) or sorted(a) != sorted(b):
            return False
        return all(structurally_equal(a[k], b[k], rtol=rtol, atol=atol) for k in a)
    return a == b
