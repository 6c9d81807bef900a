"""influence-filter — keep, at each site, the preserve rows the erase edit would move (SPEED's IPF).

Li et al., 2025, arXiv 2503.07392, §4.2 "Influence-based Prior Filtering"; research/methods.md
§6.2 item 2; the code followed is Ouxiang-Li/SPEED @6d3df0c ``train_erase_null.py::edit_model``.
SPEED builds its null-space projector from the retain rows, but only from those the plain erase
edit of the layer would disturb. With ``S_tt = Σ w k kᵀ`` and ``S_at − S_tt = Σ w (g − k) kᵀ`` over
the erase rows (means over the targets: the ``speed`` lowering weighs each of n prompts 1/n), the
layer's unconstrained edit is

    Δ0_l = W0_l (S_at − S_tt)(I + S_tt)⁻¹        (UCE's edit with a unit ridge and no preserve term)

and a retain row r stays at site l when ``‖Δ0_l r‖`` is above its mean over the retain rows. Rows the
edit leaves alone need no protection; dropping them leaves the projector room for the edit (the
paper's ablation, research/methods.md §9.2: non-target FID 48.17 → 38.02 on Van Gogh). The kept rows
become the site's own preserve rows (``ir.SiteRows.preserve``), which ``directed-augment``,
``orthogonalize`` and ``solve`` use at that site. The reference filters only when it also augments
(``--aug_num > 0``) and not with ``--disable_filter`` (its multi-concept scripts); a pipeline says
which by listing the passes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import scipy.linalg
from erasec.ir import Diagnostic, EditProgram, PreserveRows, SiteRows, SpaceProgram
from erasec.ir.linalg import weighted_gram

from .base import EditPass
from .errors import PassError


def erase_map(space: SpaceProgram) -> np.ndarray:
    """``(S_at − S_tt)(I + S_tt)⁻¹`` (d, d), folded erase rows included: ``Δ0_l = W0_l`` times it."""
    rows = space.erase
    if not rows.shared:
        raise PassError(f"key space {space.space}: needs guide (anchor) targets; per-layer targets have no shared erase edit")
    cross = ((rows.guides - rows.keys).T * rows.weights) @ rows.keys
    gram = weighted_gram(rows.keys, rows.weights)
    if rows.folded is not None:
        cross, gram = cross + rows.folded.cross, gram + rows.folded.gram
    gram[np.diag_indices_from(gram)] += 1.0
    # X (I + S_tt) = cross with I + S_tt symmetric positive definite (eigenvalues ≥ 1)
    return scipy.linalg.solve(gram, cross.T, assume_a="pos").T


def site_preserve(space: SpaceProgram, site: SiteRows) -> PreserveRows:
    """The preserve rows in force at ``site``: its own, or the space's."""
    return space.preserve if site.preserve is None else site.preserve


def influence(keys: np.ndarray, edit: np.ndarray) -> np.ndarray:
    """``‖Δ0 r‖`` for each row r of ``keys`` (n, d), with ``edit`` = Δ0 (out, d)."""
    return np.linalg.norm(keys @ edit.T, axis=1)


@dataclass(frozen=True, slots=True)
class InfluenceFilterPass(EditPass):
    name: ClassVar[str] = "influence-filter"

    def reads_site_weights(self) -> bool:
        return True

    def reads_preserve_rows(self) -> bool:
        return True

    def _filter(self, space: SpaceProgram) -> tuple[SpaceProgram, Diagnostic | None]:
        if space.erase.total == 0:
            raise PassError(f"key space {space.space}: no erase rows; the spec must erase at least one concept")
        shared = erase_map(space)
        sites, kept, total = [], [], 0
        for site in space.site_rows:
            rows = site_preserve(space, site)
            scores = influence(rows.keys, site.weight @ shared)
            keep = scores > scores.mean()
            kept.append(int(keep.sum()))
            total = max(total, rows.count)
            sites.append(replace(site, preserve=rows.select(keep)))
        note = Diagnostic(
            origin=self.name,
            severity="note",
            message=f"key space {space.space}: kept {min(kept)}–{max(kept)} of {total} preserve rows per site "
            "(those the erase edit moves more than average)",
        )
        return replace(space, site_rows=tuple(sites)), note

    def apply(self, program: EditProgram) -> EditProgram:
        self.check_site_weights(program)
        spaces, found = [], []
        for space in program.spaces:
            if space.preserve.count == 0 or not space.site_rows:
                spaces.append(space)
                continue
            space, note = self._filter(space)
            spaces.append(space)
            found.append(note)
        if not found:
            return program
        return replace(program, spaces=tuple(spaces)).with_diagnostics(*found)
