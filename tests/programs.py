"""Small hand-built IR programs for pass and solver tests (no model, no torch)."""

from __future__ import annotations

import numpy as np

from erasec.ir import (
    EditProgram,
    EraseRows,
    HardRows,
    KeySpace,
    LinearSite,
    ModelTarget,
    PreserveRows,
    Provenance,
    SpaceProgram,
    empty_hard,
)

SITE_WIDTHS = (5, 7, 4)


def target(dim: int, widths=SITE_WIDTHS) -> ModelTarget:
    sites = tuple(
        LinearSite(module_path=f"blocks.{i}.attn2.to_{'kv'[i % 2]}", out_features=w, in_features=dim, role="kv"[i % 2])
        for i, w in enumerate(widths)
    )
    return ModelTarget(family="sd1", name="test", spaces=(KeySpace(name="clip-l", dim=dim, encoder="te", sites=sites),))


def base_weights(tgt: ModelTarget, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {s.module_path: rng.standard_normal((s.out_features, s.in_features)) for s in tgt.sites}


def provenance(request: str, count: int, prompt: str | None = None) -> tuple[Provenance, ...]:
    return tuple(Provenance(request=request, prompt=prompt or request, token=i) for i in range(count))


def random_program(
    rng: np.random.Generator,
    *,
    dim: int = 6,
    erase: int = 2,
    preserve: int = 3,
    hard: int = 0,
    lam: float = 0.5,
    requests: tuple[str, ...] = ("x",),
) -> EditProgram:
    tgt = target(dim)
    keys = rng.standard_normal((erase, dim))
    names = [requests[i % len(requests)] for i in range(erase)]
    erase_rows = EraseRows(
        keys=keys,
        guides=rng.standard_normal((erase, dim)),
        weights=rng.uniform(0.5, 2.0, erase),
        provenance=tuple(Provenance(request=n, prompt=n, token=i) for i, n in enumerate(names)),
    )
    preserve_rows = PreserveRows(
        keys=rng.standard_normal((preserve, dim)),
        weights=rng.uniform(0.1, 1.0, preserve),
        provenance=provenance("preserve", preserve, "p"),
    )
    hard_rows = (
        HardRows(keys=rng.standard_normal((hard, dim)), provenance=provenance("invariant", hard, ""))
        if hard
        else empty_hard(dim)
    )
    space = SpaceProgram(
        space="clip-l", lam=lam, erase=erase_rows, preserve=preserve_rows, hard=hard_rows, invariant_rows=empty_hard(dim)
    )
    return EditProgram(target=tgt, requests=requests, spaces=(space,))


def as_per_layer(program: EditProgram, weights: dict[str, np.ndarray]) -> EditProgram:
    """The same objective with per-site residuals ``V*_l − W0_l K = W0_l (G − K)`` instead of guides."""
    from dataclasses import replace

    space = program.spaces[0]
    erase = space.erase
    residuals = tuple(
        (path, weights[path] @ (erase.guides - erase.keys).T) for path in sorted(weights)
    )
    rows = EraseRows(keys=erase.keys, weights=erase.weights, provenance=erase.provenance, residuals=residuals)
    return replace(program, spaces=(replace(space, erase=rows),))
