"""Small hand-built IR programs for pass and solver tests (no model, no torch)."""

from __future__ import annotations

from dataclasses import replace

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
    SiteRows,
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
    space = program.spaces[0]
    erase = space.erase
    residuals = tuple(
        (path, weights[path] @ (erase.guides - erase.keys).T) for path in sorted(weights)
    )
    rows = EraseRows(keys=erase.keys, weights=erase.weights, provenance=erase.provenance, residuals=residuals)
    return replace(program, spaces=(replace(space, erase=rows),))


def with_space(program: EditProgram, **fields) -> EditProgram:
    """``program`` with its (single) key space's ``fields`` replaced."""
    return replace(program, spaces=(replace(program.spaces[0], **fields),))


def with_site_gram(program: EditProgram, rng: np.random.Generator) -> tuple[EditProgram, dict[str, np.ndarray]]:
    """Random base weights and the program with their site Gram ``Σ_l W0_lᵀ W0_l`` (adversarial,
    rece, compress measure in it)."""
    weights = base_weights(program.target, rng)
    return with_space(program, site_gram=sum(w.T @ w for w in weights.values())), weights


def duplicate_rows_program(seed: int = 0) -> EditProgram:
    """Canonicalize's input: an erase row repeated (w 1.5) and a zero erase key; a preserve row equal
    to another to 1e-12 and a zero-weight one."""
    program = random_program(np.random.default_rng(seed), dim=4, erase=2, preserve=2)
    space = program.spaces[0]
    e = space.erase
    erase = EraseRows(
        keys=np.vstack([e.keys, e.keys[0], np.zeros(4)]),
        guides=np.vstack([e.guides, e.guides[0], e.guides[1]]),
        weights=np.concatenate([e.weights, [1.5, 1.0]]),
        provenance=e.provenance + (Provenance(request="x", prompt="x again", token=5), Provenance(request="x", prompt="zero", token=1)),
    )
    p = space.preserve
    preserve = PreserveRows(
        keys=np.vstack([p.keys, p.keys[1] * (1 + 1e-12), p.keys[0]]),
        weights=np.concatenate([p.weights, [0.25, 0.0]]),
        provenance=p.provenance + (Provenance(request="preserve", prompt="q", token=0),) * 2,
    )
    return with_space(program, erase=erase, preserve=preserve)


def conflicting_program() -> EditProgram:
    """check-conflicts' input: 'Bill Clinton' and 'Bill Murray' share keys but not anchors; 'Monet'
    lies in the preserved span, close to neither preserve row."""
    rng = np.random.default_rng(0)
    requests = ("Bill Clinton", "Bill Murray", "Monet")
    program = random_program(rng, dim=8, erase=1, preserve=0, requests=requests)
    a, b, c, u = rng.standard_normal((4, 8))
    erase = EraseRows(
        keys=np.stack([a, a + 0.01 * b, c + u]),
        guides=np.stack([b, c, b]),
        weights=np.ones(3),
        provenance=tuple(Provenance(request=r, prompt=r, token=2) for r in requests),
    )
    preserve = PreserveRows(
        keys=np.stack([c, u]),  # Monet's row is their sum: in the span, close to neither
        weights=np.ones(2),
        provenance=(Provenance(request="preserve", prompt="Claude Monet", token=3), Provenance(request="preserve", prompt="a cat", token=3)),
    )
    return with_space(program, erase=erase, preserve=preserve)


NAMED_PRESERVE_PROMPTS = ("a painting by van gogh", "Van Goghish swirls", "Claude Monet", "VAN GOGH", "vincent's starry night")


def named_preserve_program() -> EditProgram:
    """filter-preserve's input: erase 'Van Gogh' (synonym 'Vincent'); some preserve prompts name it."""
    program = random_program(np.random.default_rng(0), dim=4, erase=2, preserve=0, requests=("Van Gogh",))
    preserve = PreserveRows(
        keys=np.random.default_rng(1).standard_normal((len(NAMED_PRESERVE_PROMPTS), 4)),
        weights=np.ones(len(NAMED_PRESERVE_PROMPTS)),
        provenance=tuple(Provenance(request="preserve", prompt=p, token=0) for p in NAMED_PRESERVE_PROMPTS),
    )
    return replace(with_space(program, preserve=preserve), phrases=(("Van Gogh", "Vincent"),))


def invariant_rows_program(rows: int = 7, dim: int = 10, seed: int = 0) -> EditProgram:
    """invariants' input: ``rows`` candidate rows of the empty prompt (token 0 = BOS)."""
    rng = np.random.default_rng(seed)
    program = random_program(rng, dim=dim, erase=2, preserve=2)
    invariant = HardRows(
        keys=rng.standard_normal((rows, dim)),
        provenance=tuple(Provenance(request="invariant", prompt="", token=t) for t in range(rows)),
    )
    return with_space(program, invariant_rows=invariant)


def rece_program(seed: int = 0, dim: int = 6) -> EditProgram:
    """rece's input as method rece's lowering makes it, in small: a site Gram, and attack rows (each
    erase prompt's padded rows paired with its guide's) plus the attack stage's retain rows."""
    rng = np.random.default_rng(seed)
    program, _ = with_site_gram(random_program(rng, dim=dim, erase=2, preserve=2), rng)
    sources = EraseRows(
        keys=rng.standard_normal((3, dim)),
        guides=rng.standard_normal((3, dim)),
        weights=np.ones(3),
        provenance=provenance("x", 3),
    )
    retain = PreserveRows(keys=rng.standard_normal((2, dim)), weights=np.ones(2), provenance=provenance("preserve", 2, ""))
    return with_space(program, attack_sources=sources, attack_retain=retain)


def site_rows_program(seed: int = 0, dim: int = 6, preserve: int = 8) -> EditProgram:
    """influence-filter's and directed-augment's input: ``preserve`` retain rows and, per site, its
    base weight (``ir.SiteRows``), as the lowering supplies them when a pass reads them."""
    rng = np.random.default_rng(seed)
    program = random_program(rng, dim=dim, erase=2, preserve=preserve)
    weights = base_weights(program.target, rng)
    sites = tuple(SiteRows(module_path=path, weight=weight) for path, weight in weights.items())
    return with_space(program, site_rows=sites)
