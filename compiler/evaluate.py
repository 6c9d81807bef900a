"""Text-pathway evaluation of a solution (DESIGN.md §9): exact, no sampling.

Cross-attention sees a prompt only through ``W_l c``, so for every erase row (key k, guide g) and
every edited site l the build can measure, over all sites stacked,

* efficacy    ``1 − ‖W'k − W0 g‖ / ‖W0 k − W0 g‖``  (1: the prompt now reads as its anchor; 0: unchanged),
* specificity ``1 − ‖W'c − W0 c‖ / ‖W0 c‖`` over the preserve rows (1: untouched).

Per request the norms are summed over its rows before the ratio is taken.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from erasec.ir import EditProgram, Solution


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

    def as_dict(self) -> dict:
        return {
            "efficacy": {r.request: round(r.efficacy, 6) for r in self.requests},
            "preserve_rows": self.preserve_rows,
            "specificity": None if self.specificity is None else round(self.specificity, 6),
            "worst_preserved": None
            if self.worst_preserve is None
            else {"prompt": self.worst_preserve[0], "specificity": round(self.worst_preserve[1], 6)},
        }


def score(program: EditProgram, solution: Solution, base_weights: Mapping[str, np.ndarray]) -> Scores:
    """Score ``solution`` on the rows of ``program`` (the lowered program, before any pass)."""
    requests: list[RequestScore] = []
    preserve_rows = 0
    moved_total = base_total = 0.0
    per_prompt: dict[str, list[float]] = {}
    for space in program.spaces:
        sol = solution.space(space.space)
        sites = program.target.space(space.space).sites
        erase = space.erase
        before = np.zeros(erase.count)  # Σ_l ‖W0 k − W0 g‖² per row
        after = np.zeros(erase.count)  # Σ_l ‖W' k − W0 g‖² per row
        moved = np.zeros(space.preserve.count)
        base = np.zeros(space.preserve.count)
        for site in sites:
            w0 = np.asarray(base_weights[site.module_path], dtype=np.float64)
            delta = sol.delta(site.module_path, w0) if sol.edits(site.role) else np.zeros_like(w0)
            if erase.guides is not None:
                gap = (erase.keys - erase.guides) @ w0.T
            else:
                residual = dict(erase.residuals)[site.module_path]
                gap = -residual.T
            before += np.einsum("ij,ij->i", gap, gap)
            shifted = gap + erase.keys @ delta.T
            after += np.einsum("ij,ij->i", shifted, shifted)
            if space.preserve.count:
                change = space.preserve.keys @ delta.T
                out = space.preserve.keys @ w0.T
                moved += np.einsum("ij,ij->i", change, change)
                base += np.einsum("ij,ij->i", out, out)
        names = [p.request for p in erase.provenance]
        for request in program.requests:
            mask = np.array([n == request for n in names], dtype=bool)
            if not mask.any():
                continue
            denominator = np.sqrt(before[mask].sum())
            efficacy = 1.0 - np.sqrt(after[mask].sum()) / denominator if denominator > 0 else 0.0
            requests.append(RequestScore(request=request, rows=int(mask.sum()), efficacy=float(efficacy)))
        preserve_rows += space.preserve.count
        moved_total += moved.sum()
        base_total += base.sum()
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
