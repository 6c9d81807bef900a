"""invariants — make the prompt-independent rows exact: ``ΔW k = 0`` for BOS and the empty prompt.

CLIP is causal, so the BOS row (position 0) is the same for every prompt, and the rows of the
empty prompt are what the unconditional branch of classifier-free guidance attends to; editing
either changes every generation, erased concept or not. SPEED (Li et al., 2025, arXiv 2503.07392,
§4.3; research/methods.md §10 item 20) holds the BOS row and 3 k-means centroids of the empty
prompt's rows 1..76 fixed as hard constraints. The model frontend supplies those rows as
``invariant_rows``; this pass promotes the chosen ones to hard rows, which ``solve`` enforces
exactly. ``centroids=k`` replaces the empty prompt's rows 1.. by the means of k contiguous runs of
positions (a deterministic stand-in for k-means: padding rows drift smoothly with position);
``centroids=0`` keeps every row, which in a small key space can leave no room for the edit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from erasec.ir import EditProgram, HardRows, Provenance

from .base import EditPass


@dataclass(frozen=True, slots=True)
class InvariantsPass(EditPass):
    name: ClassVar[str] = "invariants"

    bos: bool = True
    empty: bool = True
    centroids: int = 3

    def __post_init__(self) -> None:
        self.check_range("centroids", self.centroids, 0, 77)

    def _promote(self, rows: HardRows) -> tuple[list[np.ndarray], list[Provenance], np.ndarray]:
        keys: list[np.ndarray] = []
        provenance: list[Provenance] = []
        used = np.zeros(rows.count, dtype=bool)
        if self.bos:
            for i, p in enumerate(rows.provenance):
                if p.token == 0:
                    used[i] = True
                    keys.append(rows.keys[i])
                    provenance.append(p)
        if self.empty:
            index = [i for i, p in enumerate(rows.provenance) if p.prompt == "" and p.token > 0]
            index.sort(key=lambda i: rows.provenance[i].token)
            used[index] = True
            if self.centroids == 0 or len(index) <= self.centroids:
                groups = [[i] for i in index]
            else:
                groups = [list(g) for g in np.array_split(np.array(index), self.centroids)]
            for group in groups:
                keys.append(rows.keys[group].mean(axis=0))
                provenance.append(rows.provenance[group[0]])
        return keys, provenance, used

    def apply(self, program: EditProgram) -> EditProgram:
        spaces = []
        changed = False
        for space in program.spaces:
            keys, provenance, used = self._promote(space.invariant_rows)
            if not keys:
                spaces.append(space)
                continue
            changed = True
            rows = space.invariant_rows
            hard = HardRows(
                keys=np.concatenate([space.hard.keys, np.array(keys)]),
                provenance=space.hard.provenance + tuple(provenance),
            )
            rest = HardRows(keys=rows.keys[~used], provenance=tuple(p for p, u in zip(rows.provenance, used) if not u))
            spaces.append(replace(space, hard=hard, invariant_rows=rest))
        return replace(program, spaces=tuple(spaces)) if changed else program
