"""The base pin: which base weights a patch was compiled against.

sha256 over exactly the tensors the patch touches, in sorted canonical (diffusers) name order;
each contributes ``name|shape\n`` and its values as little-endian float32 — a lossless widening
of fp16, bf16 and fp32 storage, so the digest does not depend on how the frontend read the file.
A second digest over the values rounded to fp16 lets the fp16 and fp32 releases of one base both
match (DESIGN.md §7; research/ecosystem.md §5.3).
"""

from __future__ import annotations

import hashlib
from typing import Mapping

import numpy as np


def _digest(weights: Mapping[str, np.ndarray], dtype) -> str:
    digest = hashlib.sha256()
    for name in sorted(weights):
        array = np.ascontiguousarray(np.asarray(weights[name]).astype(dtype).astype("<f4"))
        digest.update(f"{name}|{'x'.join(map(str, array.shape))}\n".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def base_pin(weights: Mapping[str, np.ndarray]) -> dict[str, object]:
    """``{"tensors": n, "sha256": ..., "sha256_fp16": ...}`` for the touched base tensors."""
    return {
        "tensors": len(weights),
        "sha256": _digest(weights, np.float32),
        "sha256_fp16": _digest(weights, np.float16),
    }
