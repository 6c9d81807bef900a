"""Text-pathway evaluation of a solution (DESIGN.md §9): exact, no sampling.

Cross-attention sees a prompt only through ``W_l c``, so for every erase row (key k, guide g) and
every edited site l the build can measure, over all sites stacked,

* efficacy    ``1 − ‖W'k − W0 g‖ / ‖W0 k − W0 g‖``  (1: the prompt now reads as its anchor; 0: unchanged),
* specificity ``1 − ‖W'c − W0 c‖ / ‖W0 c‖`` over the preserve rows (1: untouched).

Per request the norms are summed over its rows before the ratio is taken. Rows the lowering folded
into moments (``ir.Moments``) count in the overall specificity exactly, through ``Σ cᵀ M c =
tr(M · Σ c cᵀ)``; per request and per preserved prompt only the explicit rows are seen, which hold
each prompt's subject row.

The per-layer metrics of ``erasec eval`` (docs/evaluation.md) live here too, on plain arrays —
``weights`` and ``deltas`` map a module path to ``W0`` and ``ΔW`` (float64) — so that the CLI and
``benchmarks/erase_artists.py`` compute them one way: ``efficacy``, ``specificity``,
``displacement`` (the interference matrix) and ``recoverability`` (RECE's closed-form attack).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from erasec.ir import EditProgram, Solution
from erasec.ir.linalg import attack_embeddings


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestScore:
    request: str
    rows: int
    efficacy: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Scores:
    requests: tuple[RequestScore, ...]
    preserve_rows: int
    specificity: float | None  # None when nothing is preserved
    worst_preserve: tuple[str, float] | None  # (prompt, its specificity)
    # preserve prompts the spec lists that filter-preserve left out of the solve (they name an erased
    # concept), so left out of these scores too; recorded in erasec.report for inspect and eval
    dropped_preserve: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        report = {
            "efficacy": {r.request: round(r.efficacy, 6) for r in self.requests},
            "preserve_rows": self.preserve_rows,
            "specificity": None if self.specificity is None else round(self.specificity, 6),
            "worst_preserved": None
            if self.worst_preserve is None
            else {"prompt": self.worst_preserve[0], "specificity": round(self.worst_preserve[1], 6)},
        }
        if self.dropped_preserve:  # absent otherwise: a patch without drops keeps its bytes
            report["dropped_preserve"] = list(self.dropped_preserve)
        return report


def score(program: EditProgram, solution: Solution, base_weights: Mapping[str, np.ndarray]) -> Scores:
    """Score ``solution`` on the rows of ``program`` (the lowered program, before any pass)."""
    requests: list[RequestScore] = []
    preserve_rows = 0
    moved_total = base_total = 0.0
    per_prompt: dict[str, list[float]] = {}
    for space in program.spaces:
        sol = solution.space(space.space)
        erase = space.erase
        if sol.form == "shared" and erase.guides is not None:
            before, after, moved, base = _shared_norms(program, space, sol, base_weights)
        else:
            before, after, moved, base = _site_norms(program, space, sol, base_weights)
        names, which = np.unique([p.request for p in erase.provenance], return_inverse=True)
        rows = np.bincount(which, minlength=names.size)
        before, after = (np.bincount(which, weights=v, minlength=names.size) for v in (before, after))
        found = {name: i for i, name in enumerate(names.tolist())}
        for request in program.requests:
            if request not in found:
                continue
            i = found[request]
            denominator = np.sqrt(before[i])
            efficacy = 1.0 - np.sqrt(after[i]) / denominator if denominator > 0 else 0.0
            requests.append(RequestScore(request=request, rows=int(rows[i]), efficacy=float(efficacy)))
        preserve_rows += space.preserve.total
        moved_total += moved.sum()
        base_total += base.sum()
        if space.preserve.folded is not None:
            folded_moved, folded_base = _folded_norms(program, space, sol, base_weights)
            moved_total += folded_moved
            base_total += folded_base
        for i, p in enumerate(space.preserve.provenance):
            per_prompt.setdefault(p.prompt, [0.0, 0.0])
            per_prompt[p.prompt][0] += moved[i]
            per_prompt[p.prompt][1] += base[i]
    specificity = None
    worst = None
    if preserve_rows and base_total > 0:
        specificity = float(1.0 - np.sqrt(moved_total / base_total))
        prompt_scores = {
            prompt: float(1.0 - np.sqrt(m / b)) for prompt, (m, b) in per_prompt.items() if b > 0
        }
        if prompt_scores:
            prompt = min(sorted(prompt_scores), key=lambda k: prompt_scores[k])
            worst = (prompt, prompt_scores[prompt])
    return Scores(requests=tuple(requests), preserve_rows=preserve_rows, specificity=specificity, worst_preserve=worst)


def _site_norms(program, space, sol, base_weights):
    """Per row, summed over the space's sites: ``‖W0 k − W0 g‖²``, ``‖W' k − W0 g‖²`` (erase rows),
    ``‖ΔW c‖²`` and ``‖W0 c‖²`` (preserve rows) — site by site, for any form of solution."""
    erase, preserve = space.erase, space.preserve
    before, after = np.zeros(erase.count), np.zeros(erase.count)
    moved, base = np.zeros(preserve.count), np.zeros(preserve.count)
    for site in program.target.space(space.space).sites:
        w0 = np.asarray(base_weights[site.module_path], dtype=np.float64)
        delta = sol.delta(site.module_path, w0) if sol.edits(site.role) else np.zeros_like(w0)
        if erase.guides is not None:
            gap = (erase.keys - erase.guides) @ w0.T
        else:
            gap = -dict(erase.residuals)[site.module_path].T
        before += _row_norms(gap)
        after += _row_norms(gap + erase.keys @ delta.T)
        if preserve.count:
            moved += _row_norms(preserve.keys @ delta.T)
            base += _row_norms(preserve.keys @ w0.T)
    return before, after, moved, base


def _shared_norms(program, space, sol, base_weights):
    """``_site_norms`` for a shared-form solution, through d × d Gram matrices instead of every site.

    With ``ΔW_l = W0_l L Rᵀ`` and ``S = Σ_l W0_lᵀ W0_l``, ``Σ_l ‖W0_l x‖² = xᵀ S x``: one (rows × d)
    product per row set instead of one per site (33 sites of SD1.5, 140 of SDXL), the same numbers
    to rounding. ``S`` splits into the edited sites' (the program's ``site_gram``) and the others'.
    """
    edited = _gram(program, space, base_weights, lambda role: sol.edits(role))
    rest = _gram(program, space, base_weights, lambda role: not sol.edits(role))
    whole = edited + rest
    erase, preserve = space.erase, space.preserve
    gap = erase.keys - erase.guides
    shifted = gap + (erase.keys @ sol.right) @ sol.left.T
    before = _quadratic(gap, whole)
    after = _quadratic(shifted, edited) + _quadratic(gap, rest)
    moved = _quadratic(preserve.keys @ sol.right, sol.left.T @ edited @ sol.left)
    base = _quadratic(preserve.keys, whole)
    return before, after, moved, base


def _folded_norms(program, space, sol, base_weights) -> tuple[float, float]:
    """``Σ ‖ΔW c‖²`` and ``Σ ‖W0 c‖²`` over the folded preserve rows, summed over the sites."""
    folded = space.preserve.folded
    whole = _gram(program, space, base_weights, lambda role: True)
    if sol.form == "shared":
        edited = _gram(program, space, base_weights, lambda role: sol.edits(role))
        moved = folded.trace(sol.right @ (sol.left.T @ edited @ sol.left) @ sol.right.T)
    else:
        moved = 0.0
        for site in program.target.space(space.space).sites:
            if sol.edits(site.role):
                delta = sol.delta(site.module_path, np.asarray(base_weights[site.module_path], dtype=np.float64))
                moved += folded.trace(delta.T @ delta)
    return moved, folded.trace(whole)


def _gram(program, space, base_weights, chosen) -> np.ndarray:
    """``Σ W0_lᵀ W0_l`` over the space's sites whose role is ``chosen``; the program's own
    ``site_gram`` when it covers exactly those sites."""
    sites = program.target.space(space.space).sites
    roles = {site.role for site in sites if chosen(site.role)}
    if space.site_gram is not None and roles and roles == set(space.roles) & {site.role for site in sites}:
        return np.asarray(space.site_gram)
    dim = program.target.space(space.space).dim
    gram = np.zeros((dim, dim))
    for site in sites:
        if site.role in roles:
            w0 = np.asarray(base_weights[site.module_path], dtype=np.float64)
            gram += w0.T @ w0
    return gram


def _row_norms(rows: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", rows, rows)


def _quadratic(rows: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``xᵀ M x`` for every row x."""
    return np.einsum("ij,ij->i", rows @ matrix, rows)


