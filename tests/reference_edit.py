"""The reference scripts' closed-form edit, written once for the tests that re-derive it
(tests/compiler/test_reference.py, test_referees.py): torch float64, no erasec code."""

from __future__ import annotations

import torch


def edit(weights, erase, retain, lam, erase_scale, preserve_scale):
    """One closed-form edit of every layer from ``weights`` (the scripts' loop): per layer
    ``mat1 = λW + es Σ (W g) kᵀ + ps Σ (W p) pᵀ``, ``mat2 = λI + es Σ k kᵀ + ps Σ p pᵀ``,
    ``W ← mat1 mat2⁻¹``; ``erase`` is (keys, guides) row pairs, ``retain`` the retained rows."""
    result = {}
    for name, w in weights.items():
        d = w.shape[1]
        mat1 = lam * w.clone()
        mat2 = lam * torch.eye(d, dtype=torch.float64)
        for key, guide in erase:
            mat1 += erase_scale * torch.outer(w @ guide, key)
            mat2 += erase_scale * torch.outer(key, key)
        for key in retain:
            mat1 += preserve_scale * torch.outer(w @ key, key)
            mat2 += preserve_scale * torch.outer(key, key)
        result[name] = torch.linalg.solve(mat2.T, mat1.T).T
    return result
