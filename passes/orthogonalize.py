"""orthogonalize — make preservation hold by construction instead of by weight.

``mode=hard`` (SPEED: Li et al., 2025, arXiv 2503.07392, §3–4, following AlphaEdit; research/
methods.md §6.2 item 2): eigen-decompose the preserve moment ``S = Σ p_j k_j k_jᵀ / Σ p_j`` and
turn every eigen-direction with eigenvalue ≥ ``tau`` into a hard row, so ``ΔW k = 0`` on that
subspace and the K/V outputs of the preserved prompts change only through their components below
``tau``. SPEED's ``(S_tt P + αI)⁻¹`` closed form is the same minimiser as ``solve``'s constrained
one with λ = α and no soft preserve term (``soft=false``); tested in tests/compiler/test_presets.py. The preserve set spans directions that the
erase edit then cannot use: a request whose keys lie mostly inside it is reported. When sites carry
preserve rows of their own (``influence-filter``, ``directed-augment``: SPEED's per-layer retain
sets), each site gets the subspace of the rows in force there as hard rows of its own.

``mode=separable`` (SRS-ME, "Separable Multi-concept Eraser", research/methods.md §6.2 item 3):
each request is solved on its own with every *other* request's keys as hard rows, and the deltas
are summed; request j's block of the solution can then be removed (``SpaceSolution.without``)
and leaves every other request's edit, and j's own keys, exactly as a build that erases the others
while holding j's keys fixed. It needs room: the hard rows plus all requests' keys must fit in d.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import numpy as np

from erasec.ir import Diagnostic, EditProgram, HardRows, PreserveRows, Provenance, SpaceProgram, empty_hard
from erasec.ir.linalg import orthonormal_span

from .base import EditPass
from .errors import PassError
from .influence_filter import site_preserve


def preserve_subspace(space: SpaceProgram, tau: float) -> np.ndarray:
    """Orthonormal eigen-directions (d, r) of the weighted mean preserve moment with eigenvalue ≥ ``tau``
    (folded preserve rows included)."""
    return rows_subspace(space.preserve, tau)


def rows_subspace(rows: PreserveRows, tau: float) -> np.ndarray:
    """``preserve_subspace`` of the rows ``rows``."""
    total = rows.weights.sum() + (0.0 if rows.folded is None else rows.folded.weight)
    if rows.total == 0 or total == 0:
        return np.zeros((rows.keys.shape[1], 0))
    values, vectors = np.linalg.eigh(rows.gram() / total)
    return np.ascontiguousarray(vectors[:, values >= tau][:, ::-1])


def _weightless(rows: PreserveRows) -> PreserveRows:
    """``rows`` weighing nothing, explicit or folded: the projector alone holds them (SPEED: soft=false)."""
    return replace(rows.select(np.ones(rows.count, dtype=bool), np.zeros(rows.count)), folded=None)


@dataclass(frozen=True, slots=True)
class OrthogonalizePass(EditPass):
    name: ClassVar[str] = "orthogonalize"

    mode: Literal["hard", "separable"] = "hard"
    tau: float = 0.1
    soft: bool = True  # mode=hard: keep the preserve rows as soft rows too (SPEED: no, only the projector)

    def __post_init__(self) -> None:
        self.check_range("tau", self.tau, 0.0, 1e12, low_open=True)

    def _sites(self, space: SpaceProgram) -> tuple[SpaceProgram, list[Diagnostic]]:
        """Per site (some have preserve rows of their own: SPEED's per-layer retain sets), the subspace
        of the rows in force there becomes that site's hard rows."""
        sites, ranks = [], []
        for site in space.site_rows:
            rows = site_preserve(space, site)
            basis = rows_subspace(rows, self.tau)
            ranks.append(basis.shape[1])
            hard = site.hard or empty_hard(basis.shape[0])
            hard = HardRows(
                keys=np.concatenate([hard.keys, basis.T]),
                provenance=hard.provenance
                + tuple(Provenance(request="preserve", prompt="<preserve subspace>", token=i) for i in range(basis.shape[1])),
            )
            if not self.soft:
                rows = _weightless(rows)
            sites.append(replace(site, preserve=rows, hard=hard))
        found = [
            Diagnostic(
                origin=self.name,
                severity="note",
                message=f"key space {space.space}: per site, a preserved subspace of {min(ranks)}–{max(ranks)} of "
                f"{space.erase.keys.shape[1]} directions held fixed (tau={self.tau:g})",
            )
        ]
        preserve = space.preserve if self.soft else _weightless(space.preserve)
        return replace(space, site_rows=tuple(sites), preserve=preserve), found

    def _hard(self, space: SpaceProgram) -> tuple[SpaceProgram, list[Diagnostic]]:
        if any(site.preserve is not None for site in space.site_rows):
            return self._sites(space)
        basis = preserve_subspace(space, self.tau)
        if basis.shape[1] == 0:
            return space, []
        hard = HardRows(
            keys=np.concatenate([space.hard.keys, basis.T]),
            provenance=space.hard.provenance
            + tuple(Provenance(request="preserve", prompt="<preserve subspace>", token=i) for i in range(basis.shape[1])),
        )
        found = [
            Diagnostic(
                origin=self.name,
                severity="note",
                message=f"key space {space.space}: preserved subspace of {basis.shape[1]} of {basis.shape[0]} "
                f"directions held fixed (tau={self.tau:g})",
            )
        ]
        preserve = space.preserve if self.soft else _weightless(space.preserve)
        return replace(space, hard=hard, preserve=preserve), found

    def _separable(self, program: EditProgram, space: SpaceProgram) -> SpaceProgram:
        dim = space.erase.keys.shape[1]
        hard_rank = orthonormal_span(space.hard.keys).shape[1]
        names = np.array([p.request for p in space.erase.provenance])
        need = sum(orthonormal_span(space.erase.keys[names == r]).shape[1] for r in program.requests if r in names)
        if hard_rank + need > dim:
            raise PassError(
                f"mode=separable: key space {space.space} has room for {dim - hard_rank} request rows "
                f"(d={dim}, hard rows take {hard_rank}); the requests need {need}. Split the spec into several "
                f"patches or use mode=hard"
            )
        return replace(space, separable=True)

    def reads_erase_rows(self) -> bool:
        return self.mode == "separable"

    def apply(self, program: EditProgram) -> EditProgram:
        if self.reads_erase_rows():
            self.check_unfolded(program)
        spaces, found = [], []
        for space in program.spaces:
            if self.mode == "hard":
                space, notes = self._hard(space)
                found.extend(notes)
            else:
                space = self._separable(program, space)
            spaces.append(space)
        return replace(program, spaces=tuple(spaces)).with_diagnostics(*found)