# --- per-layer metrics on plain arrays (erasec eval, benchmarks) ----------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerScore:
    """A metric over all sites stacked (``total``) and at each site (``layers``: module path, value)."""

    total: float
    rows: int
    layers: tuple[tuple[str, float], ...]

    def as_dict(self) -> dict:
        return {"total": round(self.total, 6), "rows": self.rows, "layers": {k: round(v, 6) for k, v in self.layers}}


def _one_minus_ratio(numerator: dict[str, float], denominator: dict[str, float], rows: int) -> LayerScore:
    """``1 − sqrt(Σ num / Σ den)`` in total and per layer (a layer with a zero denominator scores 0)."""
    def value(num: float, den: float) -> float:
        return float(1.0 - np.sqrt(num / den)) if den > 0 else 0.0

    total = value(sum(numerator.values()), sum(denominator.values()))
    return LayerScore(total=total, rows=rows, layers=tuple((k, value(numerator[k], denominator[k])) for k in sorted(numerator)))


def efficacy(keys: np.ndarray, guides: np.ndarray, weights: Mapping[str, np.ndarray], deltas: Mapping[str, np.ndarray]) -> LayerScore:
    """``1 − ‖W'k − W0 g‖ / ‖W0 k − W0 g‖``, squared norms summed over the rows (and sites for the total)."""
    after, before = {}, {}
    for path, w0 in weights.items():
        gap = (keys - guides) @ w0.T
        before[path] = float(np.sum(gap**2))
        after[path] = float(np.sum((gap + keys @ deltas[path].T) ** 2))
    return _one_minus_ratio(after, before, keys.shape[0])


