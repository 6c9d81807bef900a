"""Output dtypes and the rounding they cause, emulated in numpy (numpy has no bfloat16)."""

from __future__ import annotations

from typing import Literal

import numpy as np

OutputDtype = Literal["fp32", "fp16", "bf16"]
OUTPUT_DTYPES: tuple[str, ...] = ("fp32", "fp16", "bf16")


def _round_bf16(array: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest, ties to even) and widen back."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


def round_to(array: np.ndarray, dtype: OutputDtype) -> np.ndarray:
    """``array`` as it reads back after storage in ``dtype``, in float64."""
    if dtype == "fp32":
        stored = np.asarray(array, dtype=np.float32)
    elif dtype == "fp16":
        stored = np.asarray(array, dtype=np.float16)
    elif dtype == "bf16":
        stored = _round_bf16(np.asarray(array, dtype=np.float32))
    else:
        raise ValueError(f"unknown dtype {dtype!r}")
    return stored.astype(np.float64)
