"""The base pin: which base weights a patch was compiled against.

sha256 over exactly the tensors the patch touches, in sorted canonical (diffusers) name order;
each contributes ``name|shape\n`` and its values as little-endian float32 — a lossless widening
of fp16, bf16 and fp32 storage, so the digest does not depend on how the frontend read the file.
A second digest over the values rounded to fp16 lets the fp16 and fp32 releases of one base both
match (DESIGN.md §7; research/ecosystem.md §5.3).

``tensors`` maps each name to the first 16 hex digits of its own fp16-rounded digest, so ``verify``
can say which tensors differ, and ``dtype`` records how the base stored them: a match of the
fp16-rounded digests alone is accepted only when one side was stored in fp16 (otherwise a single
flipped low bit of an fp32 base would pass unnoticed). The same digests pin a text encoder
(``text_encoder_pin``), which ``retarget`` compares.
"""

from __future__ import annotations

import hashlib
from typing import Mapping

import numpy as np


def _digests(weights: Mapping[str, np.ndarray], per_tensor: dict | None = None) -> tuple[str, str]:
    """(exact, fp16-rounded) sha256 over ``weights``, reading each tensor once and hashing an
    fp16-stored one once for both (rounding it to fp16 changes nothing); fills ``per_tensor`` with
    each tensor's own pair of digests (16 hex digits) when given."""
    exact, half = hashlib.sha256(), hashlib.sha256()
    for name in sorted(weights):
        array = np.asarray(weights[name])
        header = f"{name}|{'x'.join(map(str, array.shape))}\n".encode()
        with np.errstate(over="ignore"):  # beyond fp16's range rounds to ±inf: that is the digest's meaning
            wide = np.ascontiguousarray(array.astype("<f4", copy=False))
            rounded = wide if array.dtype == np.float16 else np.ascontiguousarray(array.astype(np.float16).astype("<f4"))
        for digest, data in ((exact, wide), (half, rounded)):
            digest.update(header)
            digest.update(data)
        if per_tensor is not None:
            own = hashlib.sha256(header)
            own.update(wide)
            own_half = own.copy() if rounded is wide else hashlib.sha256(header)
            if rounded is not wide:
                own_half.update(rounded)
            per_tensor[name] = [own.hexdigest()[:16], own_half.hexdigest()[:16]]
    return exact.hexdigest(), half.hexdigest()


def base_pin(weights: Mapping[str, np.ndarray], *, dtype: str | None = None) -> dict[str, object]:
    """``{"tensors", "sha256", "sha256_fp16", "per_tensor": {name: [16 hex, 16 hex fp16]}, "dtype"}``
    for the touched base tensors; ``dtype`` is how the base file stores them (``None``: unknown).
    ``weights`` may read its tensors lazily: each is asked for once."""
    per_tensor: dict[str, list[str]] = {}
    exact, half = _digests(weights, per_tensor)
    return {"tensors": len(weights), "sha256": exact, "sha256_fp16": half, "per_tensor": per_tensor, "dtype": dtype}


def text_encoder_pin(weights: Mapping[str, np.ndarray]) -> dict[str, object]:
    """``{"tensors": n, "sha256", "sha256_fp16"}`` over every given tensor (a whole text encoder)."""
    exact, half = _digests(weights)
    return {"tensors": len(weights), "sha256": exact, "sha256_fp16": half}


def pins_match(recorded: Mapping[str, object], actual: Mapping[str, object]) -> bool:
    """Exact digests equal, or fp16-rounded ones equal where either side was stored in fp16."""
    if recorded.get("sha256") == actual.get("sha256"):
        return True
    half = "fp16" in (recorded.get("dtype"), actual.get("dtype"))
    return half and recorded.get("sha256_fp16") == actual.get("sha256_fp16")


def pin_difference(recorded: Mapping[str, object], actual: Mapping[str, object]) -> list[str]:
    """Names of the tensors that differ between two ``base_pin``s ([] when they match)."""
    if pins_match(recorded, actual):
        return []
    which = 1 if "fp16" in (recorded.get("dtype"), actual.get("dtype")) else 0
    ours, theirs = recorded.get("per_tensor") or {}, actual.get("per_tensor") or {}
    return sorted(
        name
        for name in set(ours) | set(theirs)
        if name not in ours or name not in theirs or ours[name][which] != theirs[name][which]
    )