def progress(keys: np.ndarray, guides: np.ndarray, weights: Mapping[str, np.ndarray], deltas: Mapping[str, np.ndarray]) -> float:
    """``Σ ⟨ΔW k, W0 (g − k)⟩ / Σ ‖W0 (g − k)‖²`` over rows and sites: the share of the gap to the guide
    closed along the gap (1: all of it; 0: none, or only sideways moves). ``efficacy`` also charges the
    sideways part, which no edit can avoid where a prompt and its safe counterpart differ in more than
    the concept (Ring-A-Bell's pairs change the scene too); docs/results.md, "Implicit concepts"."""
    along = gap = 0.0
    for path, w0 in weights.items():
        difference = (guides - keys) @ w0.T
        along += float(np.sum(difference * (keys @ deltas[path].T)))
        gap += float(np.sum(difference**2))
    return along / gap if gap > 0 else 0.0


def output_change(rows: np.ndarray, weights: Mapping[str, np.ndarray], deltas: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``‖ΔW_l c‖²`` and ``‖W0_l c‖²`` for every row c, summed over the sites: two arrays (rows,)."""
    moved, base = np.zeros(rows.shape[0]), np.zeros(rows.shape[0])
    for path, w0 in weights.items():
        moved += np.einsum("ij,ij->i", change := rows @ deltas[path].T, change)
        base += np.einsum("ij,ij->i", out := rows @ w0.T, out)
    return moved, base


def specificity(rows: np.ndarray, weights: Mapping[str, np.ndarray], deltas: Mapping[str, np.ndarray]) -> LayerScore:
    """``1 − ‖ΔW c‖ / ‖W0 c‖`` over ``rows`` (1: untouched; 0: moved by as much as the output itself)."""
    moved, base = {}, {}
    for path, w0 in weights.items():
        moved[path] = float(np.sum((rows @ deltas[path].T) ** 2))
        base[path] = float(np.sum((rows @ w0.T) ** 2))
    return _one_minus_ratio(moved, base, rows.shape[0])


def displacement(keys: np.ndarray, guides: np.ndarray, weights: Mapping[str, np.ndarray], deltas: Mapping[str, np.ndarray]) -> float:
    """``‖ΔW k‖ / ‖W0 k − W0 g‖``: how far a patch moved a concept's outputs, in units of that concept's
    own erase distance (1: as far as erasing it would); the interference matrix's entries."""
    parts = _displacement_parts(keys, guides, weights, deltas)
    moved, base = sum(m for m, _ in parts.values()), sum(b for _, b in parts.values())
    return float(np.sqrt(moved / base)) if base > 0 else 0.0


def displacement_by_layer(
    keys: np.ndarray, guides: np.ndarray, weights: Mapping[str, np.ndarray], deltas: Mapping[str, np.ndarray]
) -> dict[str, float]:
    """``displacement`` of each site on its own (the per-layer interference matrices)."""
    return {
        path: float(np.sqrt(moved / base)) if base > 0 else 0.0
        for path, (moved, base) in _displacement_parts(keys, guides, weights, deltas).items()
    }


def _displacement_parts(keys, guides, weights, deltas) -> dict[str, tuple[float, float]]:
    """Per site: ``(‖ΔW_l K‖², ‖W0_l (K − G)‖²)``."""
    return {
        path: (float(np.sum((keys @ deltas[path].T) ** 2)), float(np.sum(((keys - guides) @ w0.T) ** 2)))
        for path, w0 in weights.items()
    }


def recoverability(keys: np.ndarray, weights: Mapping[str, np.ndarray], deltas: Mapping[str, np.ndarray], lam: float) -> LayerScore:
    """``1 − ‖W'c' − W0 c‖ / ‖W0 c‖`` with c' RECE's closed-form attack embedding for each row c
    (``ir.linalg.attack_embeddings``; Gong et al., 2024, arXiv 2407.12383): 1 when an attacker's
    embedding regenerates the concept's K/V outputs exactly through the edited weights, 0 when the
    best it can do is no better than silence."""
    dim = keys.shape[1]
    edited_gram, cross = np.zeros((dim, dim)), np.zeros((dim, dim))
    for path, w0 in weights.items():
        edited = w0 + deltas[path]
        edited_gram += edited.T @ edited
        cross += edited.T @ w0
    attack = attack_embeddings(edited_gram, cross, keys, lam)
    missed, base = {}, {}
    for path, w0 in weights.items():
        missed[path] = float(np.sum((attack @ (w0 + deltas[path]).T - keys @ w0.T) ** 2))
        base[path] = float(np.sum((keys @ w0.T) ** 2))
    return _one_minus_ratio(missed, base, keys.shape[0])
